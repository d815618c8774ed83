"""Who is asking: the key a request came with, resolved to what it may do and spend.

A `Principal` is immutable and cached per key secret (keel.api.auth), so checking a request
against it costs a few attribute reads. The admin key and the anonymous caller of an auth-less
loopback server are principals too, with every surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keel.errors import PermissionDenied

# What a key may be allowed to use. `metrics` is /metrics (Prometheus scrapes with a key too).
SURFACES = ("chat", "embeddings", "moderations", "knowledge.read", "knowledge.write", "feedback",
            "metrics", "console", "admin")
# A new key's surfaces unless `--surfaces` says otherwise: writing into knowledge (which the model
# then trusts), reading metrics and administering keys must be granted on purpose.
DEFAULT_SURFACES = ("chat", "embeddings", "moderations", "knowledge.read", "feedback")


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None  # None: the admin key or the anonymous caller (auth off)
    name: str
    surfaces: frozenset[str]
    models: frozenset[str] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    period: str | None = None  # "day" | "month" (UTC), with budget_usd
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None  # epoch seconds

    @property
    def admin(self) -> bool:
        return "admin" in self.surfaces

    @property
    def team(self) -> str | None:
        team = self.metadata.get("team")
        return str(team) if team is not None else None

    def may_use(self, surface: str) -> bool:
        return surface in self.surfaces

    def may_call(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Principal(key_id=None, name="anonymous", surfaces=frozenset(SURFACES))
ADMIN = Principal(key_id=None, name="admin", surfaces=frozenset(SURFACES))


def authorize(principal: Principal, surface: str) -> None:
    if not principal.may_use(surface):
        raise PermissionDenied(
            f"This API key ({principal.name}) may not use {surface}; an admin can grant it "
            f"with `keel keys create --surfaces ...`.", code="surface_not_allowed")


def authorize_model(principal: Principal, model: str) -> None:
    if not principal.may_call(model):
        raise PermissionDenied(
            f"This API key ({principal.name}) may not use the model '{model}'.",
            param="model", code="model_not_allowed")
