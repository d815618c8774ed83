"""What every client of an OpenAI-compatible HTTP API shares: its options, session and timeouts.

Used by the `openai` chat provider and the `openai` embedder alike.
"""

from __future__ import annotations

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keel import __version__
from keel.errors import UpstreamTimeout


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
