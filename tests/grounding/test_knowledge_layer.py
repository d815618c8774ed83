"""The knowledge layer: sources injected, citations returned, the no-answer path, streams."""

from __future__ import annotations

import pytest

from keel.config import EmbedderConfig, KeelConfig, ModelConfig, ProviderConfig
from keel.gateway import Gateway
from keel.grounding.knowledge.knowledge import knowledge_base
from keel.grounding.knowledge_layer import NOTHING_FOUND, citations, last_user_text
from keel.pipeline import Trace

DOCS = [
    {"id": "delete", "title": "Deleting your account",
     "text": "# Deleting your account\n\nTo delete your account open Settings, Account, "
             "Delete account, and confirm with your password."},
    {"id": "billing", "title": "Billing",
     "text": "# Billing\n\nInvoices are under Settings, Billing, Invoices as PDF files."},
]


class Recorder:
    """The model: remembers what it was sent, answers citing source 1."""

    name = "model"

    def __init__(self):
        self.bodies = []

    async def __call__(self, ctx, next):
        self.bodies.append(ctx.body)
        if ctx.stream:
            return self._stream()
        return {"choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": "Open Settings [1]."},
                             "finish_reason": "stop"}]}

    async def _stream(self):
        for text in ("Open ", "Settings [1]."):
            yield {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


@pytest.fixture
async def gateway(tmp_path):
    config = KeelConfig(
        state_dir=tmp_path,
        providers={"f": ProviderConfig(kind="fake")},
        embedders={"words": EmbedderConfig(kind="fake")},
        models={"bot": ModelConfig(provider="f", model="echo",
                                   knowledge={"collection": "faq", "top_k": 2,
                                              "min_similarity": 0.2})},
    )
    gw = Gateway(config)
    await knowledge_base(gw.runtime).add_documents("faq", DOCS, embedder="words")
    yield gw
    await gw.runtime.aclose()


def layered(gw):
    """The bot's chain with the model replaced by a Recorder, after the knowledge layer."""
    from keel.pipeline.assemble import build_chain

    recorder = Recorder()
    knowledge = next(layer for layer in gw.layers if layer.name == "knowledge")
    return build_chain([knowledge, recorder]), recorder


def ask(gw, text, **extra):
    body = {"model": "bot", "messages": [{"role": "system", "content": "You are Acme support."},
                                         {"role": "user", "content": text}], **extra}
    return gw.context_for(body, Trace())


async def test_sources_go_into_the_system_message_and_citations_come_back(gateway):
    chain, model = layered(gateway)
    ctx = ask(gateway, "how do I delete my account?")
    result = await chain(ctx)
    system = model.bodies[0]["messages"][0]["content"]
    assert system.startswith("You are Acme support.")
    assert "[1] (Deleting your account" in system and "Cite the sources" in system
    assert len(model.bodies[0]["messages"]) == 2  # no extra messages: sources ride in system
    cites = result["citations"]
    assert cites[0]["document_id"] == "delete" and cites[0]["cited"] is True
    assert all(c["index"] == i for i, c in enumerate(cites, start=1))
    span = next(s for s in ctx.trace.spans if s.name == "knowledge.retrieve")
    assert span.attrs["collection"] == "faq" and span.attrs["used"][0].startswith("delete#")
    assert ctx.response_headers["x-keel-knowledge-version"] == span.attrs["version"]


async def test_nothing_relevant_tells_the_model_to_say_it_does_not_know(gateway):
    chain, model = layered(gateway)
    result = await chain(ask(gateway, "zebra migration patterns in kenya"))
    assert NOTHING_FOUND in model.bodies[0]["messages"][0]["content"]
    assert result["citations"] == []


async def test_a_stream_gets_citations_on_its_finish_chunk(gateway):
    chain, _ = layered(gateway)
    chunks = [c async for c in await chain(ask(gateway, "delete my account", stream=True))]
    assert "citations" not in chunks[0]
    assert chunks[-1]["citations"][0]["cited"] is True


async def test_a_missing_collection_answers_ungrounded_and_says_so_on_the_trace(tmp_path):
    config = KeelConfig(state_dir=tmp_path, providers={"f": ProviderConfig(kind="fake")},
                        embedders={"words": EmbedderConfig(kind="fake")},
                        models={"bot": ModelConfig(provider="f", model="echo",
                                                   knowledge={"collection": "nope"})})
    gw = Gateway(config)
    ctx = ask(gw, "anything")
    result = await ctx.route.handler(ctx)
    assert result["citations"] == []
    span = next(s for s in ctx.trace.spans if s.name == "knowledge.retrieve")
    assert "nope" in span.attrs["error"]
    await gw.runtime.aclose()


def test_citations_mark_what_the_answer_cites():
    class H:
        def __init__(self, i):
            self.chunk_id, self.document_id, self.title = f"d{i}#0", f"d{i}", None
            self.source, self.location, self.score, self.text = None, "", 0.5, "t"

    cites = citations([H(1), H(2), H(3)], "See [3] and [1].")
    assert [c["cited"] for c in cites] == [True, False, True]


def test_last_user_text_reads_content_parts():
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": [{"type": "text", "text": "second"}]}]
    assert last_user_text(messages) == "second"


class Billed(Recorder):
    """The model, reporting its usage as a provider does (a usage chunk ends a stream)."""

    USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}

    async def __call__(self, ctx, next):
        result = await super().__call__(ctx, next)
        if ctx.stream:
            return self._billed_stream(result)
        return {**result, "usage": dict(self.USAGE)}

    async def _billed_stream(self, chunks):
        async for chunk in chunks:
            yield chunk
        yield {"choices": [], "usage": dict(self.USAGE)}


@pytest.mark.parametrize("stream", [False, True])
async def test_query_rewriting_is_a_span_and_its_tokens_are_counted(tmp_path, stream):
    config = KeelConfig(
        state_dir=tmp_path, providers={"f": ProviderConfig(kind="fake")},
        embedders={"words": EmbedderConfig(kind="fake")},
        models={"bot": ModelConfig(provider="f", model="echo",
                                   knowledge={"collection": "faq", "rewrite_query": True})},
    )
    gw = Gateway(config)
    await knowledge_base(gw.runtime).add_documents("faq", DOCS, embedder="words")
    from keel.pipeline.assemble import build_chain

    knowledge = next(layer for layer in gw.layers if layer.name == "knowledge")
    chain = build_chain([knowledge, Billed()])
    body = {"model": "bot", "stream": stream, "messages": [
        {"role": "user", "content": "I have an account."},
        {"role": "assistant", "content": "How can I help?"},
        {"role": "user", "content": "How do I delete it?"}]}
    ctx = gw.context_for(body, Trace())
    try:
        result = await chain(ctx)
        if stream:
            usage = [c async for c in result][-1]["usage"]
        else:
            usage = result["usage"]
    finally:
        await gw.runtime.aclose()
    span = next(s for s in ctx.trace.spans if s.name == "knowledge.rewrite")
    spent = span.attrs["usage"]
    assert spent["prompt_tokens"] > 0 and span.duration_ms is not None
    assert usage == {key: Billed.USAGE[key] + spent[key] for key in Billed.USAGE}
