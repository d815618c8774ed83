"""STUB (issue 9, helper "core" replaces this): the guardrails layer."""

from __future__ import annotations

from typing import Any

from keel.pipeline import Context, LayerOptions, Next, Result


class GuardrailsOptions(LayerOptions):
    input: list[Any] = []
    output: list[Any] = []


class GuardrailsLayer:
    name = "guardrails"
    Options = GuardrailsOptions

    def __init__(self, options: GuardrailsOptions, runtime=None) -> None:
        self.options = options

    async def __call__(self, ctx: Context, next: Next) -> Result:
        return await next(ctx)
