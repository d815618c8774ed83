"""STUB (issue 8, helper "limits" replaces this): rate limits and budgets."""

from __future__ import annotations


class Limiter:
    def __init__(self, config, runtime) -> None:
        self.config = config
        self.runtime = runtime

    async def start(self) -> None:
        pass

    async def admit(self, principal, trace, model: str, limits) -> dict[str, str]:
        return {}

    def settle(self, trace) -> None:
        pass

    async def aclose(self) -> None:
        pass
