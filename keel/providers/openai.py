"""The `openai` provider: any OpenAI-compatible Chat Completions API over HTTP.

OpenAI, Azure OpenAI (`api_version` set), vLLM, Ollama, llama.cpp server, or Keel's own fake
upstream. One pooled keep-alive `aiohttp.ClientSession` per provider, opened in `start()`.

This is the hot path of every remote request, so per request it does only: a shallow copy of
the body to set `model`, one orjson encode, the POST, one orjson decode and the in-place
`normalize_completion`. Streams are decoded as bytes arrive and each chunk is yielded at once;
Keel always asks the upstream for the usage chunk so the trace can record tokens. How upstream
failures map to Keel errors is in `openai_errors.py`.

Every failure is a `KeelError` (502/429/504), never a raw aiohttp or decoding exception. What
is read is bounded: a body by `max_response_bytes`, one stream event by `max_event_bytes`. A
stream must end with `data: [DONE]`; one that ends before it (the connection closed cleanly
mid-answer) is a 502 `upstream_stream_truncated`, so a cut-off answer is never passed on as a
complete one.
"""

from __future__ import annotations

from typing import AsyncIterator, ClassVar

import aiohttp
import orjson
from pydantic import Field

from keel.errors import UpstreamError, UpstreamTimeout
from keel.providers.base import ProviderOptions
from keel.providers.openai_errors import http_error, stream_error
from keel.providers.openai_sse import EventTooLarge, SSEDecoder
from keel.providers.shapes import normalize_chunk, normalize_completion
from keel.providers.upstream import (
    UpstreamOptions,
    base_headers,
    open_session,
    read_body,
    timeout_error,
    too_large,
)


class OpenAIOptions(ProviderOptions, UpstreamOptions):
    organization: str | None = None
    api_version: str | None = Field(None, description="Azure OpenAI: adds ?api-version=")


class OpenAIProvider:
    kind: ClassVar[str] = "openai"
    Options: ClassVar[type[ProviderOptions]] = OpenAIOptions

    def __init__(self, name: str, options: OpenAIOptions) -> None:
        self.name = name
        self.options = options
        self.base_url = options.base_url
        self.url = options.base_url + "/chat/completions"
        if options.api_version:
            self.url += f"?api-version={options.api_version}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        self._session = open_session(self.options, self._headers())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check(self, body: dict, model: str) -> None:
        # The upstream decides what it supports; its 400 reaches the client with its message.
        pass

    async def chat(self, body: dict, model: str) -> dict:
        request = {**body, "model": model, "stream": False}
        # stream_options is an error upstream unless stream is true.
        request.pop("stream_options", None)
        payload = orjson.dumps(request)
        resp = await self._post(payload)
        try:
            raw = await read_body(resp, self.options, self._who)
        except TimeoutError as exc:
            raise self._timeout(exc) from None
        except aiohttp.ClientError as exc:
            raise self._broken(exc) from None
        finally:
            resp.release()
        if resp.status >= 400:
            raise http_error(self.name, self.base_url, resp.status, raw, resp.headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._not_json(raw) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise self._not_json(raw)
        try:
            return normalize_completion(data)
        except (AttributeError, KeyError, TypeError, ValueError):  # e.g. a choice not an object
            raise self._not_json(raw) from None

    async def stream(self, body: dict, model: str) -> AsyncIterator[dict]:
        stream_options = body.get("stream_options")
        stream_options = {**stream_options, "include_usage": True} if stream_options else _USAGE
        payload = orjson.dumps(
            {**body, "model": model, "stream": True, "stream_options": stream_options}
        )
        resp = await self._post(payload)
        try:
            if resp.status >= 400:
                raw = await read_body(resp, self.options, self._who)
                raise http_error(self.name, self.base_url, resp.status, raw, resp.headers)
            if resp.content_type == "application/json":
                raise self._not_sse(await read_body(resp, self.options, self._who))
            decoder = SSEDecoder(self.options.max_event_bytes)
            chunks = 0
            async for piece in resp.content.iter_any():
                for data in decoder.feed(piece):
                    if data == b"[DONE]":
                        return
                    chunks += 1
                    yield self._chunk(data)
            for data in decoder.flush():
                if data == b"[DONE]":
                    return
                chunks += 1
                yield self._chunk(data)
            raise self._truncated(chunks)
        except EventTooLarge as exc:
            resp.close()
            raise too_large(
                self._who, exc.limit, "max_event_bytes", "a stream event"
            ) from None
        except TimeoutError as exc:
            raise self._timeout(exc) from None
        except aiohttp.ClientError as exc:
            raise self._broken(exc) from None
        finally:
            # Returns the connection to the pool when the body was read to its end; aiohttp
            # closes it instead when the consumer stopped early and bytes are still unread.
            resp.release()

    async def _post(self, payload: bytes) -> aiohttp.ClientResponse:
        session = self._session
        if session is None:
            await self.start()
            session = self._session
        # One retry when a pooled connection turns out to be closed by the upstream before it
        # read the request: that race is a property of keep-alive, not an upstream failure.
        for attempt in (0, 1):
            try:
                return await session.post(self.url, data=payload)
            except aiohttp.ServerDisconnectedError as exc:
                if attempt:
                    raise self._broken(exc) from None
            except TimeoutError as exc:
                raise self._timeout(exc) from None
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamError(
                    f"could not reach provider {self.name!r} at {self.base_url}: "
                    f"{exc.os_error.strerror or exc.os_error}"
                ) from None
            except aiohttp.ClientError as exc:
                raise self._broken(exc) from None
        raise AssertionError("unreachable")

    def _chunk(self, data: bytes) -> dict:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise self._not_json(data) from None
        if not isinstance(chunk, dict):
            raise self._not_json(data)
        if "error" in chunk:
            raise stream_error(self.name, self.base_url, chunk)
        try:
            return normalize_chunk(chunk)
        except (AttributeError, KeyError, TypeError, ValueError):  # e.g. a choice not an object
            raise self._not_json(data) from None

    def _headers(self) -> dict[str, str]:
        opts = self.options
        headers = base_headers(opts, "api-key" if opts.api_version else "Authorization")
        if opts.organization:
            headers["OpenAI-Organization"] = opts.organization
        return headers

    @property
    def _who(self) -> str:
        return f"provider {self.name!r} at {self.base_url}"

    def _timeout(self, exc: BaseException) -> UpstreamTimeout:
        return timeout_error(exc, self.options, self._who)

    def _truncated(self, chunks: int) -> UpstreamError:
        return UpstreamError(
            f"{self._who} ended the stream after {chunks} chunks without `data: [DONE]`: "
            "the answer is incomplete",
            code="upstream_stream_truncated",
        )

    def _broken(self, exc: BaseException) -> UpstreamError:
        return UpstreamError(
            f"the connection to provider {self.name!r} at {self.base_url} failed: "
            f"{exc.__class__.__name__}: {exc}"
        )

    def _not_json(self, raw: bytes) -> UpstreamError:
        return UpstreamError(
            f"provider {self.name!r} ({self.base_url}) sent a body that is not an OpenAI JSON "
            f"answer: {raw[:200].decode('utf-8', 'replace')!r}"
        )

    def _not_sse(self, raw: bytes) -> UpstreamError:
        try:
            error = orjson.loads(raw).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        if error:
            return stream_error(self.name, self.base_url, {"error": error})
        return UpstreamError(
            f"provider {self.name!r} ({self.base_url}) answered a stream request with JSON, "
            "not server-sent events"
        )


_USAGE = {"include_usage": True}
