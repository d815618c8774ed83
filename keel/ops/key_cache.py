"""API keys resolved to principals at the cost of a dictionary lookup, revocations picked up.

    keys = KeyCache(store, config.auth_settings())
    await keys.start()
    principal = await keys.resolve(token)   # or AuthenticationError (401 invalid_api_key)
    await keys.aclose()

The first use of a secret looks it up in the store (`KeyStore.find_by_secret`, in a thread;
concurrent first uses of one secret share the lookup); every later use is a lookup in a dict
keyed by the token, plus an expiry comparison for keys that expire. Secrets the store does not
know are remembered too, in a bounded map (oldest dropped), so a client sending garbage keys
cannot make every request cost a database query.

Revocation: a background task reads `KeyStore.version()` every `auth.refresh_interval_s` and
drops the whole cache when it changed. That is how a key revoked or rotated through the CLI, or
on another replica, is refused here within about `refresh_interval_s` (plus one query's time).
A failed poll (store away) is logged once per outage; the cache keeps serving what it knows.

Messages never carry a secret, only its masked form (`sk-keel-…abcd`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from keel.errors import AuthenticationError, ServiceUnavailable
from keel.ops.keys import SECRET_PREFIX, KeyRecord, KeyStore
from keel.ops.principal import ADMIN, Principal

if TYPE_CHECKING:
    from keel.config import AuthConfig
    from keel.store import Store

log = logging.getLogger("keel.auth")

# Unknown secrets remembered, so garbage keys cost no query; beyond this the oldest go first.
UNKNOWN_MAX = 10_000
# Tokens this short get no suffix shown at all: four characters would be much of the secret.
_MASK_MIN_LENGTH = 16

NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an api-key header. An admin "
    "creates keys with `keel keys create` (see docs/auth.md).")


def unauthenticated(message: str) -> AuthenticationError:
    """A 401 as OpenAI sends it, with the challenge header HTTP asks of a 401."""
    return AuthenticationError(message, headers={"WWW-Authenticate": 'Bearer realm="keel"'})


def mask(token: str) -> str:
    """What an error message may show of a key: its prefix and last four characters."""
    if len(token) < _MASK_MIN_LENGTH:
        return "***"
    prefix = SECRET_PREFIX if token.startswith(SECRET_PREFIX) else ""
    return f"{prefix}…{token[-4:]}"


def _bytes(text: str) -> bytes:
    # surrogatepass: header values may hold lone surrogates; compare_digest wants bytes anyway.
    return text.encode("utf-8", "surrogatepass")


class KeyCache:
    def __init__(self, store: Store, auth: AuthConfig, *, unknown_max: int = UNKNOWN_MAX) -> None:
        self.keys = KeyStore(store)
        self.refresh_interval_s = auth.refresh_interval_s
        self._admin = _bytes(auth.admin_key) if auth.admin_key else None
        self._unknown_max = unknown_max
        # token -> Principal (valid when looked up; expiry checked on use) or the refusal message
        # of a revoked key.
        self._known: dict[str, Principal | str] = {}
        self._unknown: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first
        self._pending: dict[str, asyncio.Future] = {}
        # Bumped by invalidate(): a lookup that started before does not store its stale answer.
        self._generation = 0
        self._version: float | None = None
        self._poller: asyncio.Task | None = None
        self._failing = False
        self.lookups = 0  # store queries made (tests and diagnostics)

    async def start(self) -> None:
        try:
            self._version = await asyncio.to_thread(self.keys.version)
        except Exception as exc:  # the store away at start: serve, and poll until it is back
            self._poll_failed(exc)
        self._poller = asyncio.create_task(self._poll(), name="keel-key-cache-poll")

    async def resolve(self, token: str | None) -> Principal:
        """The principal of `token`, or AuthenticationError (none, unknown, revoked, expired)."""
        if not token:
            raise unauthenticated(NO_KEY_MESSAGE)
        entry = self._known.get(token)
        if entry is None:
            if self._admin is not None and hmac.compare_digest(_bytes(token), self._admin):
                return ADMIN
            if token in self._unknown:
                raise unauthenticated(_unknown_message(token))
            entry = await self._lookup(token)
        if entry.__class__ is str:
            raise unauthenticated(entry)
        expires_at = entry.expires_at
        if expires_at is not None and expires_at <= time.time():
            raise unauthenticated(_expired_message(token, entry.name, expires_at))
        return entry

    def invalidate(self) -> None:
        """Forget every key: the next use of each looks it up again."""
        self._generation += 1
        self._known = {}
        self._unknown = {}
        self._pending = {}

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None

    # -- misses -----------------------------------------------------------------------------

    async def _lookup(self, token: str) -> Principal | str:
        future = self._pending.get(token)
        if future is None:
            future = asyncio.ensure_future(self._fetch(token, self._generation))
            self._pending[token] = future
        # shield: a caller that goes away must not cancel the lookup the others wait on.
        return await asyncio.shield(future)

    async def _fetch(self, token: str, generation: int) -> Principal | str:
        try:
            self.lookups += 1
            try:
                record = await asyncio.to_thread(self.keys.find_by_secret, token)
            except Exception as exc:  # whatever the driver raises: the key is unchecked, not bad
                log.warning("looking up an API key failed: %s", type(exc).__name__)
                raise ServiceUnavailable(
                    "Keel cannot check API keys right now: its store is unreachable. Retry "
                    "shortly.") from None
            entry = _entry(token, record)
            if generation == self._generation:  # not invalidated meanwhile
                if entry is None:
                    self._remember_unknown(token)
                else:
                    self._known[token] = entry
        finally:
            if self._pending.get(token) is not None and generation == self._generation:
                del self._pending[token]
        return entry if entry is not None else _unknown_message(token)

    def _remember_unknown(self, token: str) -> None:
        unknown = self._unknown
        unknown[token] = None
        while len(unknown) > self._unknown_max:
            del unknown[next(iter(unknown))]

    # -- revocations ------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            try:
                version = await asyncio.to_thread(self.keys.version)
            except Exception as exc:  # the poller must outlive any outage
                self._poll_failed(exc)
                continue
            if self._failing:
                self._failing = False
                log.info("the key store is reachable again; key revocations are picked up again")
            if version != self._version:
                self._version = version
                self.invalidate()

    def _poll_failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("cannot read API key changes from the store (%s: %s); serving the keys "
                        "already known until it is back", type(exc).__name__, exc)


def _entry(token: str, record: KeyRecord | None) -> Principal | str | None:
    if record is None:
        return None
    if record.revoked_at is not None:
        return (f"The API key {mask(token)} ({record.name}) has been revoked. Ask your Keel admin "
                f"for a new one.")
    return record.principal()


def _unknown_message(token: str) -> str:
    return (f"Incorrect API key provided: {mask(token)}. Ask your Keel admin for a key "
            f"(`keel keys create`, see docs/auth.md).")


def _expired_message(token: str, name: str, expires_at: float) -> str:
    when = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"The API key {mask(token)} ({name}) expired at {when}. Ask your Keel admin for a "
            f"new one.")
