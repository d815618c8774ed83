"""The `openai` provider against real loopback servers: the fake upstream, and small odd ones."""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from keel.errors import (
    InvalidRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from keel.providers.fake_server import serve_fake_upstream
from keel.providers.openai import OpenAIOptions, OpenAIProvider
from keel.providers.openai_sse import EventTooLarge, SSEDecoder
from tests.openai_schema import assert_valid

USER = [{"role": "user", "content": "the quick brown fox"}]
BODY = {"model": "public-name", "messages": USER}


def assert_valid_completion(completion: dict) -> None:
    assert_valid("CreateChatCompletionResponse", completion)


def assert_valid_chunk(chunk: dict) -> None:
    assert_valid("CreateChatCompletionStreamResponse", chunk)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream():
    with serve_fake_upstream(api_key="upstream-key") as url:
        yield url


async def _provider(base_url: str, **options) -> OpenAIProvider:
    options.setdefault("api_key", "upstream-key")
    provider = OpenAIProvider("up", OpenAIOptions(base_url=base_url, **options))
    await provider.start()
    return provider


@pytest.fixture
async def provider(upstream):
    p = await _provider(upstream)
    yield p
    await p.aclose()


async def _collect(provider, body, model) -> list[dict]:
    return [chunk async for chunk in provider.stream(body, model)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OddUpstream:
    """A one-route aiohttp server answering /v1/chat/completions with `handler`; it records
    each request (headers, query, body, client port) so tests can look at what was sent."""

    def __init__(self, handler):
        self.requests: list[dict] = []

        async def route(request: web.Request) -> web.StreamResponse:
            self.requests.append({
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": orjson.loads(await request.read()),
                "peer": request.transport.get_extra_info("peername")[1],
            })
            return await handler(request)

        app = web.Application()
        app.router.add_post("/v1/chat/completions", route)
        self.server = TestServer(app, host="127.0.0.1")

    async def __aenter__(self) -> str:
        await self.server.start_server()
        return str(self.server.make_url("/v1"))

    async def __aexit__(self, *exc) -> None:
        await self.server.close()


def _json(payload, status=200, headers=None):
    async def handler(request):
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(status=status, body=body, content_type="application/json",
                            headers=headers)
    return handler


def _sse(raw: bytes):
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(raw)
        await resp.write_eof()
        return resp
    return handler


# -- chat and stream ----------------------------------------------------------------------------


async def test_chat_is_openai_shaped_and_uses_the_upstream_model(provider):
    result = await provider.chat(BODY, "echo")
    assert_valid_completion(result)
    assert result["model"] == "echo"
    assert result["choices"][0]["message"]["content"] == "the quick brown fox"
    assert result["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    assert result["system_fingerprint"].startswith("fp_fake")


async def test_chat_does_not_change_the_callers_body(provider):
    body = {**BODY, "stream_options": {"include_usage": False}}
    snapshot = orjson.dumps(body)
    await provider.chat(body, "echo")
    [c async for c in provider.stream(body, "echo")]
    assert orjson.dumps(body) == snapshot


async def test_stream_chunks_are_openai_shaped_and_end_with_usage(provider):
    chunks = await _collect(provider, {**BODY, "stream": True}, "echo")
    for chunk in chunks:
        assert_valid_chunk(chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "the quick brown fox"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # Keel asks for usage even though the client did not.
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


async def _chat_or_stream(request):
    if orjson.loads(await request.read()).get("stream"):
        return await _sse(b'data: {"choices": []}\n\ndata: [DONE]\n\n')(request)
    return await _json({"choices": [{"message": {"content": "hi"}}]})(request)


async def test_what_is_sent_upstream():
    recorded = OddUpstream(_chat_or_stream)
    async with recorded as url:
        provider = await _provider(url, api_key="k1", organization="org-1",
                                   headers={"X-Extra": "1"})
        body = {**BODY, "stream": True, "stream_options": {"include_obfuscation": False}}
        await _collect(provider, body, "upstream-model")
        await provider.chat({**BODY, "stream_options": {"include_usage": True}}, "upstream-model")
        await provider.aclose()
    stream_req, chat_req = recorded.requests
    assert stream_req["body"]["model"] == "upstream-model"
    assert stream_req["body"]["stream_options"] == {"include_obfuscation": False,
                                                    "include_usage": True}
    assert stream_req["headers"]["Authorization"] == "Bearer k1"
    assert stream_req["headers"]["OpenAI-Organization"] == "org-1"
    assert stream_req["headers"]["X-Extra"] == "1"
    assert chat_req["body"]["stream"] is False
    assert "stream_options" not in chat_req["body"]


async def test_azure_uses_api_version_and_api_key_header():
    recorded = OddUpstream(_json({"choices": [{"message": {"content": "hi"}}]}))
    async with recorded as url:
        provider = await _provider(url, api_key="azure-key", api_version="2024-10-21")
        await provider.chat(BODY, "deployment")
        await provider.aclose()
    request = recorded.requests[0]
    assert request["query"] == {"api-version": "2024-10-21"}
    assert request["headers"]["api-key"] == "azure-key"
    assert "Authorization" not in request["headers"]


async def test_connections_are_kept_alive_across_chats_and_streams():
    recorded = OddUpstream(_chat_or_stream)
    async with recorded as url:
        provider = await _provider(url)
        for _ in range(3):
            await provider.chat(BODY, "m")
            await _collect(provider, {**BODY, "stream": True}, "m")
        await provider.aclose()
    assert len({r["peer"] for r in recorded.requests}) == 1


async def test_stream_yields_each_chunk_as_it_arrives(provider):
    words = "one two three four five"
    body = {"model": "x", "messages": [{"role": "user", "content": words}], "stream": True}
    start = time.perf_counter()
    first_content_at = None
    async for chunk in provider.stream(body, "slow-100"):
        has_content = bool(chunk["choices"] and chunk["choices"][0]["delta"].get("content"))
        if first_content_at is None and has_content:
            first_content_at = time.perf_counter() - start
    total = time.perf_counter() - start
    assert total >= 0.5
    assert first_content_at is not None and first_content_at < total - 0.25


async def test_missing_required_fields_are_filled_in():
    minimal = {"id": "x", "model": "m", "system_fingerprint": None,
               "choices": [{"message": {"content": "hi"}}]}
    async with OddUpstream(_json(minimal)) as url:
        provider = await _provider(url)
        result = await provider.chat(BODY, "m")
        await provider.aclose()
    assert_valid_completion(result)
    assert result["choices"][0]["message"]["refusal"] is None


async def test_sse_with_crlf_comments_and_missing_fields_is_parsed():
    raw = (b": keep-alive\r\n\r\n"
           b'data: {"id": "c", "model": "m", "choices": [{"delta": {"content": "a"}}]}\r\n\r\n'
           b'data: {"id": "c", "model": "m", "choices": [{"delta": {}, "finish_reason": "stop"}]}'
           b"\r\n\r\ndata: [DONE]\r\n\r\n")
    async with OddUpstream(_sse(raw)) as url:
        provider = await _provider(url)
        chunks = await _collect(provider, {**BODY, "stream": True}, "m")
        await provider.aclose()
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["a", None]
    for chunk in chunks:
        assert_valid_chunk(chunk)


# -- error mapping ------------------------------------------------------------------------------


async def test_429_carries_retry_after_and_the_upstream_message(provider):
    for call in (provider.chat(BODY, "error-429"), _collect(provider, BODY, "error-429")):
        with pytest.raises(UpstreamRateLimited) as info:
            await call
        assert info.value.status == 429
        assert info.value.headers == {"Retry-After": "7"}
        assert "scripted error 429" in info.value.message


async def test_retry_after_ms_is_turned_into_seconds():
    async with OddUpstream(_json({"error": {"message": "slow down"}}, 429,
                                 {"retry-after-ms": "1500"})) as url:
        provider = await _provider(url)
        with pytest.raises(UpstreamRateLimited) as info:
            await provider.chat(BODY, "m")
        await provider.aclose()
    assert info.value.headers == {"Retry-After": "2"}


async def test_500_becomes_502_with_the_upstream_message(provider):
    for call in (provider.chat(BODY, "error-500"), _collect(provider, BODY, "error-500")):
        with pytest.raises(UpstreamError) as info:
            await call
        assert info.value.status == 502
        assert "scripted error 500" in info.value.message


async def test_refused_connection_becomes_502_naming_the_base_url():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    provider = await _provider(url)
    for call in (provider.chat(BODY, "echo"), _collect(provider, BODY, "echo")):
        with pytest.raises(UpstreamError) as info:
            await call
        assert info.value.status == 502
        assert url in info.value.message and "could not reach" in info.value.message
    await provider.aclose()


async def test_read_timeout_becomes_504(upstream):
    provider = await _provider(upstream, read_timeout=0.05)
    with pytest.raises(UpstreamTimeout) as info:
        await provider.chat(BODY, "slow-500")
    assert info.value.status == 504 and "0.05 s" in info.value.message
    # A stream that stalls between chunks times out too.
    with pytest.raises(UpstreamTimeout):
        await _collect(provider, {**BODY, "stream": True}, "slow-500")
    await provider.aclose()


async def test_rejected_provider_key_becomes_502(upstream):
    provider = await _provider(upstream, api_key="wrong")
    with pytest.raises(UpstreamError) as info:
        await provider.chat(BODY, "echo")
    await provider.aclose()
    assert info.value.status == 502
    assert "API key" in info.value.message and "keel.yaml" in info.value.message


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_client_side_4xx_keeps_status_message_param_and_code(status):
    error = {"error": {"message": "bad temperature", "type": "invalid_request_error",
                       "param": "temperature", "code": "invalid_value"}}
    async with OddUpstream(_json(error, status)) as url:
        provider = await _provider(url)
        with pytest.raises(InvalidRequest) as info:
            await provider.chat(BODY, "m")
        await provider.aclose()
    assert info.value.status == status
    assert "bad temperature" in info.value.message
    assert (info.value.param, info.value.code) == ("temperature", "invalid_value")


async def test_404_without_an_openai_body_points_at_the_base_url():
    async with OddUpstream(_json(b"<html>Not Found</html>", 404)) as url:
        provider = await _provider(url)
        with pytest.raises(UpstreamError) as info:
            await provider.chat(BODY, "m")
        await provider.aclose()
    assert info.value.status == 502 and "base_url" in info.value.message


async def test_a_body_that_is_not_json_becomes_502():
    async with OddUpstream(_json(b"this is not json")) as url:
        provider = await _provider(url)
        with pytest.raises(UpstreamError) as info:
            await provider.chat(BODY, "m")
        with pytest.raises(UpstreamError):
            await _collect(provider, {**BODY, "stream": True}, "m")
        await provider.aclose()
    assert info.value.status == 502 and "not an OpenAI JSON" in info.value.message


async def test_an_error_event_mid_stream_becomes_502():
    raw = (b'data: {"id": "c", "model": "m", "choices": [{"delta": {"content": "a"}}]}\n\n'
           b'data: {"error": {"message": "overloaded"}}\n\n')
    async with OddUpstream(_sse(raw)) as url:
        provider = await _provider(url)
        seen = []
        with pytest.raises(UpstreamError) as info:
            async for chunk in provider.stream({**BODY, "stream": True}, "m"):
                seen.append(chunk)
        await provider.aclose()
    assert len(seen) == 1 and "overloaded" in info.value.message


# -- options and the SSE decoder -----------------------------------------------------------------


def test_options_are_strict():
    assert OpenAIOptions(base_url="http://h/v1/").base_url == "http://h/v1"
    with pytest.raises(ValidationError):
        OpenAIOptions(base_url="h/v1")
    with pytest.raises(ValidationError):
        OpenAIOptions(base_url="http://h/v1", api_kee="typo")
    with pytest.raises(ValidationError):
        OpenAIOptions()


@pytest.mark.parametrize("step", [1, 2, 3, 5, 1000])
def test_sse_decoder_handles_any_split(step):
    raw = (b'data: {"a": 1}\n\n: comment\n\nevent: x\ndata: line1\r\ndata: line2\r\n\r\n'
           b"data:[DONE]\r\rdata: tail")
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(raw), step):
        events += decoder.feed(raw[i:i + step])
    events += decoder.flush()
    assert events == [b'{"a": 1}', b"line1\nline2", b"[DONE]", b"tail"]


async def test_session_is_pooled_and_closed(upstream):
    provider = OpenAIProvider("up", OpenAIOptions(base_url=upstream, api_key="upstream-key",
                                                  max_connections=7))
    await provider.start()
    session = provider._session
    assert session.connector.limit == 7
    await asyncio.gather(*(provider.chat(BODY, "echo") for _ in range(20)))
    await provider.aclose()
    assert session.closed


async def test_upstream_model_not_found_is_keels_config_not_the_clients():
    error = {"error": {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error",
                       "param": None, "code": "model_not_found"}}
    async with OddUpstream(_json(error, 404)) as url:
        provider = await _provider(url)
        with pytest.raises(UpstreamError) as info:
            await provider.chat(BODY, "gpt-9")
        await provider.aclose()
    assert info.value.status == 502 and info.value.code == "upstream_model_not_found"
    assert "keel.yaml" in info.value.message and "gpt-9" in info.value.message


# -- caps on what is read (defect 6) --------------------------------------------------------------


def _big_json(size: int) -> bytes:
    return orjson.dumps({"choices": [{"message": {"content": "x" * size}}]})


def _chunked_json(raw: bytes):
    """The body in pieces, without a Content-Length: the cap must hold as bytes arrive."""
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(raw), 65536):
            await resp.write(raw[i:i + 65536])
        await resp.write_eof()
        return resp
    return handler


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_response_over_max_response_bytes_is_a_502_naming_the_setting(framing):
    raw = _big_json(300_000)
    handler = _json(raw) if framing == "content-length" else _chunked_json(raw)
    async with OddUpstream(handler) as url:
        provider = await _provider(url, max_response_bytes=256 * 1024)
        with pytest.raises(UpstreamError) as info:
            await provider.chat(BODY, "m")
        # Under the cap, the same provider still answers.
        async with OddUpstream(_json(_big_json(100_000))) as small_url:
            small = await _provider(small_url, max_response_bytes=256 * 1024)
            answer = await small.chat(BODY, "m")
            assert len(answer["choices"][0]["message"]["content"]) == 100_000
            await small.aclose()
        await provider.aclose()
    assert info.value.status == 502 and info.value.code == "upstream_response_too_large"
    assert "256 KiB" in info.value.message and "max_response_bytes" in info.value.message


async def test_an_error_body_over_the_cap_is_refused_too():
    async with OddUpstream(_json(b"x" * 300_000, 500)) as url:
        provider = await _provider(url, max_response_bytes=256 * 1024)
        for call in (provider.chat(BODY, "m"), _collect(provider, {**BODY, "stream": True}, "m")):
            with pytest.raises(UpstreamError) as info:
                await call
            assert info.value.code == "upstream_response_too_large"
        await provider.aclose()


async def test_a_stream_event_over_max_event_bytes_is_a_502_naming_the_setting():
    big = orjson.dumps({"id": "c", "model": "m",
                        "choices": [{"delta": {"content": "x" * 200_000}}]})
    small = b'data: {"id": "c", "model": "m", "choices": [{"delta": {"content": "a"}}]}\n\n'
    raw = small + b"data: " + big + b"\n\ndata: [DONE]\n\n"
    async with OddUpstream(_sse(raw)) as url:
        provider = await _provider(url, max_event_bytes=128 * 1024)
        seen = []
        with pytest.raises(UpstreamError) as info:
            async for chunk in provider.stream({**BODY, "stream": True}, "m"):
                seen.append(chunk)
        await provider.aclose()
        roomy = await _provider(url, max_event_bytes=256 * 1024)
        assert len(await _collect(roomy, {**BODY, "stream": True}, "m")) == 2
        await roomy.aclose()
    assert len(seen) == 1
    assert info.value.status == 502 and info.value.code == "upstream_response_too_large"
    assert "128 KiB" in info.value.message and "max_event_bytes" in info.value.message


async def test_a_stream_that_ends_without_done_is_a_502_not_a_complete_answer():
    raw = (b'data: {"id": "c", "model": "m", "choices": [{"delta": {"content": "a"}}]}\n\n'
           b'data: {"id": "c", "model": "m", "choices": [{"delta": {"content": "b"}}]}\n\n')
    async with OddUpstream(_sse(raw)) as url:
        provider = await _provider(url)
        seen = []
        with pytest.raises(UpstreamError) as info:
            async for chunk in provider.stream({**BODY, "stream": True}, "m"):
                seen.append(chunk)
        await provider.aclose()
    assert len(seen) == 2
    assert info.value.status == 502 and info.value.code == "upstream_stream_truncated"
    assert "[DONE]" in info.value.message


async def test_done_without_its_blank_line_still_ends_the_stream_cleanly():
    raw = (b'data: {"id": "c", "model": "m", "choices": [{"delta": {"content": "a"}}]}\n\n'
           b"data: [DONE]")
    async with OddUpstream(_sse(raw)) as url:
        provider = await _provider(url)
        assert len(await _collect(provider, {**BODY, "stream": True}, "m")) == 1
        await provider.aclose()


async def test_chunks_that_are_json_but_not_objects_of_choices_are_a_502():
    async with OddUpstream(_json({"choices": ["not an object"]})) as url:
        provider = await _provider(url)
        with pytest.raises(UpstreamError):
            await provider.chat(BODY, "m")
        await provider.aclose()
    async with OddUpstream(_sse(b'data: {"choices": [7]}\n\ndata: [DONE]\n\n')) as url:
        provider = await _provider(url)
        with pytest.raises(UpstreamError):
            await _collect(provider, {**BODY, "stream": True}, "m")
        await provider.aclose()


def test_caps_have_documented_defaults_and_are_validated():
    options = OpenAIOptions(base_url="http://h/v1")
    assert options.max_response_bytes == 32 * 1024 * 1024
    assert options.max_event_bytes == 4 * 1024 * 1024
    with pytest.raises(ValidationError):
        OpenAIOptions(base_url="http://h/v1", max_event_bytes=0)


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_sse_decoder_caps_one_event_not_the_stream(step):
    event = b"data: " + b"x" * 1000 + b"\n\n"
    decoder = SSEDecoder(max_event_bytes=1024)
    raw = event * 50  # 50 KB in all, each event under the cap
    events = []
    for i in range(0, len(raw), step):
        events += decoder.feed(raw[i:i + step])
    assert len(events) == 50
    # One event of two 600-byte data lines: each line is under the cap, the event is not.
    with pytest.raises(EventTooLarge):
        for piece in (b"data: " + b"y" * 600 + b"\n", b"data: " + b"y" * 600 + b"\n"):
            decoder.feed(piece)
    # A line still arriving counts too: no need to wait for its end.
    with pytest.raises(EventTooLarge):
        SSEDecoder(max_event_bytes=1024).feed(b": a comment that never ends " + b"z" * 2000)


def test_sse_decoder_is_linear_in_a_large_event_split_small():
    # 8 MiB in 1 KiB pieces: re-concatenating the buffer per piece copies ~32 GiB (tens of
    # seconds); decoding incrementally copies each byte a few times (well under a second).
    payload = b"x" * (8 * 1024 * 1024)
    raw = b"data: " + payload + b"\n\n"
    decoder = SSEDecoder()
    started = time.perf_counter()
    events = []
    for i in range(0, len(raw), 1024):
        events += decoder.feed(raw[i:i + 1024])
    elapsed = time.perf_counter() - started
    assert events == [payload]
    assert elapsed < 5.0, f"{elapsed:.1f} s: the decoder copies its buffer per piece"


async def test_the_openai_embedder_caps_its_responses_too():
    from keel.embeddings.openai import OpenAIEmbedder, OpenAIEmbedderOptions

    async def embeddings(request):
        vector = [0.5] * 40_000  # ~160 KB of JSON for one input
        body = {"data": [{"index": 0, "embedding": vector}], "usage": {"prompt_tokens": 1}}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/v1"))
        embedder = OpenAIEmbedder("emb", OpenAIEmbedderOptions(
            base_url=url, model="m", dim=40_000, max_response_bytes=64 * 1024))
        with pytest.raises(UpstreamError) as info:
            await embedder.embed(["hello"])
        await embedder.aclose()
    finally:
        await server.close()
    assert info.value.code == "upstream_response_too_large"
    assert "max_response_bytes" in info.value.message and "'emb'" in info.value.message
