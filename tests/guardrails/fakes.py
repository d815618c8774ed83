"""Guards scripted for the layer's tests: slow ones, failing ones, judges that answer any action.

They are registered as guard kinds (`test_slow`, `test_judge`, `test_fail`, `test_bad_find`) by
the `fake_guards` fixture in conftest.py, the way a third-party package adds its own through the
`keel.guards` entry points.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from keel.guardrails.base import GuardContext, GuardOptions, Match, Verdict


class SlowOptions(GuardOptions):
    action: str = "flag"
    delay_s: float = 0.3


class SlowGuard:
    """Sleeps, then passes; counts how many slow guards run at the same time."""

    kind: ClassVar[str] = "test_slow"
    Options: ClassVar[type[GuardOptions]] = SlowOptions
    running = 0
    most = 0

    def __init__(self, name, options, runtime=None):
        self.name, self.options = name, options

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        cls = type(self)
        cls.running += 1
        cls.most = max(cls.most, cls.running)
        try:
            await asyncio.sleep(self.options.delay_s)
        finally:
            cls.running -= 1
        return Verdict(self.name)


class JudgeOptions(GuardOptions):
    action: str = "flag"
    trigger: str = "bad"  # acts when the text contains this
    text: str | None = None  # the verdict's text (rewrite: the new request; repair: the problem)
    attempts: int = 1
    messages: str | None = None  # "all": sees every user message


class JudgeGuard:
    """Acts (its configured action) when the text contains `trigger`; remembers what it saw."""

    kind: ClassVar[str] = "test_judge"
    Options: ClassVar[type[GuardOptions]] = JudgeOptions
    seen: ClassVar[list[tuple[str, str, str]]] = []

    def __init__(self, name, options, runtime=None):
        self.name, self.options = name, options

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        type(self).seen.append((self.name, ctx.stage, text))
        if self.options.trigger in text:
            return Verdict(self.name, self.options.action,
                           reasons=[f"mentions {self.options.trigger}"],
                           scores={"risk": 0.9}, text=self.options.text)
        return Verdict(self.name, scores={"risk": 0.1})


class FailOptions(GuardOptions):
    action: str = "block"


class FailGuard:
    kind: ClassVar[str] = "test_fail"
    Options: ClassVar[type[GuardOptions]] = FailOptions

    def __init__(self, name, options, runtime=None):
        self.name, self.options = name, options

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        raise RuntimeError("the guard's model is down")


class BadFindGuard(FailGuard):
    """A detector whose `find` fails: on streams the layer calls it directly."""

    kind: ClassVar[str] = "test_bad_find"
    holdback = 8

    def find(self, text: str) -> list[Match]:
        raise RuntimeError("broken detector")


KINDS = {
    "test_slow": "tests.guardrails.fakes:SlowGuard",
    "test_judge": "tests.guardrails.fakes:JudgeGuard",
    "test_fail": "tests.guardrails.fakes:FailGuard",
    "test_bad_find": "tests.guardrails.fakes:BadFindGuard",
}
