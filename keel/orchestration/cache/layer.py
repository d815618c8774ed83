"""The `cache` layer: answer repeated and paraphrased questions from the store, not the model.

    models:
      support:
        cache: {mode: both, ttl_s: 86400, max_entries: 100000, reuse: deterministic}

It runs right after `guardrails` (config.py puts it there): input guards see every request,
hits included, and output guards see every answer, hits included; an answer is stored only from
`ctx.finalizers`, which run once the whole answer reached the client and every layer passed it,
so an answer an output guard blocked (or a stream the client left) is never stored.

Lookup, unless the request says `x-keel-cache: off` (skip) or `refresh` (answer anew, store it):
1. exact: the canonical hash of everything that changes the answer (keys.py);
2. semantic: the embedding of the last user message, compared by cosine with the entries of its
   namespace (everything else, hashed); the best candidate at or above `threshold` must then be
   accepted by the verifier (verifier.py), which rejects near-misses cosine cannot tell apart.

Grounded routes put the knowledge collection's version in both hashes: new documents change it,
and old answers stop matching. Errors, tool calls, several choices and answers cut short by a
content filter are never stored. Hits report zero usage (no tokens were spent); what the answer
cost when it was generated is on the `cache` span as `saved_usd`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field

from keel.errors import InvalidRequest
from keel.orchestration.cache import keys
from keel.orchestration.cache.store import CacheStore, Entry
from keel.pipeline import Context, LayerOptions, Next, Result
from keel.providers import shapes

log = logging.getLogger("keel.cache")

HEADER = "x-keel-cache"
KIND_HEADER = "x-keel-cache-kind"
SIMILARITY_HEADER = "x-keel-cache-similarity"
ENTRY_HEADER = "x-keel-cache-entry"
CONTROLS = ("off", "refresh")
# Without verifier weights (or with `verify: false`), cosine alone decides; this is where
# MiniLM's cosine keeps precision high at the cost of recall (see docs/cache.md).
FALLBACK_THRESHOLD = 0.95
CACHEABLE_FINISH = ("stop", "length")
KNOWLEDGE_VERSION_TTL_S = 1.0
CANDIDATES = 3  # nearest entries tried in turn (one deleted elsewhere must not hide the next)
_PIECES = re.compile(r"\S+\s*|\s+")


class CacheOptions(LayerOptions):
    mode: Literal["exact", "semantic", "both"] = "both"
    ttl_s: float = Field(86400.0, gt=0, description="seconds an entry may be served")
    max_entries: int | None = Field(
        None, gt=0, description="per model; beyond it the least recently used entries go")
    threshold: float | None = Field(
        None, ge=-1, le=1, description="cosine a candidate must reach; default: the verifier's")
    verify: bool = True
    reuse: Literal["deterministic", "always"] = Field(
        "deterministic", description="deterministic: only requests with temperature 0 or a seed")
    embedder: str = "minilm"
    refresh_interval_s: float = Field(
        1.0, ge=0, description="how often a namespace's index looks for other processes' entries")


class CacheLayer:
    name = "cache"
    Options = CacheOptions

    def __init__(self, options: CacheOptions, runtime=None) -> None:
        self.options = options
        self.runtime = runtime
        self._store: CacheStore | None = None
        self._embedder = None
        self._verifier = None
        self._threshold = options.threshold if options.threshold is not None else FALLBACK_THRESHOLD
        self._versions: dict[str, tuple[float, str | None]] = {}
        self._requests = None
        self._saved = None
        # Entries being written, by exact key and by namespace: the store's writer thread
        # writes them off the response path (the answer is not kept waiting for the database),
        # and a lookup waits for those of its own key or namespace still in flight, so this
        # process reads its own writes at once while unrelated requests never wait.
        self._writing: dict[str, set[asyncio.Future]] = {}

    @property
    def semantic(self) -> bool:
        return self.options.mode in ("semantic", "both")

    async def start(self) -> None:
        if self.semantic:
            self._embedder = await self.runtime.embedder(self.options.embedder)
            if self.options.verify:
                self._verifier = _load_verifier(self._embedder.fingerprint)
                if self._verifier is not None and self.options.threshold is None:
                    self._threshold = self._verifier.candidate_threshold

    async def aclose(self) -> None:
        """Write what is queued (the gateway closes the store next)."""
        if self._store is not None:
            await asyncio.to_thread(self._store.close)

    @property
    def store(self) -> CacheStore:
        if self._store is None:
            self._store = CacheStore(self.runtime.store, self.options.refresh_interval_s)
        return self._store

    async def __call__(self, ctx: Context, next: Next) -> Result:
        span = _own_span(ctx)
        control = _control(ctx)
        model = ctx.route.name
        skip = self._skip_reason(ctx.body)
        if skip is not None:
            span.attrs.update(result="skip", reason=skip)
            self._count(model, "skip", "none")
            return await next(ctx)
        if control == "off":
            span.attrs["result"] = "off"
            ctx.response_headers[HEADER] = "off"
            self._count(model, "off", "none")
            return await next(ctx)
        lookup = await self._prepare(ctx)
        if control != "refresh":
            hit = await self._lookup(lookup)
            if hit is not None:
                entry, kind, similarity = hit
                self._record_hit(ctx, span, entry, kind, similarity)
                if ctx.stream:
                    return _replay_stream(entry.response, ctx.body)
                return _replay(entry.response)
        await self._embed(lookup)  # stored with the answer
        span.attrs.update(result="miss", refresh=control == "refresh",
                          namespace=lookup["namespace"])
        ctx.response_headers[HEADER] = "miss"
        self._count(model, "miss", "none")
        result = await next(ctx)
        if ctx.stream:
            return self._recording(ctx, lookup, result)
        if _storable(result):
            ctx.finalizers.append(lambda: self._commit(lookup, result))
        return result

    # -- lookup -------------------------------------------------------------------------------

    def _skip_reason(self, body: dict) -> str | None:
        n = body.get("n")
        if isinstance(n, int) and n > 1:
            return "n>1"
        if (self.options.reuse == "deterministic" and body.get("seed") is None
                and body.get("temperature") != 0):
            return "not deterministic (temperature is not 0 and no seed)"
        return None

    async def _prepare(self, ctx: Context) -> dict[str, Any]:
        route, body = ctx.route, ctx.body
        if self.semantic and self._embedder is None:
            await self.start()  # a gateway used as a library may not have started its layers
        version = await self._knowledge_version(route.name)
        lookup = {
            "model": route.name,
            "key": keys.exact_key(route.name, route.upstream_model, body, version),
            "namespace": keys.namespace(route.name, route.upstream_model, body, version),
            "query": keys.query_text(body) if self.semantic else None,
            "vector": None,
        }
        return lookup

    async def _embed(self, lookup: dict) -> None:
        """The last user message's vector, made once: after an exact hit it is not needed."""
        if lookup["query"] is not None and lookup["vector"] is None:
            embeddings = await self._embedder.embed([lookup["query"]])
            lookup["vector"] = embeddings.vectors[0]

    async def _lookup(self, lookup: dict) -> tuple[Entry, str, float | None] | None:
        pending = self._pending(lookup)
        if pending:
            await asyncio.wait(pending)
        if self.options.mode in ("exact", "both"):
            store = self.store
            known = store.knows(lookup["model"], lookup["key"])
            if known is None:  # the key list is due a look at the store (other processes)
                await asyncio.to_thread(store.refresh_keys)
                known = store.knows(lookup["model"], lookup["key"])
            if known is not False:  # a miss known from memory costs no query
                entry = await asyncio.to_thread(store.exact, lookup["model"], lookup["key"])
                if entry is not None:
                    return entry, "exact", None
        await self._embed(lookup)
        if lookup["vector"] is None:
            return None
        return await asyncio.to_thread(self._semantic, lookup)

    def _semantic(self, lookup: dict) -> tuple[Entry, str, float] | None:
        fingerprint = self._embedder.fingerprint
        found = self.store.candidates(lookup["namespace"], fingerprint, lookup["vector"],
                                      CANDIDATES)
        for entry_id, similarity, cached_vector in found:
            if similarity < self._threshold:
                break
            entry = self.store.get(entry_id)
            if entry is None:  # deleted or expired since the index loaded it
                self.store.forget(lookup["namespace"], fingerprint, entry_id)
                continue
            if entry.query is None or not self._accept(lookup, entry, similarity, cached_vector):
                continue
            return entry, "semantic", similarity
        return None

    def _accept(self, lookup, entry: Entry, similarity: float, cached_vector) -> bool:
        if self._verifier is None:
            return similarity >= self._threshold
        accepted, _score = self._verifier.accept(
            lookup["query"], entry.query, similarity,
            query_vector=lookup["vector"], cached_vector=cached_vector)
        return bool(accepted)

    async def _knowledge_version(self, model: str) -> str | None:
        """The version of the route's knowledge collection (the cache runs before the knowledge
        layer, so it reads it from the store), cached for about a second."""
        collection = self._collection(model)
        if collection is None:
            return None
        cached = self._versions.get(collection)
        now = time.monotonic()
        if cached is not None and now - cached[0] < KNOWLEDGE_VERSION_TTL_S:
            return cached[1]
        version = await asyncio.to_thread(self._read_version, collection)
        self._versions[collection] = (now, version)
        return version

    def _collection(self, model: str) -> str | None:
        config = getattr(self.runtime, "config", None)
        spec = config.models.get(model) if config is not None else None
        knowledge = getattr(spec, "knowledge", None) or {}
        return knowledge.get("collection")

    def _read_version(self, collection: str) -> str:
        from keel.store.models import knowledge_collections as kc

        with self.runtime.store.engine.connect() as conn:
            version = conn.execute(
                sa.select(kc.c.version).where(kc.c.name == collection)).scalar()
        return version or ""  # no such collection yet: its own version

    # -- hits and misses ------------------------------------------------------------------------

    def _record_hit(self, ctx: Context, span, entry: Entry, kind: str,
                    similarity: float | None) -> None:
        model = ctx.route.name
        headers = ctx.response_headers
        headers[HEADER] = "hit"
        headers[KIND_HEADER] = kind
        headers[ENTRY_HEADER] = str(entry.id)
        span.attrs.update(result="hit", kind=kind, entry=entry.id, namespace=entry.namespace)
        if similarity is not None:
            headers[SIMILARITY_HEADER] = f"{similarity:.4f}"
            span.attrs["similarity"] = round(similarity, 4)
        saved = None
        pricing = ctx.route.pricing
        if pricing is not None and entry.usage:
            saved = pricing.cost(entry.usage.get("prompt_tokens"),
                                 entry.usage.get("completion_tokens"))
            span.attrs["saved_usd"] = saved
        self._count(model, "hit", kind, saved)
        ctx.finalizers.append(lambda: self._count_hit(entry.id))

    async def _recording(self, ctx: Context, lookup: dict, chunks: AsyncIterator[dict]):
        """Pass a stream through, keeping its text; store it once the stream ended whole."""
        parts: list[str] = []
        finish = None
        storable = True
        usage = None
        first: dict | None = None
        async for chunk in chunks:
            first = first or chunk
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    storable = False
                delta = choice.get("delta") or {}
                if delta.get("tool_calls") or delta.get("function_call"):
                    storable = False
                if delta.get("content"):
                    parts.append(delta["content"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            yield chunk
        if storable and first is not None and finish in CACHEABLE_FINISH:
            response = shapes.completion(
                first.get("model") or ctx.route.upstream_model, "".join(parts),
                finish_reason=finish, usage=usage,
                system_fingerprint=first.get("system_fingerprint"))
            ctx.finalizers.append(lambda: self._commit(lookup, response))

    async def _commit(self, lookup: dict, result: dict) -> None:
        """Queue the entry for the store's writer and return: the response does not wait."""
        response = {k: v for k, v in result.items() if k not in ("id", "created", "usage")}
        options = self.options
        future = asyncio.wrap_future(self.store.submit(
            model=lookup["model"], namespace=lookup["namespace"], key_hash=lookup["key"],
            query=lookup["query"],
            embedder=self._embedder.fingerprint if lookup["vector"] is not None else None,
            vector=lookup["vector"], response=response, usage=result.get("usage"),
            ttl_s=options.ttl_s, max_entries=options.max_entries))
        for mark in (lookup["key"], lookup["namespace"]):
            self._writing.setdefault(mark, set()).add(future)
        future.add_done_callback(lambda done: self._written(lookup, done))

    async def _count_hit(self, entry_id: int) -> None:
        self.store.submit_hit(entry_id)  # the writer thread counts it; nobody waits

    def _pending(self, lookup: dict) -> set:
        found = set(self._writing.get(lookup["key"], ()))
        if self.semantic:
            found |= self._writing.get(lookup["namespace"], set())
        return found

    def _written(self, lookup: dict, future: asyncio.Future) -> None:
        for mark in (lookup["key"], lookup["namespace"]):
            waiting = self._writing.get(mark)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._writing[mark]
        if not future.cancelled() and future.exception() is not None:
            log.error("storing a cache entry failed: %s", future.exception())

    # -- metrics --------------------------------------------------------------------------------

    def _count(self, model: str, result: str, kind: str, saved: float | None = None) -> None:
        try:
            if self._requests is None:
                if self.runtime is None or not self.runtime.config.metrics.enabled:
                    return
                metrics = self.runtime.metrics
                self._requests = metrics.counter(
                    "keel_cache_requests_total",
                    "Cache lookups by model, result (hit, miss, off, skip) and kind of hit",
                    ["model", "result", "kind"])
                self._saved = metrics.counter(
                    "keel_cache_saved_usd_total",
                    "What cache hits would have cost, from the model's pricing", ["model"])
            self._requests.labels(model, result, kind).inc()
            if saved:
                self._saved.labels(model).inc(saved)
        except Exception:  # a metric must not fail a request
            log.exception("counting a cache lookup failed")


def _load_verifier(fingerprint: str):
    """The shipped verifier; None (cosine alone, at FALLBACK_THRESHOLD) when its weights are
    missing. Weights trained on another embedder's vectors are a config error."""
    from keel.errors import ConfigError
    from keel.orchestration.cache.verifier import load_verifier

    try:
        verifier = load_verifier()
    except ConfigError as exc:
        log.warning("semantic cache without its verifier (%s): cosine alone decides, at %.2f",
                    exc.message, FALLBACK_THRESHOLD)
        return None
    try:
        verifier.check_embedder(fingerprint)
    except ConfigError as exc:
        raise ConfigError(f"cache: {exc.message} (or set `verify: false`: cosine alone)") from None
    return verifier


def _control(ctx: Context) -> str | None:
    value = ctx.headers.get(HEADER) if ctx.headers else None
    if value is None:
        return None
    value = value.strip().lower()
    if value not in CONTROLS:
        raise InvalidRequest(f"{HEADER}: expected one of {', '.join(CONTROLS)}, got {value!r}",
                             code="invalid_cache_control")
    return value


def _own_span(ctx: Context):
    # build_chain opened a span named after this layer just before calling it.
    spans = ctx.trace.spans
    if spans and spans[-1].name == CacheLayer.name:
        return spans[-1]
    span = ctx.trace.span(CacheLayer.name)
    span.end()
    return span


def _storable(result: dict) -> bool:
    choices = result.get("choices") or []
    if len(choices) != 1:
        return False
    choice = choices[0]
    message = choice.get("message") or {}
    return (choice.get("finish_reason") in CACHEABLE_FINISH and not message.get("tool_calls")
            and not message.get("function_call") and isinstance(message.get("content"), str))


def _zero_usage() -> dict:
    return shapes.usage(0, 0)


def _replay(response: dict) -> dict:
    return {"id": shapes.new_id(), "object": shapes.COMPLETION, "created": int(time.time()),
            **{k: v for k, v in response.items() if k not in ("id", "object", "created")},
            "usage": _zero_usage()}


async def _replay_stream(response: dict, body: dict) -> AsyncIterator[dict]:
    """The cached answer as chunks: the role, the text in word-sized pieces, the finish reason,
    then the usage (sse.py sends it only when `stream_options.include_usage` asked for it)."""
    cid, created = shapes.new_id(), int(time.time())
    model = response.get("model") or body.get("model") or ""
    fp = response.get("system_fingerprint")
    choice = (response.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    yield shapes.chunk(cid, created, model, {"role": "assistant", "content": ""},
                       system_fingerprint=fp)
    for piece in _PIECES.findall(text):
        yield shapes.chunk(cid, created, model, {"content": piece}, system_fingerprint=fp)
    yield shapes.chunk(cid, created, model, {}, finish_reason=choice.get("finish_reason") or "stop",
                       system_fingerprint=fp)
    yield shapes.usage_chunk(cid, created, model, _zero_usage(), system_fingerprint=fp)
