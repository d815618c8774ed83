"""The `rewrite` guard: a model turns a request that breaks a policy into the closest one that
does not (the talk's DALL·E example), and the request continues with it.

The guard's `policy` says in words what is not allowed. The route's own model (or `model`, a
model name on the same provider) is asked whether the user's request complies and, if not, to
rewrite it, answering JSON `{"compliant": bool, "rewritten": str}`. The answer is read
tolerantly — code fences, text around the object, a bare "OK" — and the verdict is `rewrite`
with `verdict.text` the new request, or pass when it complies. A non-compliant request the model
could not rewrite is blocked. An answer that cannot be read is an error, and the guard's
`on_error` decides (open by default: the request goes on unchanged, the error on the trace).
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from pydantic import Field

from keel.errors import UpstreamError
from keel.guardrails.base import GuardContext, GuardOptions, Verdict

INSTRUCTION = """You check requests against a policy before they are carried out.

Policy (what is not allowed):
{policy}

The user's request follows. If it complies with the policy, answer {{"compliant": true, \
"rewritten": ""}}. If it does not, rewrite it into the closest request that does comply, \
keeping everything acceptable about it, and answer {{"compliant": false, "rewritten": \
"<the rewritten request>"}}. If no acceptable version exists, answer {{"compliant": false, \
"rewritten": ""}}. Answer with the JSON object only."""

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_OK = re.compile(r"^\W*(ok|okay|compliant|yes)\W*$", re.IGNORECASE)


class RewriteOptions(GuardOptions):
    action: str = Field("rewrite", pattern="^(rewrite|flag)$")
    policy: str = Field(min_length=1)
    model: str | None = Field(None, description="an upstream model of the route's provider; "
                              "the route's own model when unset")
    max_tokens: int = Field(512, ge=16)


class RewriteGuard:
    kind: ClassVar[str] = "rewrite"
    Options: ClassVar[type[GuardOptions]] = RewriteOptions

    def __init__(self, name: str, options: RewriteOptions, runtime: Any = None) -> None:
        self.name = name
        self.options = options

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        if not text.strip():
            return Verdict(self.name)
        route = ctx.route
        if route is None:
            raise UpstreamError("the rewrite guard needs the route's model, and has no route")
        model = self.options.model or route.upstream_model
        body = {"model": model, "temperature": 0, "max_tokens": self.options.max_tokens,
                "messages": [
                    {"role": "system", "content": INSTRUCTION.format(policy=self.options.policy)},
                    {"role": "user", "content": text}]}
        answer = await route.provider.chat(body, model)
        content = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        compliant, rewritten = parse(content)
        if compliant or rewritten.strip() == text.strip():
            return Verdict(self.name, reasons=["complies with the policy"])
        if not rewritten:
            return Verdict(self.name, "block",
                           reasons=["breaks the policy and no acceptable version was found"])
        return Verdict(self.name, self.options.action, reasons=["rewritten to meet the policy"],
                       text=rewritten)


def parse(content: str) -> tuple[bool, str]:
    """(compliant, rewritten) from the model's answer; UpstreamError when it cannot be read."""
    if _OK.match(content.strip()):
        return True, ""
    found = _OBJECT.search(content)
    value = None
    if found:
        try:
            value = json.loads(found.group(0))
        except ValueError:
            value = None
    if not isinstance(value, dict) or "compliant" not in value:
        raise UpstreamError(f"the rewrite guard's model gave an answer it cannot read: "
                            f"{content[:200]!r}", code="guardrail_error")
    compliant = value["compliant"]
    if isinstance(compliant, str):
        compliant = compliant.strip().lower() in ("true", "yes")
    rewritten = value.get("rewritten")
    return bool(compliant), rewritten.strip() if isinstance(rewritten, str) else ""
