"""The `guardrails` layer: runs a model's input and output guards and applies their verdicts.

    models:
      bot:
        guardrails:
          input:  [{pii: {action: pseudonymize}}, {prompt_injection: {threshold: 0.8}}]
          output: [{json_schema: {action: repair, attempts: 2}}]
          concurrency: true

Input stage, before the model: detectors look at every user message (each text part on its
own), judges at the last one (or all of them, joined, when the guard says `messages = "all"`).
Independent input guards run concurrently; `rewrite` guards, which change the request, run
after them, one by one, on the request as the others left it. Their actions are then applied
in the configured order. Output stage, on the answer: the same actions, plus `repair` (ask the
model again with the failure explained). Streams: detectors mask and may block as the text
passes (`stream.py`); judges run when the stream has ended and can only flag, since streamed
tokens cannot be taken back.

Every verdict is a `guard.<name>` span (labels and counts, never the matched text), a count in
`keel_guardrail_verdicts_total`, and an entry of the `x-keel-guardrails` response header.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from keel.errors import GuardrailBlocked, GuardrailError, GuardrailRepairFailed
from keel.guardrails.base import GuardContext, Match, Stage, Verdict
from keel.guardrails.registry import GuardSpec, build_guard
from keel.guardrails.stream import StreamMasker, StreamRestorer
from keel.guardrails.vault import Tagged, Vault, mask
from keel.pipeline import Context, LayerOptions, Next, Result
from keel.pipeline.layer import refuse_several_choices
from keel.providers import shapes
from keel.providers.shapes import add_usage

log = logging.getLogger("keel.guardrails")

HEADER = "x-keel-guardrails"
NOTICE_HEADER = "x-keel-guardrails-notice"
MASKING = ("redact", "pseudonymize")
REPAIR_PROMPT = (
    "Your previous answer was rejected by the {guard} check: {problem}. Reply again with a "
    "corrected answer, and nothing else."
)


class GuardrailsOptions(LayerOptions):
    input: list[GuardSpec] = []
    output: list[GuardSpec] = []
    concurrency: bool = True  # independent input guards run concurrently


@dataclass(slots=True)
class _Slot:
    """A piece of user text a guard looks at: a message's string content or one text part."""

    message: int
    part: int | None
    text: str


@dataclass(slots=True)
class _Outcome:
    guard: Any
    verdict: Verdict
    per_slot: list[tuple[_Slot, Verdict]] = field(default_factory=list)
    failed_closed: bool = False
    t0: float | None = None  # when the guard started (perf_counter), for its span
    ms: float | None = None  # how long it took


@dataclass(slots=True)
class _Run:
    """What one request's guards decided so far."""

    vault: Vault = field(default_factory=Vault)
    header: dict[str, str] = field(default_factory=dict)


class GuardrailsLayer:
    name = "guardrails"
    Options = GuardrailsOptions

    def __init__(self, options: GuardrailsOptions, runtime=None) -> None:
        self.options = options
        self.runtime = runtime
        self.input = [build_guard(s, "input", runtime) for s in options.input]
        self.output = [build_guard(s, "output", runtime) for s in options.output]
        self._counter = None
        self._input_names = {g.name for g in self.input}

    def check(self, body: dict) -> None:
        if self.output or any(g.options.action == "pseudonymize" for g in self.input):
            refuse_several_choices(body, self.name, "guards and restores one answer")

    async def start(self) -> None:
        self._metric()
        for guard in (*self.input, *self.output):
            start = getattr(guard, "start", None)
            if start is not None:
                await start()

    async def aclose(self) -> None:
        for guard in (*self.input, *self.output):
            aclose = getattr(guard, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing guard %s failed", guard.name)

    # -- the request ---------------------------------------------------------------------------

    async def __call__(self, ctx: Context, next: Next) -> Result:
        run = _Run()
        ctx.state["guardrails"] = run
        refusal = await self._input_stage(ctx, run) if self.input else None
        if run.header:
            ctx.response_headers[HEADER] = _header(run.header)
        if refusal is not None:
            return _refusal_stream(ctx, refusal) if ctx.stream else _refusal(ctx, refusal)
        if ctx.stream:
            chunks = await next(ctx)
            if not self.output and not run.vault:
                return chunks
            return self._guarded_stream(ctx, run, chunks)
        result = await self._output_stage(ctx, run, next) if self.output else await next(ctx)
        if run.vault:
            _restore(result, run.vault)
        if run.header:
            ctx.response_headers[HEADER] = _header(run.header)
        return result

    # -- input ---------------------------------------------------------------------------------

    async def _input_stage(self, ctx: Context, run: _Run) -> str | None:
        """Apply the input guards to ctx.body; a refusal text when a guard blocks with one."""
        if self.options.concurrency:
            first = [g for g in self.input if g.options.action != "rewrite"]
            slots = _user_slots(ctx.body)
            outcomes = await asyncio.gather(
                *(self._evaluate(g, "input", ctx, slots) for g in first))
            refusal = self._apply_input(ctx, run, list(outcomes))
            if refusal is not None:
                return refusal
            later = [g for g in self.input if g.options.action == "rewrite"]
        else:
            later = self.input
        for guard in later:
            outcome = await self._evaluate(guard, "input", ctx, _user_slots(ctx.body))
            refusal = self._apply_input(ctx, run, [outcome])
            if refusal is not None:
                return refusal
        return None

    def _apply_input(self, ctx: Context, run: _Run, outcomes: list[_Outcome]) -> str | None:
        masks: dict[tuple[int, int | None], tuple[_Slot, list[Tagged]]] = {}
        for outcome in outcomes:
            guard, verdict = outcome.guard, outcome.verdict
            self._record(ctx, run, "input", outcome)
            if outcome.failed_closed:
                raise _failed(guard, verdict, run)
            if verdict.action == "block":
                if guard.options.refusal:
                    return guard.options.refusal
                raise GuardrailBlocked(
                    f"the request was blocked by guardrail {guard.name!r}{_why(verdict)}",
                    param="messages", headers={HEADER: _header(run.header)})
            if verdict.action in MASKING:
                for slot, v in outcome.per_slot:
                    if v.action in MASKING and v.matches:
                        entry = masks.setdefault((slot.message, slot.part), (slot, []))
                        entry[1].extend(Tagged(m, v.action) for m in v.matches)
            elif verdict.action == "rewrite" and verdict.text is not None:
                _replace_last_user(ctx, verdict.text)
                ctx.response_headers[NOTICE_HEADER] = (
                    f"the request was adjusted by guardrail {guard.name!r} before it reached "
                    "the model")
        if masks:
            messages = list(ctx.body.get("messages") or ())
            for slot, tagged in masks.values():
                _set_slot(messages, slot, mask(slot.text, tagged, run.vault))
            ctx.body = {**ctx.body, "messages": messages}
        return None

    # -- output (a whole answer) ---------------------------------------------------------------

    async def _output_stage(self, ctx: Context, run: _Run, next: Next) -> dict:
        original = ctx.body
        result = await next(ctx)
        usage = dict(result.get("usage") or {})
        repairs: dict[str, int] = {}
        try:
            while True:
                text = _answer_text(result)
                if text is None:  # a tool call answers in arguments: nothing to guard
                    return result
                slot = _Slot(0, None, text)
                if self.options.concurrency:
                    outcomes = list(await asyncio.gather(
                        *(self._evaluate(g, "output", ctx, [slot]) for g in self.output)))
                else:
                    outcomes = [await self._evaluate(g, "output", ctx, [slot])
                                for g in self.output]
                repair = None
                tagged: list[Tagged] = []
                rewritten = None
                for outcome in outcomes:
                    guard, verdict = outcome.guard, outcome.verdict
                    self._record(ctx, run, "output", outcome)
                    if outcome.failed_closed:
                        raise _failed(guard, verdict, run)
                    if verdict.action == "block":
                        return self._output_refusal(ctx, run, guard, verdict, usage)
                    if verdict.action == "repair" and repair is None:
                        repair = outcome
                    elif verdict.action in MASKING:
                        # At the output there is nothing to give back: pseudonymize masks too.
                        tagged.extend(Tagged(m, "redact") for m in verdict.matches)
                    elif verdict.action == "rewrite" and verdict.text is not None:
                        rewritten = verdict.text
                if repair is not None:
                    guard, verdict = repair.guard, repair.verdict
                    done = repairs.get(guard.name, 0)
                    if done >= _attempts(guard):
                        if guard.options.refusal:
                            return self._output_refusal(ctx, run, guard, verdict, usage)
                        raise GuardrailRepairFailed(
                            f"the model's answer still fails guardrail {guard.name!r}"
                            f"{_why(verdict)} after {done} repair attempt(s)",
                            headers={HEADER: _header(run.header)})
                    repairs[guard.name] = done + 1
                    ctx.body = _repair_request(original, text, guard.name, verdict)
                    with ctx.trace.span(f"guard.{guard.name}.repair") as span:
                        span.attrs["attempt"] = done + 1
                        result = await next(ctx)
                    add_usage(usage, result.get("usage"))
                    continue
                if rewritten is not None or tagged:
                    new = rewritten if rewritten is not None else mask(text, tagged, None)
                    result["choices"][0]["message"]["content"] = new
                for name, count in repairs.items():
                    key = self._key("output", name)
                    if run.header.get(key) == "pass":
                        run.header[key] = "repair"  # the attempts are on the spans
                return result
        finally:
            ctx.body = original
            if usage and isinstance(result, dict) and result.get("usage"):
                result["usage"] = usage

    def _output_refusal(self, ctx: Context, run: _Run, guard, verdict: Verdict,
                        usage: dict) -> dict:
        if not guard.options.refusal:
            raise GuardrailBlocked(
                f"the model's answer was blocked by guardrail {guard.name!r}{_why(verdict)}",
                headers={HEADER: _header(run.header)})
        result = _refusal(ctx, guard.options.refusal)
        if usage:
            result["usage"] = dict(usage)
        return result

    # -- output (a stream) ---------------------------------------------------------------------

    async def _guarded_stream(self, ctx: Context, run: _Run, chunks) -> AsyncIterator[dict]:
        detectors = [g for g in self.output if _is_detector(g)
                     and g.options.action in (*MASKING, "block")]
        judges = [g for g in self.output if g not in detectors]
        t0 = time.perf_counter()

        def on_block(i: int, matches: list[Match]) -> None:
            guard = detectors[i]
            verdict = _detector_verdict(guard, matches)
            self._record(ctx, run, "output", _Outcome(guard, verdict), t0=t0, streamed=True)
            raise GuardrailBlocked(
                f"the model's answer was blocked by guardrail {guard.name!r}{_why(verdict)}; "
                "the stream was ended")

        masker = StreamMasker(
            [(self._safe_find(ctx, run, g), "redact" if g.options.action in MASKING
              else g.options.action, g.holdback) for g in detectors],
            on_block=on_block) if detectors else None
        restorer = StreamRestorer(run.vault) if run.vault else None

        def passing(text: str, final: bool = False) -> str:
            if masker is not None:
                text = masker.flush() if final else masker.feed(text)
            if restorer is not None:
                text = restorer.feed(text)
                if final:
                    text += restorer.flush()
            return text

        parts: list[str] = []
        flushed = False
        last = None
        try:
            async for chunk in chunks:
                choices = chunk.get("choices") or []
                if not choices:
                    if not flushed:
                        flushed = True
                        tail = passing("", final=True)
                        if tail and last is not None:
                            yield _content_chunk(last, tail)
                    yield chunk
                    continue
                last = chunk
                choice = choices[0]
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    parts.append(text)
                    out = passing(text)
                    chunk = {**chunk, "choices": [
                        {**choice, "delta": {**delta, "content": out}}, *choices[1:]]}
                    if not out and len(delta) == 1 and not choice.get("finish_reason"):
                        continue  # all of it held back for now
                if choice.get("finish_reason") and not flushed:
                    flushed = True
                    tail = passing("", final=True)
                    if tail:
                        yield _content_chunk(chunk, tail)
                yield chunk
            if not flushed:
                flushed = True
                tail = passing("", final=True)
                if tail and last is not None:
                    yield _content_chunk(last, tail)
            for i, guard in enumerate(detectors):
                found = masker.found[i] if masker is not None else []
                self._record(ctx, run, "output", _Outcome(guard, _detector_verdict(guard, found)),
                             t0=t0, streamed=True)
            if judges:
                text = "".join(parts)
                slot = _Slot(0, None, text)
                for guard in judges:
                    outcome = await self._evaluate(guard, "output", ctx, [slot])
                    # Streamed tokens cannot be taken back: whatever the guard's action, the
                    # verdict is recorded as a flag.
                    # A guard that failed here cannot refuse either: the error is recorded.
                    outcome.failed_closed = False
                    self._record(ctx, run, "output", outcome, streamed=True, flag_only=True)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _safe_find(self, ctx: Context, run: _Run, guard):
        """`guard.find`, with its failure handled as `on_error` says."""
        failed = False

        def find(text: str) -> list[Match]:
            nonlocal failed
            if failed:
                return []
            try:
                return guard.find(text)
            except Exception as exc:
                failed = True
                verdict = _error_verdict(guard, exc)
                outcome = _Outcome(guard, verdict, failed_closed=guard.options.fails_closed())
                self._record(ctx, run, "output", outcome, streamed=True)
                if outcome.failed_closed:
                    raise _failed(guard, verdict, run) from None
                return []

        return find

    # -- running one guard ---------------------------------------------------------------------

    async def _evaluate(self, guard, stage: Stage, ctx: Context, slots: list[_Slot]) -> _Outcome:
        t0 = time.perf_counter()
        gctx = GuardContext(stage=stage, body=ctx.body, runtime=self.runtime, state=ctx.state,
                            route=ctx.route)
        if stage == "input" and not _is_detector(guard):
            slots = _judge_slots(slots, _scope(guard))
        try:
            per_slot = [(slot, await guard.check(slot.text, gctx)) for slot in slots]
        except Exception as exc:
            log.warning("guard %s failed: %s: %s", guard.name, type(exc).__name__, exc)
            verdict = _error_verdict(guard, exc)
            outcome = _Outcome(guard, verdict, failed_closed=guard.options.fails_closed())
        else:
            outcome = _Outcome(guard, _combine(guard, [v for _, v in per_slot]), per_slot)
        outcome.t0, outcome.ms = t0, (time.perf_counter() - t0) * 1000.0
        return outcome

    def _record(self, ctx: Context, run: _Run, stage: Stage, outcome: _Outcome, *,
                t0: float | None = None, streamed: bool = False,
                flag_only: bool = False) -> None:
        guard, verdict = outcome.guard, outcome.verdict
        scores = verdict.scores
        start = outcome.t0 or t0 or time.perf_counter()
        ms = outcome.ms
        action = verdict.action
        if flag_only and verdict.acted:
            action = "flag"
        elif streamed and action in MASKING:
            action = "redact"  # a stream's answer is masked; nothing is given back
        if outcome.failed_closed:
            action = "block"
        attrs: dict[str, Any] = {"stage": stage, "action": action,
                                 "kind": getattr(guard, "kind", None)}
        if verdict.reasons:
            attrs["reasons"] = list(verdict.reasons)
        if scores:
            attrs["scores"] = {k: round(float(v), 4) for k, v in scores.items()}
        if verdict.matches:
            labels: dict[str, int] = {}
            for m in verdict.matches:
                labels[m.label] = labels.get(m.label, 0) + 1
            attrs["labels"] = labels  # labels and counts only: never the matched text
        if verdict.error:
            attrs["error"] = verdict.error
        if streamed:
            attrs["streamed"] = True
        if action != verdict.action:
            attrs["configured_action"] = verdict.action
        span = ctx.trace.span(f"guard.{guard.name}")
        span._t0 = start
        span.start_ms = (start - ctx.trace.t0) * 1000.0
        span.attrs.update(attrs)
        span.end()
        if ms is not None:
            span.duration_ms = ms
        span.attrs["latency_ms"] = round(span.duration_ms or 0.0, 3)
        key = self._key(stage, guard.name)
        if verdict.error and not outcome.failed_closed:
            run.header[key] = "error"
        else:
            run.header[key] = action
        counter = self._metric()
        if counter is not None:
            try:
                counter.labels(guard.name, stage, action).inc()
            except Exception:  # a metric must not fail a request
                log.exception("counting a guard verdict failed")

    def _key(self, stage: Stage, name: str) -> str:
        return f"{name}@output" if stage == "output" and name in self._input_names else name

    def _metric(self):
        if self._counter is None and self.runtime is not None:
            config = getattr(self.runtime, "config", None)
            if config is None or config.metrics.enabled:
                self._counter = self.runtime.metrics.counter(
                    "keel_guardrail_verdicts_total",
                    "Guard verdicts, by guard name, stage (input/output) and action (pass too)",
                    ["guard", "stage", "action"])
        return self._counter


# -- helpers -----------------------------------------------------------------------------------

def _is_detector(guard) -> bool:
    return callable(getattr(guard, "find", None)) and isinstance(getattr(guard, "holdback", None),
                                                                  int)


def _scope(guard) -> str:
    return getattr(guard.options, "messages", None) or getattr(guard, "messages", "last")


def _attempts(guard) -> int:
    return int(getattr(guard.options, "attempts", 1))


def _user_slots(body: dict) -> list[_Slot]:
    slots = []
    for i, message in enumerate(body.get("messages") or ()):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            slots.append(_Slot(i, None, content))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "text" and \
                        isinstance(part.get("text"), str):
                    slots.append(_Slot(i, j, part["text"]))
    return slots


def _judge_slots(slots: list[_Slot], scope: str) -> list[_Slot]:
    """A judge sees one text: the last user message (its text parts joined), or all of them."""
    if not slots:
        return []
    if scope == "all":
        chosen = slots
    else:
        last = slots[-1].message
        chosen = [s for s in slots if s.message == last]
    if len(chosen) == 1:
        return chosen
    # Joined text: its matches cannot be mapped back to a part, so no masking from it.
    return [_Slot(-1, None, "\n\n".join(s.text for s in chosen))]


def _set_slot(messages: list, slot: _Slot, text: str) -> None:
    if slot.message < 0:
        return
    message = dict(messages[slot.message])
    if slot.part is None:
        message["content"] = text
    else:
        parts = list(message["content"])
        parts[slot.part] = {**parts[slot.part], "text": text}
        message["content"] = parts
    messages[slot.message] = message


def _replace_last_user(ctx: Context, text: str) -> None:
    messages = list(ctx.body.get("messages") or ())
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "user":
            messages[i] = {**messages[i], "content": text}
            break
    ctx.body = {**ctx.body, "messages": messages}


def _combine(guard, verdicts: list[Verdict]) -> Verdict:
    """One verdict per guard from its verdicts on several texts: the first that acted decides
    the action; reasons, scores (the highest) and matches are gathered."""
    if len(verdicts) == 1:
        return verdicts[0]
    combined = Verdict(guard.name)
    for v in verdicts:
        if v.acted and not combined.acted:
            combined.action, combined.text = v.action, v.text
        combined.reasons.extend(r for r in v.reasons if r not in combined.reasons)
        for k, s in v.scores.items():
            combined.scores[k] = max(s, combined.scores.get(k, s))
        combined.matches.extend(v.matches)
    return combined


def _detector_verdict(guard, matches: list[Match]) -> Verdict:
    if not matches:
        return Verdict(guard.name)
    labels = sorted({m.label for m in matches})
    return Verdict(guard.name, guard.options.action, reasons=[f"found {', '.join(labels)}"],
                   matches=list(matches))


def _error_verdict(guard, exc: Exception) -> Verdict:
    closed = guard.options.fails_closed()
    return Verdict(guard.name, "block" if closed else "pass",
                   error=f"{type(exc).__name__}: {str(exc)[:200]}")


def _failed(guard, verdict: Verdict, run: _Run) -> GuardrailError:
    return GuardrailError(
        f"guardrail {guard.name!r} failed ({(verdict.error or '').split(':')[0]}) and fails "
        "closed, so the request was not completed; try again later",
        headers={HEADER: _header(run.header)})


def _why(verdict: Verdict) -> str:
    return f": {'; '.join(verdict.reasons)}" if verdict.reasons else ""


def _answer_text(result: dict) -> str | None:
    choices = result.get("choices") or []
    if not choices:
        return None
    message = choices[0].get("message") or {}
    if message.get("tool_calls") or not isinstance(message.get("content"), str):
        return None
    return message["content"]


def _repair_request(original: dict, answer: str, guard: str, verdict: Verdict) -> dict:
    problem = verdict.text or "; ".join(verdict.reasons) or "it failed the check"
    messages = [
        *original["messages"],
        {"role": "assistant", "content": answer},
        {"role": "user", "content": REPAIR_PROMPT.format(guard=guard, problem=problem)},
    ]
    return {**original, "messages": messages}


def _restore(result: dict, vault: Vault) -> None:
    for choice in result.get("choices") or ():
        message = choice.get("message") or {}
        if isinstance(message.get("content"), str):
            message["content"] = vault.restore(message["content"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            if isinstance(function.get("arguments"), str):
                function["arguments"] = vault.restore(function["arguments"])


def _header(entries: dict[str, str]) -> str:
    return ",".join(f"{name}={action}" for name, action in entries.items())


def _refusal(ctx: Context, text: str) -> dict:
    return shapes.completion(ctx.route.upstream_model, text, finish_reason="content_filter",
                             usage=shapes.usage(0, 0))


async def _refusal_stream(ctx: Context, text: str) -> AsyncIterator[dict]:
    cid, created, model = shapes.new_id(), int(time.time()), ctx.route.upstream_model
    yield shapes.chunk(cid, created, model, {"role": "assistant", "content": ""})
    yield shapes.chunk(cid, created, model, {"content": text})
    yield shapes.chunk(cid, created, model, {}, finish_reason="content_filter")
    yield shapes.usage_chunk(cid, created, model, shapes.usage(0, 0))


def _content_chunk(like: dict, text: str) -> dict:
    choice = (like.get("choices") or [{}])[0]
    return {**like, "choices": [{"index": choice.get("index", 0), "delta": {"content": text},
                                 "finish_reason": None}]}

