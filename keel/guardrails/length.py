"""The `length` guard: limits on the request's and the answer's length, in tokens.

    - length: {max_input_tokens: 4000, max_output_tokens: 1000, action: block}

Tokens are counted with the route's tokenizer when its provider offers one (a
`count_tokens(text) -> int` method); otherwise estimated as ceil(characters / 4), the usual rule
of thumb for English with BPE tokenizers. On the input stage it counts every message of the
request (system, history and the latest turn: what the model reads); on the output stage, the
answer.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from keel.guardrails.base import GuardContext, GuardOptions, Verdict
from keel.messages import content_text


class LengthOptions(GuardOptions):
    action: Literal["block", "flag"] = "block"
    max_input_tokens: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


class LengthGuard:
    kind: ClassVar[str] = "length"
    Options: ClassVar[type[GuardOptions]] = LengthOptions

    def __init__(self, name: str, options: LengthOptions, runtime=None) -> None:
        self.name = name
        self.options = options

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        if ctx.stage == "input":
            limit = self.options.max_input_tokens
            messages = (ctx.body or {}).get("messages") or ()
            text = "\n".join(content_text(m.get("content")) for m in messages
                             if isinstance(m, dict)) or text
        else:
            limit = self.options.max_output_tokens
        if limit is None:
            return Verdict(self.name)
        tokens = self._count(text, ctx)
        if tokens <= limit:
            return Verdict(self.name, scores={"tokens": float(tokens)})
        what = "request" if ctx.stage == "input" else "answer"
        return Verdict(self.name, self.options.action,
                       reasons=[f"the {what} has {tokens} tokens, more than the limit of {limit}"],
                       scores={"tokens": float(tokens)})

    @staticmethod
    def _count(text: str, ctx: GuardContext) -> int:
        count = getattr(getattr(ctx.route, "provider", None), "count_tokens", None)
        if callable(count):
            try:
                return int(count(text))
            except Exception:  # a tokenizer that cannot count must not fail the request
                pass
        return estimate_tokens(text)
