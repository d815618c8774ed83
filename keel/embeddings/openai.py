"""The `openai` embedder: any OpenAI-compatible `POST /embeddings` (OpenAI, vLLM, Ollama, TEI).

One pooled keep-alive `aiohttp.ClientSession`, opened in `start()`. A call is cut into batches
of `batch_size` inputs, sent `max_concurrency` at a time. The vector size is the `dim` option
when given, else `dimensions`, else learned in `start()` from one probe request. Vectors are
L2-normalised on arrival (not every server normalises). Upstream failures map to Keel errors
exactly as for the chat provider (`keel.providers.openai_errors`), and a response over
`max_response_bytes` (32 MiB: raise it for large `batch_size` x dimensions) is a 502
`upstream_response_too_large`.
"""

from __future__ import annotations

import asyncio
import base64
from typing import ClassVar
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import orjson
from pydantic import Field

from keel.embeddings.base import EmbedderOptions, Embeddings
from keel.embeddings.vectors import l2_normalise
from keel.errors import UpstreamError, UpstreamTimeout
from keel.providers.openai_errors import http_error
from keel.providers.upstream import (
    UpstreamOptions,
    base_headers,
    open_session,
    read_body,
    timeout_error,
)


class OpenAIEmbedderOptions(EmbedderOptions, UpstreamOptions):
    model: str = Field(description="the upstream's model name, e.g. text-embedding-3-small")
    dimensions: int | None = Field(None, ge=1, description="sent upstream (text-embedding-3-*)")
    dim: int | None = Field(None, ge=1, description="the vector size, if known: skips the probe")
    batch_size: int = Field(256, ge=1, le=2048, description="inputs per upstream request")
    max_concurrency: int = Field(4, ge=1, description="upstream requests in flight per call")
    read_timeout: float = Field(60.0, gt=0)
    max_connections: int = Field(64, ge=1)


class OpenAIEmbedder:
    kind: ClassVar[str] = "openai"
    Options: ClassVar[type[EmbedderOptions]] = OpenAIEmbedderOptions

    def __init__(self, name: str, options: OpenAIEmbedderOptions) -> None:
        self.name = name
        self.options = options
        self.base_url = options.base_url
        self.url = options.base_url + "/embeddings"
        self.upstream_model = options.model
        self.dim = options.dim or options.dimensions or 0
        suffix = f":{options.dimensions}" if options.dimensions else ""
        self.fingerprint = f"openai:{urlsplit(options.base_url).netloc}/{options.model}{suffix}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = self._open_session()
        if not self.dim:
            probe = await self._request(["dimension probe"])
            self.dim = probe.vectors.shape[1]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def embed(self, texts: list[str]) -> Embeddings:
        if self._session is None:
            await self.start()
        size = self.options.batch_size
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        if not batches:
            return Embeddings(np.zeros((0, self.dim), dtype=np.float32), 0)
        gate = asyncio.Semaphore(self.options.max_concurrency)

        async def one(batch: list[str]) -> Embeddings:
            async with gate:
                return await self._request(batch)

        parts = await asyncio.gather(*(one(b) for b in batches))
        for part in parts:
            if part.vectors.shape[1] != self.dim:
                raise self._bad(f"{part.vectors.shape[1]}-dimensional vectors, not {self.dim}")
        return Embeddings(
            np.concatenate([p.vectors for p in parts]), sum(p.tokens for p in parts)
        )

    async def _request(self, texts: list[str]) -> Embeddings:
        body = {"model": self.options.model, "input": texts, "encoding_format": "float"}
        if self.options.dimensions:
            body["dimensions"] = self.options.dimensions
        try:
            async with self._session.post(self.url, data=orjson.dumps(body)) as resp:
                raw = await read_body(resp, self.options, self._who)
                if resp.status >= 400:
                    raise http_error(self.name, self.base_url, resp.status, raw, resp.headers,
                                     path="/embeddings")
        except TimeoutError as exc:
            raise self._timeout(exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                f"could not reach embedder {self.name!r} at {self.base_url}: "
                f"{exc.os_error.strerror or exc.os_error}"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"embedder {self.name!r} ({self.base_url}) broke the connection: {exc}"
            ) from None
        return self._parse(raw, len(texts))

    def _parse(self, raw: bytes, count: int) -> Embeddings:
        try:
            payload = orjson.loads(raw)
            items = sorted(payload["data"], key=lambda item: item["index"])
            rows = [_vector(item["embedding"]) for item in items]
            vectors = np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise self._bad(f"an answer that is not an embeddings list: {raw[:200]!r}") from None
        if len(rows) != count:
            raise self._bad(f"{len(rows)} vectors for {count} inputs")
        usage = payload.get("usage") or {}
        tokens = usage.get("prompt_tokens") or usage.get("total_tokens") or 0
        return Embeddings(l2_normalise(vectors), int(tokens))

    def _open_session(self) -> aiohttp.ClientSession:
        return open_session(self.options, base_headers(self.options))

    @property
    def _who(self) -> str:
        return f"embedder {self.name!r} ({self.base_url})"

    def _timeout(self, exc: BaseException) -> UpstreamTimeout:
        return timeout_error(exc, self.options, self._who)

    def _bad(self, what: str) -> UpstreamError:
        return UpstreamError(f"embedder {self.name!r} ({self.base_url}) sent {what}")


def _vector(value) -> np.ndarray:
    # Some servers answer base64 whatever was asked; accept both.
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)
