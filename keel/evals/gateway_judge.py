"""The judge model-graded graders talk to: a Keel model run through an in-process gateway.

Judge calls go down the same pipeline (and are traced) like any other request, so the judge can
be the embedded model, a remote one, or a fake in tests: whatever keel.yaml names.
"""

from __future__ import annotations


class GatewayJudge:
    def __init__(self, gateway) -> None:
        self.gateway = gateway  # keel.gateway.Gateway, started

    async def complete(self, body: dict) -> dict:
        return await self.gateway.complete(body)

    async def embed(self, texts: list[str], embedder: str = "minilm"):
        return await (await self.gateway.runtime.embedder(embedder)).embed(texts)
