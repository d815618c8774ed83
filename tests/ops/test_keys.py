"""KeyStore on each store backend: create, find, revoke, rotate, validation and version()."""

from __future__ import annotations

import hashlib
import time

import pytest
import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.ops.keys import SECRET_PREFIX, KeyStore, parse_duration
from keel.ops.principal import DEFAULT_SURFACES
from keel.store.models import api_keys


@pytest.fixture
def keys(store):
    return KeyStore(store)


def test_create_returns_the_secret_once_and_stores_only_its_hash(keys, store):
    record, secret = keys.create("team-a", models=["gpt-4o", "gpt-4o-mini"], budget_usd=50,
                                 rpm=60, tpm=10_000, metadata={"team": "a"}, expires_in_s=3600)
    assert secret.startswith(SECRET_PREFIX) and len(secret) == len(SECRET_PREFIX) + 40
    assert record.id.startswith("key_") and record.hint.endswith(secret[-4:])
    assert record.status() == "active" and record.period == "month"  # the budget's default
    assert record.surfaces == DEFAULT_SURFACES and record.models == ("gpt-4o", "gpt-4o-mini")
    assert record.expires_at == pytest.approx(record.created_at + 3600)
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(api_keys)).mappings().one()
    assert secret not in str(dict(row))
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert "secret" not in record.to_dict()
    assert keys.get(record.id) == record


def test_find_by_secret(keys):
    record, secret = keys.create("app")
    found = keys.find_by_secret(secret)
    assert found is not None and found.id == record.id
    assert keys.find_by_secret(secret + "x") is None
    assert keys.find_by_secret(SECRET_PREFIX + "nope") is None


def test_revoke_keeps_the_key_listed_with_its_status(keys):
    kept, _ = keys.create("kept")
    gone, secret = keys.create("gone")
    revoked = keys.revoke(gone.id)
    assert revoked.status() == "revoked" and revoked.revoked_at is not None
    assert keys.find_by_secret(secret).status() == "revoked"  # the caller tells it apart
    assert [r.id for r in keys.list()] == [kept.id, gone.id]
    assert [r.id for r in keys.list(include_revoked=False)] == [kept.id]
    assert keys.revoke(gone.id).revoked_at == revoked.revoked_at  # twice: the first time stands


def test_rotate_replaces_the_secret_and_keeps_id_and_limits(keys):
    record, old = keys.create("team-b", budget_usd=5, period="day", rpm=10,
                              metadata={"team": "b"})
    rotated, new = keys.rotate(record.id)
    assert new != old and rotated.hint.endswith(new[-4:])
    assert keys.find_by_secret(old) is None
    assert keys.find_by_secret(new).id == record.id
    assert (rotated.id, rotated.rpm, rotated.budget_usd, rotated.period, rotated.metadata) == (
        record.id, 10, 5.0, "day", {"team": "b"})
    keys.revoke(record.id)
    with pytest.raises(InvalidRequest) as err:
        keys.rotate(record.id)
    assert err.value.param == "id"


def test_unknown_ids_are_key_not_found(keys):
    for action in (keys.get, keys.revoke, keys.rotate):
        with pytest.raises(NotFound) as err:
            action("key_missing")
        assert err.value.status == 404 and err.value.code == "key_not_found"


def test_an_expired_key_says_so():
    from keel.ops.keys import KeyRecord

    record = KeyRecord(id="key_x", name="x", hint="h", surfaces=("chat",), expires_at=100.0)
    assert record.status(now=99.0) == "active" and record.status(now=100.0) == "expired"
    assert record.status() == "expired"


@pytest.mark.parametrize("kwargs,param", [
    (dict(name=""), "name"),
    (dict(name="   "), "name"),
    (dict(name="x" * 201), "name"),
    (dict(name=None), "name"),
    (dict(models="gpt-4o"), "models"),
    (dict(models=[""]), "models"),
    (dict(surfaces=[]), "surfaces"),
    (dict(surfaces=["chat", "root"]), "surfaces"),
    (dict(rpm=0), "rpm"),
    (dict(rpm=True), "rpm"),
    (dict(rpm=1.5), "rpm"),
    (dict(rpm=2**31), "rpm"),
    (dict(tpm=-1), "tpm"),
    (dict(budget_usd=0), "budget_usd"),
    (dict(budget_usd=float("inf")), "budget_usd"),
    (dict(budget_usd=float("nan")), "budget_usd"),
    (dict(budget_usd="5"), "budget_usd"),
    (dict(budget_usd=5, period="week"), "period"),
    (dict(period="day"), "period"),
    (dict(expires_in_s=0), "expires"),
    (dict(expires_in_s=float("inf")), "expires"),
    (dict(metadata=["team", "a"]), "metadata"),
])
def test_validation_errors_name_their_field(keys, kwargs, param):
    kwargs = {"name": "ok", **kwargs}
    with pytest.raises(InvalidRequest) as err:
        keys.create(kwargs.pop("name"), **kwargs)
    assert err.value.param == param and err.value.status == 400
    assert keys.list() == []  # nothing half-created


@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("12h", 43200), ("30d", 2592000),
                                          ("2w", 1209600), (" 1.5H ", 5400), ("45s", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "30y", "1e3d", "9" * 400 + "d"])
def test_parse_duration_refuses(text):
    with pytest.raises(InvalidRequest) as err:
        parse_duration(text, "--expires")
    assert err.value.param == "--expires"


def test_version_moves_on_every_change(keys):
    seen = [keys.version()]
    assert seen[0] == 0.0
    record, _ = keys.create("a")
    seen.append(keys.version())
    keys.rotate(record.id)
    seen.append(keys.version())
    keys.revoke(record.id)
    seen.append(keys.version())
    keys.revoke(record.id)  # even a repeated revoke: a cache that missed the first re-reads
    seen.append(keys.version())
    assert seen == sorted(set(seen)), seen  # strictly increasing
    assert keys.version() == seen[-1]  # reading changes nothing


def test_version_moves_even_when_this_clock_is_behind(keys, store):
    # A change written by a machine whose clock runs ahead (another replica, the CLI elsewhere)
    # must not hide later changes made here.
    record, _ = keys.create("a")
    with store.engine.begin() as conn:
        conn.execute(api_keys.update().values(updated_at=time.time() + 3600))
    ahead = keys.version()
    keys.revoke(record.id)
    assert keys.version() > ahead
