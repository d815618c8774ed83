"""`keel keys create | list | show | revoke | rotate` through the real `keel` command group."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from keel.cli.main import cli
from keel.ops.keys import KeyStore
from keel.store import open_store

SECRET = re.compile(r"sk-keel-[A-Za-z0-9_-]{40}")


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'keel.db'}"


def run(*args: str):
    return CliRunner().invoke(cli, ["keys", *args], catch_exceptions=False)


def create(db, *args: str) -> tuple[str, str]:
    result = run("create", "--db", db, *args)
    assert result.exit_code == 0, result.output
    secrets_shown = SECRET.findall(result.output)
    assert len(secrets_shown) == 1, result.output  # printed once
    key_id = re.search(r"key_[0-9a-f]{16}", result.output).group(0)
    return key_id, secrets_shown[0]


def test_create_prints_the_secret_once_with_a_warning(db):
    result = run("create", "--db", db, "--name", "team-a", "--budget-usd", "50", "--period",
                 "month", "--rpm", "60", "--tpm", "5000", "--models", "gpt-4o, gpt-4o-mini",
                 "--surfaces", "chat,embeddings", "--expires", "30d", "--metadata", "team=a",
                 "--metadata", "env=prod")
    assert result.exit_code == 0, result.output
    assert "cannot be shown again" in result.output
    [secret] = SECRET.findall(result.output)
    store = open_store(db)
    try:
        record = KeyStore(store).find_by_secret(secret)
    finally:
        store.close()
    assert record.id in result.output and record.name == "team-a"
    assert (record.rpm, record.tpm, record.budget_usd, record.period) == (60, 5000, 50.0, "month")
    assert record.models == ("gpt-4o", "gpt-4o-mini") and record.surfaces == ("chat", "embeddings")
    assert record.metadata == {"team": "a", "env": "prod"}
    assert record.expires_at == pytest.approx(record.created_at + 30 * 86400)


def test_list_shows_keys_without_their_secrets(db):
    key_id, secret = create(db, "--name", "team-a", "--budget-usd", "50", "--rpm", "60",
                            "--metadata", "team=a")
    result = run("list", "--db", db)
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    for column in ("id", "name", "hint", "status", "models", "surfaces", "limits", "budget",
                   "metadata", "created", "expires"):
        assert column in header
    assert key_id in result.output and "team-a" in result.output and "active" in result.output
    assert "60 rpm" in result.output and "$50/month" in result.output
    assert "team=a" in result.output and secret[-4:] in result.output  # the hint
    assert secret not in result.output and not SECRET.search(result.output)


def test_revoke_then_list_shows_it_revoked(db):
    key_id, _ = create(db, "--name", "gone")
    kept, _ = create(db, "--name", "kept")
    result = run("revoke", key_id, "--db", db)
    assert result.exit_code == 0 and f"revoked {key_id}" in result.output
    rows = json.loads(run("list", "--db", db, "--json").output)
    assert {r["id"]: r["status"] for r in rows} == {key_id: "revoked", kept: "active"}
    assert all("secret" not in r and "secret_hash" not in r for r in rows)
    shown = run("show", key_id, "--db", db)
    assert shown.exit_code == 0 and "revoked" in shown.output and key_id in shown.output


def test_rotate_prints_a_new_secret_and_the_old_one_stops(db):
    key_id, old = create(db, "--name", "app", "--rpm", "5")
    result = run("rotate", key_id, "--db", db)
    assert result.exit_code == 0, result.output
    [new] = SECRET.findall(result.output)
    assert new != old and "cannot be shown again" in result.output
    store = open_store(db)
    try:
        keys = KeyStore(store)
        assert keys.find_by_secret(old) is None
        assert keys.find_by_secret(new).id == key_id and keys.get(key_id).rpm == 5
    finally:
        store.close()


def test_json_output_parses(db):
    result = run("create", "--db", db, "--name", "bot", "--json")
    created = json.loads(result.output)
    assert created["secret"].startswith("sk-keel-") and created["status"] == "active"
    shown = json.loads(run("show", created["id"], "--db", db, "--json").output)
    assert shown["id"] == created["id"] and "secret" not in shown
    rotated = json.loads(run("rotate", created["id"], "--db", db, "--json").output)
    assert rotated["secret"] != created["secret"] and rotated["id"] == created["id"]
    revoked = json.loads(run("revoke", created["id"], "--db", db, "--json").output)
    assert revoked["status"] == "revoked"


@pytest.mark.parametrize("args,message", [
    (["create", "--name", "x", "--rpm", "0"], "rpm: expected a positive integer"),
    (["create", "--name", "x", "--surfaces", "chat,root"], "unknown surface 'root'"),
    (["create", "--name", "x", "--expires", "soon"], "--expires: expected a duration"),
    (["create", "--name", "x", "--metadata", "team"], "--metadata: expected KEY=VALUE"),
    (["create", "--name", "x", "--period", "day"], "period: only with budget_usd"),
    (["show", "key_missing"], "no API key 'key_missing'"),
    (["revoke", "key_missing"], "no API key 'key_missing'"),
    (["rotate", "key_missing"], "no API key 'key_missing'"),
])
def test_errors_are_one_clean_line(db, args, message):
    create(db, "--name", "first")  # the database exists, so show/revoke reach the lookup
    result = CliRunner().invoke(cli, ["keys", *args, "--db", db])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0


def test_reading_commands_do_not_create_a_database(tmp_path):
    result = CliRunner().invoke(cli, ["keys", "list", "--db", f"sqlite:///{tmp_path / 'no.db'}"])
    assert result.exit_code == 2 and "no database" in result.output
    assert not (tmp_path / "no.db").exists()


def test_list_with_no_keys(db):
    create(db, "--name", "x", "--json")
    store = open_store(db)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM api_keys")
    finally:
        store.close()
    result = run("list", "--db", db)
    assert result.exit_code == 0 and "no keys" in result.output
