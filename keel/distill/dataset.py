"""`keel distill dataset`: a training set from what Keel recorded, or from a teacher run.

    examples_from_traces(store, TraceFilters(...))          recorded answers that pass filters
    await examples_from_teacher(gateway, route, samples)     a teacher route answers a prompt set
    load_prompts(store, "faq@3f2a" | "prompts.jsonl")        the prompt set, with its description
    build_set(store, name, examples, source=..., ...)        dedupe, scrub, split, store, record

An `Example` (`keel.distill.example`) is one conversation that ends in the answer to learn:
the prompt messages, the assistant message (its content and any `tool_calls`) and the
request's `tools`; it travels as an eval `Sample`. The trace filters live in
`keel.distill.from_traces`; this module is the pipeline and re-exports both.

An answer `max_tokens` cut off (`finish_reason: "length"`) is left out by default, or trimmed
to its last complete sentence, or kept (`keel.distill.cut_off`): a student learns to stop
where its targets stop.

`build_set` then, in this order:
1. drops exact duplicates (the canonical JSON of the messages and tools; the first kept),
2. drops near-duplicates: the last user message embedded with the embedded MiniLM (batched),
   an example dropped when its cosine with one already kept is ≥ `near_dup` (default 0.95),
3. scrubs PII with the guardrails' `pii` guard in every message, prompt and answer, tool-call
   arguments included: `redact` ([EMAIL]) or `pseudonymize` (<EMAIL_1>, the same value the same
   placeholder within a conversation), counting what it masked by entity,
4. splits by a hash of each example's content (80/10/10 by default): an example keeps its split
   when other examples come or go, so a later version never moves a test example into train,
5. stores each split as a version of the eval dataset `NAME-train`, `NAME-validation`,
   `NAME-test` (the same content is the same version), and records the set with its lineage
   (`keel.distill.lineage.create_set`): the filters and trace ids, or the teacher and prompts.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from keel.distill import lineage
from keel.distill.cut_off import (
    DEFAULT_CUT_OFF,
    apply_cut_off,
    check_cut_off,
    cut_off_meta,
    finish_reason,
)
from keel.distill.example import Example, assistant_message, clean_message
from keel.distill.from_traces import TraceFilters, examples_from_traces
from keel.errors import InvalidRequest, KeelError
from keel.evals.base import Sample
from keel.messages import last_user_text

if TYPE_CHECKING:
    from keel.store import Store

# The set's whole pipeline is this module's API: the example and the trace selection, kept in
# their own modules, are part of it.
__all__ = ["DEFAULT_NEAR_DUP", "DEFAULT_SPLIT", "PII_MODES", "SPLITS", "Example", "SetResult",
           "TraceFilters", "build_set", "dedupe_exact", "dedupe_near", "embed_minilm",
           "examples_from_teacher", "examples_from_traces", "load_prompts", "parse_split",
           "scrub", "split"]

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT = (80, 10, 10)
DEFAULT_NEAR_DUP = 0.95
PII_MODES = ("redact", "pseudonymize", "off")


# -- from a teacher --------------------------------------------------------------------------


def load_prompts(store: Store, spec: str) -> tuple[list[Sample], dict[str, Any]]:
    """A prompt set: a JSONL/CSV file (when `spec` is a file) or an eval dataset `NAME` or
    `NAME@VERSION`. Returns the samples and where they came from."""
    from pathlib import Path

    from keel.evals.dataset_store import get_dataset
    from keel.evals.datasets import dataset_version, load_samples

    if Path(spec).is_file():
        samples = load_samples(spec)
        return samples, {"file": spec, "version": dataset_version(samples)}
    name, _, version = spec.partition("@")
    meta, samples = get_dataset(store, name, version or None)
    return samples, {"dataset": meta["name"], "version": meta["version"]}


async def examples_from_teacher(gateway, route: str, samples: Sequence[Sample], *,
                                concurrency: int = 4, cut_off: str = DEFAULT_CUT_OFF,
                                progress: Callable[[int], None] | None = None,
                                ) -> tuple[list[Example], list[dict]]:
    """Each sample's prompt through `route` on an in-process Gateway (`Gateway.complete`, so
    the teacher's layers and tracing apply); its answer becomes the example's target. A
    sample's `metadata.tools` is sent as the request's tools; an answer `max_tokens` cut off is
    dropped, trimmed or kept as `cut_off` says. Returns the examples in prompt order and the
    failures ({sample, error})."""
    from keel.pipeline.trace import Trace

    gateway.route(route)  # an unknown route fails once, here, not once per prompt
    check_cut_off(cut_off)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(sample: Sample):
        body: dict[str, Any] = {"model": route, "messages": list(sample.input)}
        tools = (sample.metadata or {}).get("tools")
        if tools:
            body["tools"] = tools
        trace = Trace()
        async with gate:
            try:
                result = await gateway.complete(body, trace=trace)
            except KeelError as exc:
                return None, {"sample": sample.id, "error": exc.message}
            finally:
                if progress is not None:
                    progress(1)
        answer, reason = assistant_message(result), finish_reason(result)
        if answer is None:
            return None, {"sample": sample.id, "error": "the teacher gave no answer"}
        answer = apply_cut_off(answer, reason, cut_off)
        if answer is None:
            return None, {"sample": sample.id, "error": "max_tokens cut the answer off "
                          f"(cut_off {cut_off})"}
        return Example(prompt=[clean_message(m) for m in sample.input], answer=answer,
                       tools=tools or None, origin=sample.id,
                       meta={"trace_id": trace.id, "teacher": route,
                             **cut_off_meta(reason, cut_off)}), None

    outcomes = await asyncio.gather(*(one(s) for s in samples))
    return ([e for e, _ in outcomes if e is not None],
            [f for _, f in outcomes if f is not None])


# -- dedupe, scrub, split --------------------------------------------------------------------


def dedupe_exact(examples: list[Example]) -> tuple[list[Example], int]:
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = example.key()
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept, len(examples) - len(kept)


Embed = Callable[[list[str]], np.ndarray]


def embed_minilm(texts: list[str]) -> np.ndarray:
    """The embedded MiniLM, in batches of 64 (keel.embeddings.heads.embed_all)."""
    from keel.embeddings.heads import embed_all

    return embed_all(texts, batch=64)[0]


def dedupe_near(examples: list[Example], threshold: float,
                embed: Embed | None = None) -> tuple[list[Example], int]:
    """Drop an example when its last user message's cosine with an earlier kept one's is ≥
    `threshold`; the first of each group stays."""
    if not examples:
        return examples, 0
    vectors = np.asarray((embed or embed_minilm)(
        [last_user_text(e.prompt) for e in examples]), dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    kept = np.empty_like(vectors)  # the kept vectors, packed: a slice is a view, not a copy
    kept_rows: list[int] = []
    for i, vector in enumerate(vectors):
        if kept_rows and float(np.max(kept[:len(kept_rows)] @ vector)) >= threshold:
            continue
        kept[len(kept_rows)] = vector
        kept_rows.append(i)
    return [examples[i] for i in kept_rows], len(examples) - len(kept_rows)


def scrub(examples: list[Example], mode: str) -> dict[str, int]:
    """Mask PII in place in every message of every example (tool-call arguments too) with
    the guardrails' pii guard; returns the count masked per entity."""
    if mode not in PII_MODES:
        raise InvalidRequest(f"pii: expected one of {', '.join(PII_MODES)}, got {mode!r}",
                             param="pii")
    counts: dict[str, int] = {}
    if mode == "off":
        return counts
    from keel.guardrails.pii import PIIGuard, PIIOptions
    from keel.guardrails.vault import Tagged, Vault, mask

    guard = PIIGuard("pii", PIIOptions(action=mode))

    def clean(text: str, vault: Vault) -> str:
        found = guard.find(text)
        for m in found:
            counts[m.label] = counts.get(m.label, 0) + 1
        return mask(text, [Tagged(m, mode) for m in found], vault) if found else text

    for example in examples:
        vault = Vault()  # one per conversation: a value keeps its placeholder throughout
        example.prompt = [_scrub_message(m, clean, vault) for m in example.prompt]
        example.answer = _scrub_message(example.answer, clean, vault)
    return counts


def _scrub_message(message: dict, clean, vault) -> dict:
    out = dict(message)
    content = out.get("content")
    if isinstance(content, str):
        out["content"] = clean(content, vault)
    elif isinstance(content, list):
        out["content"] = [{**p, "text": clean(p["text"], vault)}
                          if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                          for p in content]
    if out.get("tool_calls"):
        out["tool_calls"] = [
            {**c, "function": {**c["function"],
                               "arguments": clean(c["function"].get("arguments") or "", vault)}}
            for c in out["tool_calls"]]
    return out


def parse_split(text: str | Sequence[int]) -> tuple[int, int, int]:
    """"80/10/10" (or three numbers) as percentages of train, validation, test."""
    try:
        parts = [int(p) for p in (text.split("/") if isinstance(text, str) else text)]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) != 100 or parts[0] == 0:
        raise InvalidRequest(f"split: expected train/validation/test percentages adding up "
                             f"to 100, train above 0 (e.g. 80/10/10), got {text!r}",
                             param="split")
    return parts[0], parts[1], parts[2]


def split(examples: list[Example], sizes: Sequence[int] = DEFAULT_SPLIT,
          ) -> dict[str, list[Example]]:
    """Each example to a split by the hash of its content; within a split, in hash order, so
    the same examples give the same versions whatever order they came in."""
    bounds = np.cumsum(sizes)
    out: dict[str, list[tuple[str, Example]]] = {s: [] for s in SPLITS}
    for example in examples:
        digest = hashlib.sha256(example.key().encode()).hexdigest()
        bucket = int(digest[:8], 16) % 100
        name = SPLITS[int(np.searchsorted(bounds, bucket, side="right"))]
        out[name].append((digest, example))
    return {name: [e for _, e in sorted(pairs, key=lambda p: p[0])]
            for name, pairs in out.items()}


# -- the whole pipeline ----------------------------------------------------------------------


@dataclass
class SetResult:
    set_id: str
    created: bool  # False: the newest set of this name already had these very versions
    splits: dict[str, dict]  # split -> {dataset, version, count}
    stats: dict[str, Any]
    examples: dict[str, list[Example]]


def build_set(store: Store, name: str, examples: list[Example], *, source: dict,
              near_dup: float | None = DEFAULT_NEAR_DUP, pii: str = "redact",
              sizes: Sequence[int] = DEFAULT_SPLIT, embed: Embed | None = None,
              stats: dict | None = None) -> SetResult:
    """Dedupe, scrub, split and store `examples` as the training set `name` (see above)."""
    from keel.evals.dataset_store import import_dataset

    if not examples:
        raise InvalidRequest("no examples to build a training set from")
    stats = {"found": len(examples), **(stats or {})}
    examples, stats["duplicates"] = dedupe_exact(examples)
    if near_dup is not None:
        if not 0 < near_dup <= 1:
            raise InvalidRequest(f"near_dup: expected a cosine in (0, 1], got {near_dup}",
                                 param="near_dup")
        examples, stats["near_duplicates"] = dedupe_near(examples, near_dup, embed)
    masked = scrub(examples, pii)
    stats["pii"] = pii
    stats["pii_scrubbed"] = masked
    stats["pii_scrubbed_total"] = sum(masked.values())
    parts = split(examples, sizes)
    stats["examples"] = sum(len(v) for v in parts.values())
    splits: dict[str, dict] = {}
    for part, chosen in parts.items():
        dataset = f"{name}-{part}"
        if not chosen:
            splits[part] = {"dataset": dataset, "version": None, "count": 0}
            continue
        _, version, _ = import_dataset(store, dataset, [e.to_sample() for e in chosen],
                                       source=f"distill set {name} ({part})")
        splits[part] = {"dataset": dataset, "version": version, "count": len(chosen)}
    previous = _newest_set(store, name)
    if previous is not None and previous["splits"] == splits and previous["source"] == source:
        return SetResult(previous["id"], False, splits, previous["stats"] or stats, parts)
    set_id = lineage.create_set(store, name=name, source=source, splits=splits, stats=stats)
    return SetResult(set_id, True, splits, stats, parts)


def _newest_set(store: Store, name: str) -> dict | None:
    try:
        row = lineage.get_set(store, name)
    except lineage.SetNotFound:
        return None
    return row if row["name"] == name else None
