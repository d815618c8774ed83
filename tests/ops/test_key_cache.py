"""KeyCache: a secret costs one store lookup, then a dict lookup; revocations are picked up."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from keel.config import AuthConfig
from keel.errors import AuthenticationError
from keel.ops import key_cache as key_cache_module
from keel.ops.key_cache import KeyCache, mask
from keel.ops.keys import KeyStore
from keel.ops.principal import ADMIN

ADMIN_KEY = "admin-key-for-the-cache-tests"


@pytest.fixture
async def cache(store):
    keys = KeyCache(store, AuthConfig(admin_key=ADMIN_KEY, refresh_interval_s=3600))
    await keys.start()
    yield keys
    await keys.aclose()


async def refused(cache: KeyCache, token: str | None) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        await cache.resolve(token)
    error = info.value
    assert error.status == 401 and error.code == "invalid_api_key"
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    if token:
        assert token not in error.message
    return error


async def test_a_key_costs_one_lookup_then_none(cache, store):
    record, secret = KeyStore(store).create("team-a", models=["fake/echo"], rpm=5)
    first = await cache.resolve(secret)
    assert first.key_id == record.id and first.models == frozenset({"fake/echo"})
    assert first.rpm == 5
    for _ in range(50):
        assert await cache.resolve(secret) is first
    assert cache.lookups == 1


async def test_concurrent_first_uses_share_one_lookup(cache, store):
    record, secret = KeyStore(store).create("team-a")
    principals = await asyncio.gather(*(cache.resolve(secret) for _ in range(20)))
    assert {p.key_id for p in principals} == {record.id}
    assert cache.lookups == 1


async def test_the_admin_key_is_the_admin_principal(cache):
    assert await cache.resolve(ADMIN_KEY) is ADMIN
    assert cache.lookups == 0
    await refused(cache, ADMIN_KEY + "x")
    await refused(cache, ADMIN_KEY[:-1])


async def test_no_key_is_refused(cache):
    assert "Authorization: Bearer" in (await refused(cache, None)).message
    await refused(cache, "")


async def test_unknown_secrets_are_remembered_and_masked(cache):
    garbage = "sk-keel-" + "x" * 36 + "abcd"
    error = await refused(cache, garbage)
    assert "sk-keel-…abcd" in error.message and "Incorrect API key" in error.message
    await refused(cache, garbage)
    assert cache.lookups == 1
    # A short token shows nothing of itself.
    assert "short" not in (await refused(cache, "short")).message


async def test_the_unknown_secrets_kept_are_bounded_oldest_first(store):
    keys = KeyCache(store, AuthConfig(refresh_interval_s=3600), unknown_max=3)
    tokens = [f"garbage-token-number-{i}" for i in range(5)]
    for token in tokens:
        await refused(keys, token)
    assert list(keys._unknown) == tokens[2:]
    await refused(keys, tokens[-1])
    assert keys.lookups == 5  # still remembered
    await refused(keys, tokens[0])
    assert keys.lookups == 6  # dropped, looked up again


async def test_a_revoked_key_is_refused_as_revoked(cache, store):
    keys = KeyStore(store)
    record, secret = keys.create("leaver")
    keys.revoke(record.id)
    error = await refused(cache, secret)
    assert "revoked" in error.message and "leaver" in error.message
    assert mask(secret) in error.message


async def test_an_expired_key_is_refused_even_from_the_cache(cache, store, monkeypatch):
    _, secret = KeyStore(store).create("temp", expires_in_s=3600)
    assert (await cache.resolve(secret)).name == "temp"

    class Later:
        @staticmethod
        def time():
            return time.time() + 7200

    monkeypatch.setattr(key_cache_module, "time", Later)
    error = await refused(cache, secret)
    assert "expired" in error.message
    assert cache.lookups == 1  # the cached principal's expiry, no new query


async def test_a_key_created_expired_is_refused(cache, store):
    _, secret = KeyStore(store).create("gone", expires_in_s=1e-6)
    assert "expired" in (await refused(cache, secret)).message


async def test_invalidate_drops_what_the_cache_knew(cache, store):
    keys = KeyStore(store)
    record, secret = keys.create("team-a")
    await cache.resolve(secret)
    keys.revoke(record.id)
    assert (await cache.resolve(secret)).key_id == record.id  # cached: the poll is an hour away
    cache.invalidate()
    assert "revoked" in (await refused(cache, secret)).message


async def test_a_rotated_secret_stops_working_after_invalidate(cache, store):
    keys = KeyStore(store)
    record, old = keys.create("team-a")
    await cache.resolve(old)
    _, new = keys.rotate(record.id)
    cache.invalidate()
    await refused(cache, old)
    assert (await cache.resolve(new)).key_id == record.id


async def test_the_poll_picks_up_a_revocation_made_elsewhere(store):
    keys = KeyStore(store)
    record, secret = keys.create("team-a")
    cache = KeyCache(store, AuthConfig(refresh_interval_s=0.05))
    await cache.start()
    try:
        await cache.resolve(secret)
        keys.revoke(record.id)  # as `keel keys revoke` or another replica would
        deadline = time.monotonic() + 5
        while True:
            try:
                await cache.resolve(secret)
            except AuthenticationError as exc:
                assert "revoked" in exc.message
                break
            assert time.monotonic() < deadline, "the revocation was not picked up in 5 s"
            await asyncio.sleep(0.05)
    finally:
        await cache.aclose()


class AwayStore:
    """A KeyStore whose database is away: every call fails."""

    def version(self):
        raise ConnectionError("the database is away")

    def find_by_secret(self, secret):
        raise ConnectionError("the database is away")


async def test_a_store_outage_is_logged_once_and_known_keys_keep_working(store, caplog):
    record, secret = KeyStore(store).create("team-a")
    cache = KeyCache(store, AuthConfig(refresh_interval_s=0.02))
    await cache.start()
    try:
        await cache.resolve(secret)
        cache.keys = AwayStore()
        with caplog.at_level(logging.WARNING, logger="keel.auth"):
            await asyncio.sleep(0.3)  # several polls fail
            assert (await cache.resolve(secret)).key_id == record.id
            # An unknown secret cannot be checked now: 503, not a 401 that would be a lie.
            with pytest.raises(Exception) as info:
                await cache.resolve("sk-keel-never-seen-before-0000")
            assert info.value.status == 503
        polls = [r for r in caplog.records if "cannot read API key changes" in r.message]
        assert len(polls) == 1
        assert secret not in caplog.text
    finally:
        await cache.aclose()
