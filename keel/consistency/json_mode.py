"""The `json_mode` layer: validate JSON answers, repair them once, or fail clearly."""

from __future__ import annotations

from pydantic import Field

from keel.pipeline.json_check import expected_schema, problem_with
from keel.errors import UpstreamError
from keel.pipeline import Context, LayerOptions, Next, Result
from keel.pipeline.layer import refuse_several_choices
from keel.providers.shapes import add_usage

REPAIR_PROMPT = (
    "Your previous answer is invalid: {problem}. Reply again with only the corrected JSON, "
    "and nothing else."
)


class JSONModeOptions(LayerOptions):
    repair_attempts: int = Field(1, ge=0, le=5)


class JSONModeLayer:
    """For `response_format` json_object / json_schema: the content parses (and validates).

    An invalid answer is sent back to the model with what was wrong, `repair_attempts` times;
    after that the request fails with a 502 that names the problem. Streams are checked when
    they end and the verdict goes on the trace (streamed tokens cannot be taken back).
    """

    name = "json_mode"
    Options = JSONModeOptions

    def __init__(self, options: JSONModeOptions, runtime=None) -> None:
        self.repair_attempts = options.repair_attempts

    def check(self, body: dict) -> None:
        if expected_schema(body)[0]:
            refuse_several_choices(body, self.name, "checks and repairs one JSON answer")

    async def __call__(self, ctx: Context, next: Next) -> Result:
        wants_json, schema = expected_schema(ctx.body)
        if not wants_json:
            return await next(ctx)
        if ctx.stream:
            return self._checked_stream(ctx, await next(ctx), schema)
        original = ctx.body
        result = await next(ctx)
        usage = dict(result.get("usage") or {})
        for attempt in range(self.repair_attempts + 1):
            problem = _first_problem(result, schema)
            if problem is None:
                break
            if attempt == self.repair_attempts:
                raise UpstreamError(
                    f"the model's answer is not the JSON the request asked for: {problem} "
                    f"(after {self.repair_attempts} repair attempt(s))",
                    code="invalid_json_output",
                )
            with ctx.trace.span("json_mode.repair") as span:
                span.attrs["problem"] = problem
                ctx.body = _repair_request(original, result, problem)
                result = await next(ctx)
                add_usage(usage, result.get("usage"))
        ctx.body = original
        if usage:
            result["usage"] = usage
        return result

    async def _checked_stream(self, ctx: Context, chunks, schema):
        parts: list[str] = []
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
            yield chunk
        with ctx.trace.span("json_mode.check") as span:
            span.attrs["problem"] = problem_with("".join(parts), schema)


def _first_problem(result: dict, schema: dict | None) -> str | None:
    for choice in result.get("choices") or ():
        message = choice.get("message") or {}
        if message.get("tool_calls"):
            continue  # a tool call answers in arguments, not content
        problem = problem_with(message.get("content"), schema)
        if problem:
            return problem
    return None


def _repair_request(original: dict, result: dict, problem: str) -> dict:
    answer = ((result.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
    messages = [
        *original["messages"],
        {"role": "assistant", "content": answer},
        {"role": "user", "content": REPAIR_PROMPT.format(problem=problem)},
    ]
    return {**original, "messages": messages}
