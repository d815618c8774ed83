"""The `http` tool: call a service with the model's arguments, only on hosts the config allows.

The URL may hold `{param}` placeholders. Each is filled with its argument percent-encoded as a
whole (`/`, `?`, `#`, `@` and `:` included), so a value can add to a path segment but never
change the host, the port or the path's structure; `.` and `..` alone are refused. The rest of the
arguments go in the query string (GET, DELETE) or as a JSON body (POST, PUT, PATCH). The host and
port of the final URL are checked against `allowed_hosts` at every call (a bare `host` entry
allows the default ports, 80 and 443; `host:port` that port), and redirects are not followed
(a redirect could lead anywhere), so the model cannot make Keel reach an address of its choosing.

When the host itself comes from an argument, a name is resolved and refused if any of its
addresses is not a public one (private, loopback, link-local — cloud metadata services such
as 169.254.169.254 and fd00:ec2::254 —, shared, reserved), and the connection goes only to the
addresses checked, so a DNS record cannot point an allowed name inside the network. An IP
address written in `allowed_hosts`, and a host written in the URL itself, are trusted as
written. The response body is read up to `max_response_bytes`; a longer one is a tool error.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractResolver
import orjson
from pydantic import Field, field_validator, model_validator
from yarl import URL

from keel.grounding.tools.base import (
    ArgumentChecker,
    ToolError,
    ToolOptions,
    function_definition,
)
from keel.providers.upstream import BodyTooLarge, read_capped

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_SNIPPET = 500
_DEFAULT_PORTS = (80, 443)


class HTTPOptions(ToolOptions):
    url: str = Field(description="http(s) URL; `{param}` placeholders are filled from arguments")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON schema of the arguments",
    )
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0)
    allowed_hosts: list[str] | None = Field(
        None, description="host (ports 80 and 443) or host:port the final URL may reach; "
        "default: the URL's own host and port"
    )
    max_response_bytes: int = Field(1_000_000, ge=1, description="a longer body is a tool error")

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict) -> dict:
        if value.get("type", "object") != "object":
            raise ValueError("parameters must be a JSON schema of type object")
        ArgumentChecker(value)  # raises ValueError for an invalid schema
        return value

    @model_validator(mode="after")
    def _url(self) -> HTTPOptions:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        if self.templated_host() and not self.allowed_hosts:
            raise ValueError(
                "url has a placeholder in its host: list the hosts it may reach in allowed_hosts"
            )
        return self

    def allowed(self) -> set[str]:
        """`host:port` pairs, lower-cased; a bare host stands for ports 80 and 443; default:
        the URL's own host:port."""
        if not self.allowed_hosts:
            url = URL(self.url)
            return {f"{url.host}:{url.port}".lower()}
        pairs = set()
        for entry in self.allowed_hosts:
            parsed = URL(f"http://{entry.strip()}")
            host = (parsed.host or "").lower()
            ports = (parsed.explicit_port,) if parsed.explicit_port else _DEFAULT_PORTS
            pairs.update(f"{host}:{port}" for port in ports)
        return pairs

    def templated_host(self) -> bool:
        authority = self.url.split("://", 1)[1].split("/", 1)[0]
        return bool(_PLACEHOLDER.search(authority))


class HTTPTool:
    """One function backed by an HTTP endpoint."""

    kind: ClassVar[str] = "http"
    Options: ClassVar[type[ToolOptions]] = HTTPOptions

    def __init__(self, name: str, options: HTTPOptions) -> None:
        self.name = name
        self.options = options
        self._checker = ArgumentChecker(options.parameters)
        self._allowed = options.allowed()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.options.timeout_s)
            # A host from an argument connects only to public addresses, the ones checked.
            resolver = PublicResolver() if self.options.templated_host() else None
            connector = aiohttp.TCPConnector(resolver=resolver)
            self._session = aiohttp.ClientSession(timeout=timeout, headers=self.options.headers,
                                                  connector=connector)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def definitions(self) -> list[dict]:
        return [function_definition(self.name, self.options.description, self.options.parameters)]

    async def call(self, function_name: str, arguments: dict) -> str:
        self._checker.check(arguments)
        url, rest = fill_url(self.options.url, arguments)
        self.check_host(url)
        if self._session is None:
            await self.start()
        kwargs: dict[str, Any] = {"allow_redirects": False}
        if self.options.method in _BODY_METHODS:
            kwargs["data"] = orjson.dumps(rest)
            kwargs["headers"] = {"Content-Type": "application/json"}
        elif rest:
            url = url.extend_query(query_params(rest))
        try:
            async with self._session.request(self.options.method, url, **kwargs) as response:
                text = await read_text(response, self.options.max_response_bytes, url.host)
                if not 200 <= response.status < 300:
                    raise ToolError(f"HTTP {response.status} from {url.host}: {text[:_SNIPPET]}")
                return text
        except TimeoutError:
            raise ToolError(
                f"no answer from {url.host} within {self.options.timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PrivateAddress):
                raise ToolError(f"refused: {exc.os_error}") from None
            raise ToolError(f"could not reach {url.host}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise ToolError(f"could not reach {url.host}: {exc}") from None

    def check_host(self, url: URL) -> None:
        host = (url.host or "").lower()
        if f"{host}:{url.port}" not in self._allowed:
            raise ToolError(f"refused: {host}:{url.port} is not in this tool's allowed_hosts")


async def read_text(response: aiohttp.ClientResponse, limit: int, host: str | None) -> str:
    """The body as text, refused past `limit` bytes (by its Content-Length, or as it arrives)."""
    try:
        body = await read_capped(response, limit)
    except BodyTooLarge:
        raise ToolError(f"the response from {host} is over {limit} bytes "
                        f"(the tool's max_response_bytes)") from None
    try:
        return body.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


class PrivateAddress(OSError):
    """A name from an argument resolved to an address inside the network."""


def public_address(address: str) -> bool:
    """Whether an IP address is a public one, not private, loopback, link-local (cloud
    metadata), shared, reserved or multicast; an IPv4-mapped IPv6 address by its IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicResolver(AbstractResolver):
    """Resolves as aiohttp does, then refuses a name with any address that is not public."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[dict[str, Any]]:
        found = await self._inner.resolve(host, port, family)
        inside = sorted({a["host"] for a in found if not public_address(a["host"])})
        if inside:
            raise PrivateAddress(f"{host} resolves to an address inside the network "
                                 f"({', '.join(inside)})")
        return found

    async def close(self) -> None:
        await self._inner.close()


def fill_url(template: str, arguments: dict) -> tuple[URL, dict]:
    """The URL with its placeholders filled, and the arguments that were not used there."""
    used: set[str] = set()

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key not in arguments or arguments[key] is None:
            raise ToolError(f"invalid arguments: {key!r} is required")
        used.add(key)
        value = _text(arguments[key])
        if value in ("", ".", ".."):
            raise ToolError(f"invalid arguments: {key!r} may not be {value!r}")
        return quote(value, safe="")

    filled = _PLACEHOLDER.sub(fill, template)
    url = URL(filled, encoded=True)
    if url.scheme not in ("http", "https") or not url.host:
        raise ToolError("refused: the URL built from the arguments is not a valid http(s) URL")
    return url, {k: v for k, v in arguments.items() if k not in used}


def query_params(arguments: dict) -> list[tuple[str, str]]:
    """Scalars as text, lists as repeated keys, objects as JSON; None is left out."""
    params = []
    for key, value in arguments.items():
        values = value if isinstance(value, list) else [value]
        params.extend((key, _text(v)) for v in values if v is not None)
    return params


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)
