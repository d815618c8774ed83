"""The `knowledge` layer: retrieve from a collection, ground the model in it, return citations.

For a model configured with `knowledge: {collection: support, top_k: 4}`, each request is
searched with its latest user turn (optionally rewritten into a standalone query using the
conversation), the passages go to the model as numbered sources with an instruction to answer
from them and cite them, and the response carries a `citations` list (and the trace a span).
When nothing relevant is found the model is told so, so it can say it does not know.

Rewriting the query is a call to the route's own model: it is a `knowledge.rewrite` span with
its usage, and its tokens are added to the response's `usage` (and so to the trace's tokens
and cost), as every call Keel makes on a request's behalf is. If it fails, the latest user
turn is searched as it is.
"""

from __future__ import annotations

import logging
import re
from typing import Any, AsyncIterator

from pydantic import Field

from keel.errors import KeelError
from keel.messages import content_text
from keel.messages import last_user_text as messages_last_user_text
from keel.pipeline import Context, LayerOptions, Next, Result
from keel.pipeline.layer import refuse_several_choices
from keel.providers.shapes import add_usage

log = logging.getLogger("keel.grounding")

INSTRUCTION = (
    "Answer the user's question using only the numbered sources below. Cite the sources you "
    "use with their numbers in square brackets, like [1]. If the sources do not contain the "
    "answer, say that you do not know."
)
USER_INSTRUCTION = "Using only the sources above, and citing them like [1], answer: "
NOTHING_FOUND = (
    "No relevant information was found in the knowledge base for the user's question. Say "
    "that you do not know; do not guess."
)
REWRITE = (
    "Rewrite the user's last message as one standalone search query, using the conversation "
    "for context. Reply with the query only."
)
_CITATION = re.compile(r"\[(\d{1,3})\]")


class KnowledgeOptions(LayerOptions):
    collection: str
    top_k: int = Field(4, ge=1, le=50)
    mode: str = Field("hybrid", pattern="^(hybrid|fulltext|vector)$")
    min_similarity: float = Field(
        0.3, ge=-1, le=1, description="a passage whose cosine similarity to the query is lower "
        "is not relevant; with none left the model is told nothing was found")
    filters: dict[str, Any] = Field(default_factory=dict)
    rewrite_query: bool = False
    max_source_chars: int = Field(1500, ge=100)
    placement: str = Field(
        "system", pattern="^(system|user)$", description="where the sources go: the system "
        "message (best for capable models) or the latest user message, right before the "
        "question (better for very small models)")


class KnowledgeLayer:
    name = "knowledge"
    Options = KnowledgeOptions

    def __init__(self, options: KnowledgeOptions, runtime) -> None:
        self.options = options
        self.runtime = runtime
        self._kb = None

    @property
    def kb(self):
        if self._kb is None:
            from keel.grounding.knowledge.knowledge import knowledge_base

            self._kb = knowledge_base(self.runtime)
        return self._kb

    async def start(self) -> None:
        names = {c["name"] for c in await self.kb.collections()}
        if self.options.collection not in names:
            log.warning("knowledge collection %r is empty or missing: run `keel ingest PATH "
                        "--collection %s`", self.options.collection, self.options.collection)

    def check(self, body: dict) -> None:
        refuse_several_choices(body, self.name, "attaches citations to one choice")

    async def __call__(self, ctx: Context, next: Next) -> Result:
        query = last_user_text(ctx.body.get("messages") or [])
        if not query:
            return await next(ctx)
        opts = self.options
        extra_usage: dict[str, int] = {}
        with ctx.trace.span("knowledge.retrieve") as span:
            if opts.rewrite_query and _user_turns(ctx.body["messages"]) > 1:
                query = await self._rewrite(ctx, extra_usage)
            span.attrs.update(collection=opts.collection, query=query)
            try:
                hits = await self.kb.search(opts.collection, query, top_k=opts.top_k,
                                            filters=opts.filters or None, mode=opts.mode)
                version = await self.kb.version(opts.collection)
            except KeelError as exc:
                # A missing collection must not take the whole model down: answer ungrounded,
                # say so on the trace.
                span.attrs["error"] = exc.message
                hits, version = [], None
            sources = [h for h in hits if _relevant(h, opts.min_similarity)]
            span.attrs.update(version=version, hits=[_brief(h) for h in hits],
                              used=[h.chunk_id for h in sources])
        # For the layers outside this one (the groundedness guard checks the answer against them).
        ctx.state["knowledge.sources"] = [h.text for h in sources]
        if version:
            ctx.response_headers["x-keel-knowledge-version"] = version
        ctx.body = {**ctx.body, "messages": _grounded(ctx.body["messages"], sources, opts)}
        result = await next(ctx)
        if ctx.stream:
            return _cite_stream(result, sources, extra_usage)
        content = "".join(
            (c.get("message") or {}).get("content") or "" for c in result.get("choices") or ())
        result["citations"] = citations(sources, content)
        if extra_usage:
            result["usage"] = add_usage(dict(result.get("usage") or {}), extra_usage)
        return result

    async def _rewrite(self, ctx: Context, usage: dict[str, int]) -> str:
        """The standalone query; the call's tokens are added to `usage`."""
        transcript = "\n".join(
            f"{m['role']}: {_text(m.get('content'))}" for m in ctx.body["messages"]
            if m.get("role") in ("user", "assistant"))
        body = {"model": ctx.route.upstream_model, "temperature": 0, "max_tokens": 64,
                "messages": [{"role": "system", "content": REWRITE},
                             {"role": "user", "content": transcript}]}
        with ctx.trace.span("knowledge.rewrite") as span:
            span.attrs["model"] = ctx.route.upstream_model
            try:
                answer = await ctx.route.provider.chat(body, ctx.route.upstream_model)
            except KeelError as exc:
                span.attrs["error"] = exc.message
                return last_user_text(ctx.body["messages"])
            spent = answer.get("usage") or {}
            span.attrs["usage"] = spent
            add_usage(usage, spent)
        text = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        return text.strip() or last_user_text(ctx.body["messages"])


def citations(sources: list, answer: str) -> list[dict]:
    """Every source given to the model, numbered as it saw them; `cited` when the answer
    refers to it as [n]."""
    cited = {int(n) for n in _CITATION.findall(answer or "")}
    return [
        {
            "index": i,
            "cited": i in cited,
            "chunk_id": h.chunk_id,
            "document_id": h.document_id,
            "title": h.title,
            "source": h.source,
            "location": h.location,
            "score": round(float(h.score), 6),
            "text": h.text,
        }
        for i, h in enumerate(sources, start=1)
    ]


async def _cite_stream(chunks: AsyncIterator[dict], sources: list,
                       extra_usage: dict[str, int]) -> AsyncIterator[dict]:
    parts: list[str] = []
    try:
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                parts.append((choice.get("delta") or {}).get("content") or "")
                if choice.get("finish_reason"):
                    chunk = {**chunk, "citations": citations(sources, "".join(parts))}
            if extra_usage and chunk.get("usage"):
                chunk = {**chunk, "usage": add_usage(dict(chunk["usage"]), extra_usage)}
            yield chunk
    finally:
        await chunks.aclose()


def _grounded(messages: list[dict], sources: list, opts: KnowledgeOptions) -> list[dict]:
    listing = "\n\n".join(_source_text(i, h, opts.max_source_chars)
                          for i, h in enumerate(sources, start=1))
    if opts.placement == "user":
        return _in_last_user_message(messages, listing)
    text = f"{INSTRUCTION}\n\nSources:\n\n{listing}" if sources else NOTHING_FOUND
    # One system message at the top: small models' chat templates honour only the first.
    if messages and messages[0].get("role") in ("system", "developer"):
        first = dict(messages[0])
        first["content"] = f"{_text(first.get('content'))}\n\n{text}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _in_last_user_message(messages: list[dict], listing: str) -> list[dict]:
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    question = _text(messages[last].get("content"))
    if listing:
        text = f"Sources:\n\n{listing}\n\n{USER_INSTRUCTION}{question}"
    else:
        text = f"{NOTHING_FOUND}\n\nQuestion: {question}"
    return [*messages[:last], {**messages[last], "content": text}, *messages[last + 1:]]


def _source_text(index: int, hit, limit: int) -> str:
    label = " — ".join(filter(None, [hit.title, hit.location]))
    body = hit.text if len(hit.text) <= limit else hit.text[:limit] + "…"
    return f"[{index}] ({label})\n{body}" if label else f"[{index}]\n{body}"


def _relevant(hit, min_similarity: float) -> bool:
    similarity = (getattr(hit, "scores", None) or {}).get("vector")
    return similarity is None or similarity >= min_similarity


def _brief(hit) -> dict:
    return {"chunk_id": hit.chunk_id, "score": round(float(hit.score), 6),
            "scores": getattr(hit, "scores", None), "source": hit.source}


def last_user_text(messages: list[dict]) -> str:
    return messages_last_user_text(messages, "\n").strip()


def _user_turns(messages: list[dict]) -> int:
    return sum(1 for m in messages if m.get("role") == "user")


def _text(content) -> str:
    return content_text(content, "\n")
