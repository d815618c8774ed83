"""`keel distill dataset`: a training set from what Keel recorded, or from a teacher run.

    examples_from_traces(store, TraceFilters(...))          recorded answers that pass filters
    await examples_from_teacher(gateway, route, samples)     a teacher route answers a prompt set
    load_prompts(store, "faq@3f2a" | "prompts.jsonl")        the prompt set, with its description
    build_set(store, name, examples, source=..., ...)        dedupe, scrub, split, store, record

An `Example` is one conversation that ends in the answer to learn: the prompt messages, the
assistant message (its content and any `tool_calls`) and the request's `tools`. It travels as
an eval `Sample`: `input` the prompt, `ideal` the answer's text, `metadata.answer` the whole
assistant message and `metadata.tools` the tools, so `keel eval` runs on a split unchanged and
`keel.distill.export` rebuilds the fine-tuning line from it.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import sqlalchemy as sa

from keel.distill import lineage
from keel.distill.cut_off import (
    CUT_OFF_MODES,
    DEFAULT_CUT_OFF,
    apply_cut_off,
    finish_reason,
)
from keel.errors import InvalidRequest, KeelError
from keel.evals.base import Sample
from keel.messages import content_text, last_user_text
from keel.store.models import eval_results, traces

if TYPE_CHECKING:
    from keel.store import Store

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT = (80, 10, 10)
DEFAULT_NEAR_DUP = 0.95
PII_MODES = ("redact", "pseudonymize", "off")
# The keys a chat message may carry into a training line; the rest (refusal: null,
# annotations, audio…) is response decoration that fine-tuning APIs refuse.
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "weight")


@dataclass
class Example:
    prompt: list[dict]  # the messages up to the answer
    answer: dict  # the assistant message to learn: content and/or tool_calls
    tools: list[dict] | None = None
    origin: str = ""  # the trace id, or the prompt sample's id
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> list[dict]:
        return [*self.prompt, self.answer]

    def key(self) -> str:
        """The canonical JSON of what is learnt (messages and tools): exact-duplicate key."""
        return _canonical({"messages": self.messages, "tools": self.tools}).decode()

    def to_sample(self) -> Sample:
        metadata = {"answer": self.answer, **self.meta}
        if self.tools:
            metadata["tools"] = self.tools
        if self.origin:
            metadata["origin"] = self.origin
        text = self.answer.get("content")
        return Sample(id="", input=self.prompt, ideal=content_text(text) if text else None,
                      metadata=metadata)

    @classmethod
    def from_sample(cls, sample: Sample) -> Example:
        meta = dict(sample.metadata or {})
        answer = meta.pop("answer", None)
        if answer is None:  # a plain eval dataset: its ideal is the answer
            if not sample.ideals():
                raise InvalidRequest(f"sample {sample.id!r} has no answer (metadata.answer or "
                                     "ideal) to train on")
            answer = {"role": "assistant", "content": sample.ideals()[0]}
        return cls(prompt=list(sample.input), answer=answer, tools=meta.pop("tools", None),
                   origin=meta.pop("origin", sample.id), meta=meta)


# -- from traces -----------------------------------------------------------------------------


@dataclass
class TraceFilters:
    """Which recorded answers become examples. `model` matches the route (the public model
    name) or the upstream model that answered; `since`/`until` are epoch seconds (from, up to
    but not including); `feedback` and `min_score` read each trace's latest feedback (as
    `keel eval dataset from-traces` does); `min_grade` keeps traces an eval run graded (the
    `eval_results` row holding the trace id) with a mean grade ≥ it, or the named `grader`'s;
    `eval_run` keeps only the traces that eval run's cells made (a teacher run over a prompt
    set, so best-of-n sampling and its grades become the training set), and `min_grade` then
    reads that run's grades; with it, `best_per_sample` keeps one answer per sample of the run:
    the best graded, a complete one before one `max_tokens` cut off, the shortest of equals;
    `cut_off` says what becomes of answers `max_tokens` cut off (`keel.distill.cut_off`: drop,
    trim or keep); `exclude_guarded` drops traces where a guard did anything but pass."""

    model: str | None = None
    since: float | None = None
    until: float | None = None
    feedback: str | None = None
    min_score: float | None = None
    min_grade: float | None = None
    grader: str | None = None
    eval_run: str | None = None
    best_per_sample: bool = False
    cut_off: str = DEFAULT_CUT_OFF
    exclude_guarded: bool = False
    limit: int = 100_000

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if v is not None and v is not False and k != "limit"}


def examples_from_traces(store: Store, filters: TraceFilters) -> list[Example]:
    """Successful recorded answers passing `filters`, oldest first."""
    from keel.ops.feedback import traces_for_dataset

    if filters.feedback not in (None, "up", "down", "any"):
        raise InvalidRequest(f"feedback: expected up, down or any, got {filters.feedback!r}",
                             param="feedback")
    found = traces_for_dataset(store, feedback=filters.feedback, since=filters.since,
                               min_score=filters.min_score, limit=filters.limit)
    if filters.best_per_sample and filters.eval_run is None:
        raise InvalidRequest("best_per_sample needs eval_run: the samples are that run's",
                             param="best_per_sample")
    _check_cut_off(filters.cut_off)
    made: dict[str, str] = {}
    run_id = None
    if filters.eval_run is not None:
        from keel.evals.runs import get_run

        # resolved once: a prefix, and refused when it names no run (not an empty set)
        run_id = get_run(store, filters.eval_run)["id"]
        made = _run_traces(store, run_id)
        found = [t for t in found if t["id"] in made]
    details = _trace_details(store, [t["id"] for t in found])
    graded = filters.min_grade is not None or filters.best_per_sample
    grades = _grades(store, list(details), filters.grader, run_id) if graded else {}
    examples = []
    for entry in reversed(found):  # oldest first: the first of duplicates is the oldest
        detail = details.get(entry["id"])
        if detail is None or not _passes(entry, detail, grades, filters):
            continue
        example = _example_from_trace(entry, filters.cut_off)
        if example is not None:
            if entry["id"] in grades:
                example.meta["grade"] = round(grades[entry["id"]], 4)
            examples.append(example)
    if filters.best_per_sample:
        examples = _best_per_sample(examples, made)
    return examples


def _best_per_sample(examples: list[Example], samples: dict[str, str]) -> list[Example]:
    """One example per eval sample: the highest grade, then a complete answer before a trimmed
    one, then the shortest answer (of two right answers the shorter one is less likely padded),
    then the oldest; in the order the kept ones were made."""
    best: dict[str, tuple[int, Example]] = {}
    for index, example in enumerate(examples):
        sample = samples[example.origin]
        held = best.get(sample)
        if held is None or _rank(example) > _rank(held[1]):
            best[sample] = (index, example)
    return [example for _, example in sorted(best.values(), key=lambda pair: pair[0])]


def _rank(example: Example) -> tuple[float, bool, int]:
    answer = example.answer
    size = len(content_text(answer.get("content")) or "") + len(
        orjson.dumps(answer.get("tool_calls") or []))
    return (example.meta.get("grade", -1.0), not example.meta.get("cut_off"), -size)


def _trace_details(store: Store, ids: list[str]) -> dict[str, dict]:
    # The columns traces_for_dataset leaves out: who answered, how it ended, what guards did.
    out: dict[str, dict] = {}
    columns = (traces.c.id, traces.c.upstream_model, traces.c.status, traces.c.spans)
    with store.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            query = sa.select(*columns).where(traces.c.id.in_(ids[start:start + 500]))
            for row in conn.execute(query).mappings():
                out[row["id"]] = dict(row)
    return out


def _run_traces(store: Store, run_id: str) -> dict[str, str]:
    """trace id -> sample id, of the traces eval run `run_id` made."""
    query = sa.select(eval_results.c.trace_id, eval_results.c.sample_id).where(
        eval_results.c.run_id == run_id, eval_results.c.trace_id.is_not(None))
    with store.engine.connect() as conn:
        return {trace_id: sample_id for trace_id, sample_id in conn.execute(query)}


def _grades(store: Store, ids: list[str], grader: str | None,
            run_id: str | None = None) -> dict[str, float]:
    """trace id -> its eval grade (the named grader's score, or the mean of all), the latest
    run's when several graded it (only run `run_id`'s when given)."""
    out: dict[str, float] = {}
    query_base = sa.select(eval_results.c.trace_id, eval_results.c.grades).order_by(
        eval_results.c.created_at, eval_results.c.id)
    if run_id is not None:
        query_base = query_base.where(eval_results.c.run_id == run_id)
    with store.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            query = query_base.where(eval_results.c.trace_id.in_(ids[start:start + 500]))
            for row in conn.execute(query).mappings():
                score = _grade_score(row["grades"] or {}, grader)
                if score is not None:
                    out[row["trace_id"]] = score
    return out


def _grade_score(grades: dict, grader: str | None) -> float | None:
    scores = {name: g.get("score") for name, g in grades.items() if isinstance(g, dict)}
    scores = {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}
    if grader is not None:
        return scores.get(grader)
    return sum(scores.values()) / len(scores) if scores else None


def _passes(entry: dict, detail: dict, grades: dict, filters: TraceFilters) -> bool:
    if detail["status"] != 200:
        return False
    if filters.model is not None and filters.model not in (entry["model"],
                                                           detail["upstream_model"]):
        return False
    if filters.until is not None and entry["created_at"] >= filters.until:
        return False
    if filters.min_grade is not None and grades.get(entry["id"], -1.0) < filters.min_grade:
        return False
    return not (filters.exclude_guarded and guard_actions(detail["spans"]))


def guard_actions(spans: list[dict] | None) -> list[str]:
    """`guard.<name>=<action>` for each guard span whose verdict was not `pass` (the guardrails
    layer records one `guard.<name>` span per verdict, its action in `attrs.action`)."""
    acted = []
    for span in spans or ():
        name, attrs = span.get("name") or "", span.get("attrs") or {}
        if name.startswith("guard.") and attrs.get("action") not in (None, "pass"):
            acted.append(f"{name}={attrs['action']}")
    return acted


def _example_from_trace(entry: dict, cut_off: str) -> Example | None:
    request = entry["request"]
    answer = _learnable_answer(entry.get("response"), cut_off)
    if answer is None:
        return None
    meta = {"trace_id": entry["id"], "model": entry.get("model"), **_cut_off_meta(
        entry.get("response"), cut_off)}
    latest = entry.get("feedback") or {}
    if latest.get("score") is not None:
        meta["feedback_score"] = latest["score"]
    return Example(prompt=[clean_message(m) for m in request["messages"]], answer=answer,
                   tools=request.get("tools") or None, origin=entry["id"],
                   meta={k: v for k, v in meta.items() if v is not None})


def _check_cut_off(mode: str) -> None:
    if mode not in CUT_OFF_MODES:
        raise InvalidRequest(f"cut_off: expected one of {', '.join(CUT_OFF_MODES)}, got "
                             f"{mode!r}", param="cut_off")


def _learnable_answer(response: Any, cut_off: str) -> dict | None:
    answer = _assistant_message(response)
    return None if answer is None else apply_cut_off(answer, finish_reason(response), cut_off)


def _cut_off_meta(response: Any, cut_off: str) -> dict:
    # recorded so a trimmed or kept cut-off target can be told apart in the set (and ranked)
    return {"cut_off": cut_off} if finish_reason(response) == "length" else {}


def _assistant_message(response: Any) -> dict | None:
    """The answer of a chat.completion (or of a streamed trace's assembled `content`)."""
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if not isinstance(message, dict):
            return None
        message = clean_message({**message, "role": "assistant"})
    elif isinstance(response.get("content"), str):
        message = {"role": "assistant", "content": response["content"]}
    else:
        return None
    if not message.get("content") and not message.get("tool_calls"):
        return None
    return message


def clean_message(message: dict) -> dict:
    """A message as a training line holds it: the chat keys only, no nulls, tool calls as
    {id, type, function: {name, arguments}}."""
    out = {k: message[k] for k in MESSAGE_KEYS if message.get(k) is not None}
    if out.get("tool_calls"):
        out["tool_calls"] = [
            {"id": c.get("id"), "type": c.get("type", "function"),
             "function": {"name": (c.get("function") or {}).get("name"),
                          "arguments": (c.get("function") or {}).get("arguments", "{}")}}
            for c in out["tool_calls"] if isinstance(c, dict)]
    elif "tool_calls" in out:
        del out["tool_calls"]
    return out


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
    _check_cut_off(cut_off)
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
        if _assistant_message(result) is None:
            return None, {"sample": sample.id, "error": "the teacher gave no answer"}
        answer = _learnable_answer(result, cut_off)
        if answer is None:
            return None, {"sample": sample.id, "error": "max_tokens cut the answer off "
                          f"(cut_off {cut_off})"}
        return Example(prompt=[clean_message(m) for m in sample.input], answer=answer,
                       tools=tools or None, origin=sample.id,
                       meta={"trace_id": trace.id, "teacher": route,
                             **_cut_off_meta(result, cut_off)}), None

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


def _canonical(value) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
