"""The cache layer end to end over real sockets: a Keel serving the fake provider (fake/echo
answers with the question, so an answer shows whose question it was generated for)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import (
    EmbedderConfig,
    KeelConfig,
    ModelConfig,
    ProviderConfig,
    StoreConfig,
)
from keel.gateway import Gateway
from keel.grounding.knowledge.knowledge import knowledge_base
from keel.orchestration.cache import store as cache_store
from keel.pipeline import Trace
from tests.openai_schema import assert_valid

SEMANTIC = {"mode": "both", "embedder": "fake", "verify": False, "threshold": 0.9}
QUESTION = "how do I delete my account"
PARAPHRASE = "how do I delete my account please"  # fake-embedder cosine 0.93
NEAR_MISS = "how do I delete my post"  # 0.83


def config(tmp_path, db=None, **models) -> KeelConfig:
    return KeelConfig(
        state_dir=tmp_path,
        store=StoreConfig(url=db),
        providers={"fake": ProviderConfig(kind="fake")},
        embedders={"fake": EmbedderConfig(kind="fake")},
        models={name: ModelConfig(provider="fake", **spec) for name, spec in models.items()},
    )


class Keel:
    def __init__(self, url: str, gateway: Gateway, session: ClientSession):
        self.url, self.gateway, self.session = url, gateway, session

    async def ask(self, question: str, model="bot", headers=None, **fields):
        body = {"model": model, "messages": [{"role": "user", "content": question}],
                "temperature": 0, **fields}
        async with self.session.post(f"{self.url}/v1/chat/completions", json=body,
                                     headers=headers or {}) as r:
            if body.get("stream"):
                return r.status, r.headers, await _events(r)
            return r.status, r.headers, await r.json()


async def _events(response) -> list:
    events = []
    async for line in response.content:
        line = line.decode().strip()
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture
async def serve(tmp_path):
    started = []

    async def start(cfg: KeelConfig) -> Keel:
        gateway = Gateway(cfg)
        server = TestServer(create_app(gateway), host="127.0.0.1")
        await server.start_server()
        session = ClientSession()
        started.append((server, session))
        return Keel(str(server.make_url("")).rstrip("/"), gateway, session)

    yield start
    for server, session in started:
        await session.close()
        await server.close()


def answer(result: dict) -> str:
    return result["choices"][0]["message"]["content"]


def entries(keel: Keel) -> int:
    return sum(s["entries"] for s in cache_store.stats(keel.gateway.runtime.store))


def newest(keel: Keel) -> float | None:
    return max((s["newest"] for s in cache_store.stats(keel.gateway.runtime.store)),
               default=None)


async def written(keel: Keel, count: int, timeout: float = 10.0) -> None:
    """Wait until the store holds `count` entries: answers are written off the response path."""
    deadline = asyncio.get_running_loop().time() + timeout
    while entries(keel) != count:
        assert asyncio.get_running_loop().time() < deadline, f"{entries(keel)} != {count}"
        await asyncio.sleep(0.02)


async def test_an_exact_repeat_is_served_from_the_cache(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": {"mode": "exact"},
                                             "pricing": {"input": 1.0, "output": 2.0}}))
    status, headers, first = await keel.ask(QUESTION)
    assert status == 200
    assert headers["x-keel-cache"] == "miss"
    assert first["usage"]["completion_tokens"] > 0
    status, headers, second = await keel.ask(QUESTION, user="someone-else")
    assert status == 200
    assert headers["x-keel-cache"] == "hit"
    assert headers["x-keel-cache-kind"] == "exact"
    assert int(headers["x-keel-cache-entry"]) > 0
    assert "x-keel-cache-similarity" not in headers
    assert answer(second) == answer(first) == QUESTION
    assert second["id"] != first["id"]
    assert second["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert float(headers["x-keel-cost-usd"]) == 0.0
    assert_valid("CreateChatCompletionResponse", second)
    # An exact-only cache does not answer a paraphrase.
    _, headers, _ = await keel.ask(PARAPHRASE)
    assert headers["x-keel-cache"] == "miss"


async def test_a_paraphrase_is_a_semantic_hit_and_a_near_miss_is_not(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": SEMANTIC}))
    await keel.ask(QUESTION)
    status, headers, result = await keel.ask(PARAPHRASE)
    assert status == 200
    assert headers["x-keel-cache"] == "hit"
    assert headers["x-keel-cache-kind"] == "semantic"
    assert 0.9 <= float(headers["x-keel-cache-similarity"]) < 1.0
    assert answer(result) == QUESTION  # the answer generated for the first question
    _, headers, result = await keel.ask(NEAR_MISS)
    assert headers["x-keel-cache"] == "miss"
    assert answer(result) == NEAR_MISS


async def test_the_namespace_keeps_other_system_prompts_apart(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": SEMANTIC}))
    await keel.ask(QUESTION)
    system = [{"role": "system", "content": "Answer in French."},
              {"role": "user", "content": PARAPHRASE}]
    _, headers, result = await keel.ask("", messages=system)
    assert headers["x-keel-cache"] == "miss"
    assert answer(result) == PARAPHRASE
    _, headers, _ = await keel.ask(QUESTION, max_tokens=3)  # another parameter: another namespace
    assert headers["x-keel-cache"] == "miss"


async def test_only_deterministic_requests_are_cached_unless_reuse_is_always(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": {"mode": "exact"}},
                              always={"model": "echo", "cache": {"mode": "exact",
                                                                 "reuse": "always"}}))
    for _ in range(2):
        _, headers, result = await keel.ask(QUESTION, temperature=0.7)
        assert "x-keel-cache" not in headers
        assert result["usage"]["completion_tokens"] > 0
    await keel.ask(QUESTION, temperature=0.7, seed=7)
    _, headers, _ = await keel.ask(QUESTION, temperature=0.7, seed=7)
    assert headers["x-keel-cache"] == "hit"  # a fixed seed makes an answer reusable
    await keel.ask(QUESTION, model="always", temperature=0.7)
    _, headers, _ = await keel.ask(QUESTION, model="always", temperature=0.7)
    assert headers["x-keel-cache"] == "hit"


async def test_cache_off_and_refresh(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": {"mode": "exact"}}))
    await keel.ask(QUESTION)
    _, headers, result = await keel.ask(QUESTION, headers={"x-keel-cache": "off"})
    assert headers["x-keel-cache"] == "off"
    assert result["usage"]["completion_tokens"] > 0  # the model answered
    await written(keel, 1)  # the first answer, and nothing new
    _, headers, _ = await keel.ask(QUESTION)
    old_entry = headers["x-keel-cache-entry"]
    _, headers, result = await keel.ask(QUESTION, headers={"X-Keel-Cache": "refresh"})
    assert headers["x-keel-cache"] == "miss"
    assert result["usage"]["completion_tokens"] > 0
    await written(keel, 1)  # the new answer replaced the old one
    _, headers, _ = await keel.ask(QUESTION)
    assert headers["x-keel-cache"] == "hit"
    assert int(headers["x-keel-cache-entry"]) > int(old_entry)  # the refreshed answer
    status, _, error = await keel.ask(QUESTION, headers={"x-keel-cache": "sometimes"})
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert "x-keel-cache" in error["error"]["message"]


@pytest.mark.parametrize("include_usage", [True, False])
async def test_a_hit_on_a_stream_is_replayed_as_chunks(serve, tmp_path, include_usage):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": SEMANTIC}))
    _, headers, _ = await keel.ask(QUESTION)  # stored by a non-streaming request
    assert headers["x-keel-cache"] == "miss"
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    status, headers, events = await keel.ask(PARAPHRASE, stream=True, **options)
    assert status == 200
    assert headers["x-keel-cache"] == "hit"
    assert headers["x-keel-cache-kind"] == "semantic"
    assert headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == QUESTION
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] == 0
    else:
        assert all("usage" not in c for c in chunks)


async def test_a_streamed_miss_is_stored_once_it_has_ended(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": SEMANTIC}))
    status, headers, events = await keel.ask(QUESTION, stream=True)
    assert status == 200 and headers["x-keel-cache"] == "miss"
    assert events[-1] == "[DONE]"
    await written(keel, 1)  # by the store's writer, just after the stream ended
    _, headers, result = await keel.ask(QUESTION)
    assert headers["x-keel-cache"] == "hit"
    assert answer(result) == QUESTION
    assert result["choices"][0]["finish_reason"] == "stop"
    assert_valid("CreateChatCompletionResponse", result)


async def test_a_stream_the_client_leaves_is_not_stored(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "slow-200", "cache": SEMANTIC}))
    body = {"model": "bot", "messages": [{"role": "user", "content": "one two three four five"}],
            "temperature": 0, "stream": True}
    async with keel.session.post(f"{keel.url}/v1/chat/completions", json=body) as r:
        assert r.headers["x-keel-cache"] == "miss"
        await r.content.readline()  # the first event, then hang up
    await asyncio.sleep(1.5)  # the server would have finished the stream by now
    assert entries(keel) == 0


async def test_errors_tool_calls_and_several_choices_are_never_stored(serve, tmp_path):
    cache = {"mode": "exact", "reuse": "always"}
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": cache},
                              broken={"model": "error-500", "cache": cache},
                              tools={"model": "tool-call", "cache": cache}))
    for _ in range(2):
        status, _, _ = await keel.ask(QUESTION, model="broken")
        assert status >= 500
    tool = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]
    for _ in range(2):
        status, headers, result = await keel.ask(QUESTION, model="tools", tools=tool)
        assert status == 200 and headers["x-keel-cache"] == "miss"
        assert result["choices"][0]["finish_reason"] == "tool_calls"
    for _ in range(2):
        status, headers, result = await keel.ask(QUESTION, n=2)
        assert status == 200 and "x-keel-cache" not in headers
    assert entries(keel) == 0


async def test_entries_expire(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": {**SEMANTIC,
                                                                        "ttl_s": 0.5}}))
    await keel.ask(QUESTION)
    await asyncio.sleep(1.0)
    _, headers, _ = await keel.ask(QUESTION)
    assert headers["x-keel-cache"] == "miss"
    _, headers, _ = await keel.ask(PARAPHRASE)
    assert headers["x-keel-cache"] == "hit"  # the fresh entry the miss above stored


async def test_the_size_bound_evicts_the_least_recently_used(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": {
        "mode": "exact", "max_entries": 2}}))
    for count, question in enumerate(("one", "two"), 1):
        await keel.ask(question)
        await written(keel, count)
    # "three" is written (and "one" evicted, in the same transaction) once the newest entry
    # changes: the count alone is 2 before and after, and reading it raced the writer.
    before = newest(keel)
    await keel.ask("three")
    deadline = asyncio.get_running_loop().time() + 10.0
    while newest(keel) == before:
        assert asyncio.get_running_loop().time() < deadline, "three was never written"
        await asyncio.sleep(0.02)
    await written(keel, 2)
    _, headers, _ = await keel.ask("one")
    assert headers["x-keel-cache"] == "miss"
    _, headers, _ = await keel.ask("three")
    assert headers["x-keel-cache"] == "hit"


async def test_new_documents_invalidate_answers_on_a_grounded_route(serve, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Accounts\n\nDelete your account under Settings.\n")
    keel = await serve(config(tmp_path, bot={
        "model": "echo", "cache": SEMANTIC,
        "knowledge": {"collection": "help", "min_similarity": -1}}))
    kb = knowledge_base(keel.gateway.runtime)
    await kb.ingest("help", [docs], embedder="fake")
    _, headers, _ = await keel.ask(QUESTION)
    assert headers["x-keel-cache"] == "miss"
    _, headers, _ = await keel.ask(QUESTION)
    assert headers["x-keel-cache"] == "hit"
    (docs / "b.md").write_text("# Posts\n\nDelete a post from its menu.\n")
    await kb.ingest("help", [docs], embedder="fake")
    await asyncio.sleep(1.5)  # the cache reads the collection's version at most once a second
    _, headers, _ = await keel.ask(QUESTION)
    assert headers["x-keel-cache"] == "miss"
    _, headers, _ = await keel.ask(PARAPHRASE)
    assert headers["x-keel-cache"] == "hit"  # the answer stored under the new version


GUARDS = {"input": [{"denylist": {"words": ["acme"], "action": "block"}}],
          "output": [{"denylist": {"words": ["globex"], "action": "block"}}]}


async def test_a_cached_answer_never_bypasses_an_input_guard(serve, tmp_path):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    question = "tell me about acme"
    unguarded = await serve(config(tmp_path / "a", db, bot={"model": "echo", "cache": SEMANTIC}))
    await unguarded.ask(question)
    _, headers, _ = await unguarded.ask(question)
    assert headers["x-keel-cache"] == "hit"  # the answer is in the cache
    guarded = await serve(config(tmp_path / "b", db, bot={
        "model": "echo", "cache": SEMANTIC, "guardrails": GUARDS}))
    status, headers, error = await guarded.ask(question)
    assert status == 400
    assert error["error"]["code"] == "guardrail_blocked"
    assert "x-keel-cache" not in headers


async def test_an_answer_an_output_guard_blocked_is_never_stored(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={
        "model": "echo", "cache": SEMANTIC, "guardrails": GUARDS}))
    for stream in (False, True):
        status, _, result = await keel.ask("say globex", stream=stream)
        if stream:
            assert "error" in result[-1]
        else:
            assert status >= 400
    assert entries(keel) == 0
    _, headers, _ = await keel.ask("say hello")
    assert headers["x-keel-cache"] == "miss"
    _, headers, _ = await keel.ask("say hello")
    assert headers["x-keel-cache"] == "hit"  # a clean answer is stored, guarded again on a hit


async def test_the_trace_and_metrics_record_hits_and_savings(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": SEMANTIC,
                                             "pricing": {"input": 1.0, "output": 2.0}}))
    gateway = keel.gateway
    first = Trace()
    await gateway.complete({"model": "bot", "temperature": 0,
                            "messages": [{"role": "user", "content": QUESTION}]}, trace=first)
    trace = Trace()
    await gateway.complete({"model": "bot", "temperature": 0,
                            "messages": [{"role": "user", "content": PARAPHRASE}]}, trace=trace)
    (span,) = [s for s in trace.spans if s.name == "cache"]
    assert span.attrs["result"] == "hit" and span.attrs["kind"] == "semantic"
    assert 0.9 <= span.attrs["similarity"] < 1
    assert span.attrs["entry"] > 0
    usage = first.response["usage"]
    assert span.attrs["saved_usd"] == pytest.approx(
        (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6)
    assert QUESTION not in json.dumps([s.to_dict() for s in trace.spans])  # no text on spans
    assert not any(s.name == "provider" for s in trace.spans)
    (miss,) = [s for s in first.spans if s.name == "cache"]
    assert miss.attrs["result"] == "miss"
    async with keel.session.get(f"{keel.url}/metrics") as r:
        text = await r.text()
    assert 'keel_cache_requests_total{kind="semantic",model="bot",result="hit"} 1.0' in text
    assert 'keel_cache_requests_total{kind="none",model="bot",result="miss"} 1.0' in text
    assert 'keel_cache_saved_usd_total{model="bot"}' in text


class ScriptedVerifier:
    """Stands in for keel.orchestration.cache.verifier.Verifier: accepts what it is told to."""

    candidate_threshold = 0.5

    def __init__(self, accept: set[str]):
        self.accepted = accept
        self.calls = []

    def accept(self, query, cached_query, similarity, *, query_vector, cached_vector):
        self.calls.append((query, cached_query, similarity, query_vector.shape,
                           cached_vector.shape))
        ok = query in self.accepted
        return ok, 0.99 if ok else 0.01


async def test_the_verifier_decides_between_candidates_above_the_threshold(serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": {
        "embedder": "fake", "threshold": 0.8, "verify": False}}))
    (layer,) = [x for x in keel.gateway.routes["bot"].layers if x.name == "cache"]
    await layer.start()
    verifier = layer._verifier = ScriptedVerifier(accept={PARAPHRASE})
    await keel.ask(QUESTION)
    _, headers, result = await keel.ask(NEAR_MISS)  # cosine 0.83 passes 0.8; verifier refuses
    assert headers["x-keel-cache"] == "miss"
    assert answer(result) == NEAR_MISS
    _, headers, result = await keel.ask(PARAPHRASE)
    assert headers["x-keel-cache"] == "hit" and answer(result) == QUESTION
    query, cached, similarity, qshape, cshape = verifier.calls[-1]
    assert (query, cached) == (PARAPHRASE, QUESTION)
    assert similarity >= 0.8 and qshape == cshape == (64,)
    assert (NEAR_MISS, QUESTION) in [c[:2] for c in verifier.calls]
    _, headers, _ = await keel.ask("what is the weather in paris today")  # below threshold:
    assert headers["x-keel-cache"] == "miss"                              # never verified
    assert "what is the weather in paris today" not in [c[0] for c in verifier.calls]


async def test_the_shipped_verifier_on_minilm_serves_a_paraphrase_and_refuses_a_near_miss(
        serve, tmp_path):
    keel = await serve(config(tmp_path, bot={"model": "echo", "cache": {}}))  # the defaults
    await keel.ask("How do I delete my account?")
    _, headers, result = await keel.ask("How can I delete my account?")
    assert (headers["x-keel-cache"], headers["x-keel-cache-kind"]) == ("hit", "semantic")
    assert answer(result) == "How do I delete my account?"
    _, headers, result = await keel.ask("How do I delete my post?")
    assert headers["x-keel-cache"] == "miss"
    assert answer(result) == "How do I delete my post?"


async def test_verifying_another_embedders_vectors_is_a_config_error(tmp_path):
    from keel.errors import ConfigError

    gateway = Gateway(config(tmp_path, bot={"model": "echo", "cache": {"embedder": "fake"}}))
    (layer,) = [x for x in gateway.routes["bot"].layers if x.name == "cache"]
    with pytest.raises(ConfigError, match="verify: false"):
        await layer.start()
    await gateway.runtime.aclose()
