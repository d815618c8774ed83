"""Virtual keys: created, listed, revoked and rotated in the store; their secrets never kept.

A key's secret is `sk-keel-` and 40 random url-safe characters (240 bits), shown once when the
key is created or rotated. The store keeps its SHA-256: with that much entropy a plain hash
cannot be reversed by guessing, and unlike a slow password hash it costs one microsecond, so a
replica meeting a key for the first time pays nothing noticeable. `hint` keeps the last four
characters, to tell keys apart in lists.

    keys = KeyStore(store)
    record, secret = keys.create("team-a", budget_usd=50, period="month", rpm=60)
    keys.find_by_secret(secret)   # -> KeyRecord, or None for an unknown secret
    keys.revoke(record.id); keys.rotate(record.id) -> (record, new secret)

Every change bumps the key's `updated_at`; `version()` (the newest `updated_at`) is what the
running servers poll to drop their cached keys (keel.ops.key_cache).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.ops.principal import DEFAULT_SURFACES, SURFACES, Principal
from keel.store.models import api_keys

if TYPE_CHECKING:
    from keel.store import Store

SECRET_PREFIX = "sk-keel-"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PERIODS = ("day", "month")
# rpm and tpm are INTEGER columns: a larger number would be a database error, not a 400.
MAX_PER_MINUTE = 2**31 - 1


class KeyNotFound(NotFound):
    code = "key_not_found"


@dataclass(frozen=True)
class KeyRecord:
    """A key as the store holds it (no secret)."""

    id: str
    name: str
    hint: str
    surfaces: tuple[str, ...]
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    period: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    updated_at: float = 0.0

    def status(self, now: float | None = None) -> str:
        """active, revoked or expired."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return "expired"
        return "active"

    def principal(self) -> Principal:
        return Principal(
            key_id=self.id,
            name=self.name,
            surfaces=frozenset(self.surfaces),
            models=frozenset(self.models) if self.models is not None else None,
            rpm=self.rpm,
            tpm=self.tpm,
            budget_usd=self.budget_usd,
            period=self.period,
            metadata=dict(self.metadata),
            expires_at=self.expires_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """The key as the API and `--json` show it: everything but the secret."""
        return {
            "id": self.id,
            "object": "api_key",
            "name": self.name,
            "hint": self.hint,
            "status": self.status(),
            "models": list(self.models) if self.models is not None else None,
            "surfaces": list(self.surfaces),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "budget_usd": self.budget_usd,
            "period": self.period,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(30)


def parse_duration(text: str, field_name: str = "expires") -> float:
    """Seconds in `text` like 30d, 12h, 2w or 90m."""
    match = _DURATION.fullmatch(str(text).strip().lower())
    if not match or not 0 < float(match.group(1)) * _SECONDS[match.group(2)] < math.inf:
        raise InvalidRequest(
            f"{field_name}: expected a duration like 90m, 12h, 30d or 2w, got {text!r}",
            param=field_name)
    return float(match.group(1)) * _SECONDS[match.group(2)]


class KeyStore:
    """Keys in the store. Synchronous (SQLAlchemy Core): the server calls it off the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        name: str,
        *,
        models: list[str] | None = None,
        surfaces: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
        period: str | None = None,
        expires_in_s: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret (shown to the user once, never stored)."""
        values = _validated(name, models, surfaces, rpm, tpm, budget_usd, period, expires_in_s,
                            metadata)
        secret = new_secret()
        now = time.time()
        with self.store.engine.begin() as conn:
            row = {
                "id": f"key_{secrets.token_hex(8)}",
                "secret_hash": hash_secret(secret),
                "hint": f"{SECRET_PREFIX}…{secret[-4:]}",
                "created_at": now,
                "updated_at": _stamp(conn, now),
                "expires_at": now + expires_in_s if expires_in_s else None,
                **values,
            }
            conn.execute(api_keys.insert().values(**row))
        return _record({"revoked_at": None, **row}), secret

    def list(self, include_revoked: bool = True) -> list[KeyRecord]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.store.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query).mappings()]

    def get(self, key_id: str) -> KeyRecord:
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None:
            raise KeyNotFound(f"no API key {key_id!r}", param="id")
        return _record(row)

    def find_by_secret(self, secret: str) -> KeyRecord | None:
        """The key with this secret, whatever its status (the caller tells revoked from
        expired), or None."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(
                api_keys.c.secret_hash == hash_secret(secret))).mappings().first()
        return _record(row) if row is not None else None

    def revoke(self, key_id: str) -> KeyRecord:
        now = time.time()
        with self.store.engine.begin() as conn:
            done = conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(
                revoked_at=sa.func.coalesce(api_keys.c.revoked_at, now),
                updated_at=_stamp(conn, now)))
        if done.rowcount == 0:
            raise KeyNotFound(f"no API key {key_id!r}", param="id")
        return self.get(key_id)

    def rotate(self, key_id: str) -> tuple[KeyRecord, str]:
        """A new secret for the same key (its id, limits and usage stay); the old secret stops
        working at once."""
        record = self.get(key_id)
        if record.revoked_at is not None:
            raise InvalidRequest(f"API key {key_id!r} is revoked; create a new one", param="id")
        secret = new_secret()
        with self.store.engine.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(
                secret_hash=hash_secret(secret), hint=f"{SECRET_PREFIX}…{secret[-4:]}",
                updated_at=_stamp(conn, time.time())))
        return self.get(key_id), secret

    def version(self) -> float:
        """The newest change to any key (0.0 with none): unchanged means no cache is stale."""
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(api_keys.c.updated_at))).scalar() or 0.0


def _stamp(conn, now: float) -> float:
    """`updated_at` for a change: now, but always past the newest stamp so far, so `version()`
    moves on every change even when this machine's clock is behind the one that wrote last (the
    CLI on another host, a replica after an NTP step) or two changes share a clock tick."""
    newest = conn.execute(sa.select(sa.func.max(api_keys.c.updated_at))).scalar()
    return now if newest is None or now > newest else newest + 0.001


def _validated(name, models, surfaces, rpm, tpm, budget_usd, period, expires_in_s, metadata):
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest("name: expected a non-empty string of at most 200 characters",
                             param="name")
    if models is not None and (not isinstance(models, list)
                               or not all(isinstance(m, str) and m for m in models)):
        raise InvalidRequest("models: expected a list of model names", param="models")
    surfaces = list(DEFAULT_SURFACES) if surfaces is None else surfaces
    if not isinstance(surfaces, list) or not surfaces:
        raise InvalidRequest("surfaces: expected a non-empty list", param="surfaces")
    unknown = [s for s in surfaces if s not in SURFACES]
    if unknown:
        raise InvalidRequest(f"surfaces: unknown surface {unknown[0]!r} (known: "
                             f"{', '.join(SURFACES)})", param="surfaces")
    for field_name, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 < value <= MAX_PER_MINUTE):
            raise InvalidRequest(f"{field_name}: expected a positive integer of at most "
                                 f"{MAX_PER_MINUTE}", param=field_name)
    if budget_usd is not None:
        if isinstance(budget_usd, bool) or not isinstance(budget_usd, (int, float)) \
                or not 0 < budget_usd < math.inf:
            raise InvalidRequest("budget_usd: expected a positive number", param="budget_usd")
        period = period or "month"
    if period is not None and period not in PERIODS:
        raise InvalidRequest("period: expected 'day' or 'month'", param="period")
    if period is not None and budget_usd is None:
        raise InvalidRequest("period: only with budget_usd", param="period")
    if expires_in_s is not None and (isinstance(expires_in_s, bool) or not (
            isinstance(expires_in_s, (int, float)) and 0 < expires_in_s < math.inf)):
        raise InvalidRequest("expires: expected a positive duration", param="expires")
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(k, str) for k in metadata)):
        raise InvalidRequest("metadata: expected an object with string keys", param="metadata")
    return {
        "name": name.strip(),
        "models": sorted(set(models)) if models is not None else None,
        "surfaces": [s for s in SURFACES if s in surfaces],
        "rpm": rpm,
        "tpm": tpm,
        "budget_usd": float(budget_usd) if budget_usd is not None else None,
        "period": period,
        "metadata": metadata or None,
    }


def _record(row) -> KeyRecord:
    models = row["models"]
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        hint=row["hint"],
        surfaces=tuple(row["surfaces"] or ()),
        models=tuple(models) if models is not None else None,
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_usd=row["budget_usd"],
        period=row["period"],
        metadata=dict(row["metadata"] or {}),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        updated_at=row["updated_at"],
    )
