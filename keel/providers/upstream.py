"""What every client of an OpenAI-compatible HTTP API shares: its options, session, timeouts and
the caps on what it reads.

Used by the `openai` chat provider and the `openai` embedder alike. An upstream's answer is read
with `read_body`, never `resp.read()`: a body over `max_response_bytes` (its Content-Length, or
the bytes as they arrive when there is none) stops the read, closes the connection and becomes
a 502 `upstream_response_too_large`, so one bad upstream cannot take Keel's memory with it.
"""

from __future__ import annotations

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keel import __version__
from keel.errors import UpstreamError, UpstreamTimeout

MiB = 1024 * 1024


class UpstreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    api_key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every request")
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(600.0, gt=0, description="longest wait for the next bytes")
    max_connections: int = Field(256, ge=1)
    # Below the 5 s idle timeout of uvicorn (vLLM) so Keel drops an idle connection before the
    # upstream does, rather than sending a request into one being closed.
    keepalive_timeout: float = Field(4.0, gt=0)
    max_response_bytes: int = Field(
        32 * MiB, gt=0, description="largest upstream response body Keel reads (not streams)"
    )
    max_event_bytes: int = Field(
        4 * MiB, gt=0, description="largest single server-sent event in an upstream stream"
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")


def base_headers(options: UpstreamOptions, key_header: str = "Authorization") -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": f"keel/{__version__}"}
    if options.api_key:
        headers[key_header] = (
            f"Bearer {options.api_key}" if key_header == "Authorization" else options.api_key
        )
    return headers


def open_session(options: UpstreamOptions, headers: dict[str, str]) -> aiohttp.ClientSession:
    """One pooled keep-alive session for the life of the provider."""
    connector = aiohttp.TCPConnector(
        limit=options.max_connections,
        limit_per_host=0,
        keepalive_timeout=options.keepalive_timeout,
        ttl_dns_cache=300,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=options.connect_timeout, sock_read=options.read_timeout
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={**headers, **options.headers},
        raise_for_status=False,
    )


def timeout_error(exc: BaseException, options: UpstreamOptions, who: str) -> UpstreamTimeout:
    """`who` names the upstream, e.g. "provider 'openai' at https://…"."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        phase, limit = "connecting to", options.connect_timeout
    else:
        phase, limit = "waiting for", options.read_timeout
    return UpstreamTimeout(f"timed out after {limit:g} s {phase} {who}")


class BodyTooLarge(Exception):
    """A response body went past the reader's limit (`read_capped`)."""


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of `resp`, or `BodyTooLarge` (the connection closed) as soon as it is
    known to exceed `limit` bytes: by its Content-Length, or as the bytes arrive."""
    length = resp.content_length
    if length is not None and length > limit:
        resp.close()
        raise BodyTooLarge(f"a {length}-byte response")
    pieces: list[bytes] = []
    size = 0
    content = resp.content
    while piece := await content.readany():
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            resp.close()
            raise BodyTooLarge("a response")
    # Usually one piece (a small answer): no copy at all.
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def read_body(resp: aiohttp.ClientResponse, options: UpstreamOptions, who: str) -> bytes:
    """The whole body of `resp`, refusing one larger than `options.max_response_bytes`.

    Timeouts and broken connections propagate as aiohttp raises them; the caller maps them."""
    try:
        return await read_capped(resp, options.max_response_bytes)
    except BodyTooLarge as exc:
        raise too_large(who, options.max_response_bytes, "max_response_bytes", str(exc)) from None


def too_large(who: str, limit: int, setting: str, what: str) -> UpstreamError:
    """The error for an upstream answer (or one stream event) over the cap named `setting`."""
    return UpstreamError(
        f"{who} sent {what} larger than {_size(limit)}, the provider's {setting}; "
        f"raise {setting} in keel.yaml if answers this large are expected",
        code="upstream_response_too_large",
    )


def _size(n: int) -> str:
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"
