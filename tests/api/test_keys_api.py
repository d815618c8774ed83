"""/v1/keys through a real `keel serve`: auth off on loopback (the anonymous caller has every
surface), and auth on with KEEL_ADMIN_KEY, where the keys it creates are then used as bearer
keys."""

from __future__ import annotations

import pytest

from tests.servers import http, keel_server

CONFIG = """
providers:
  fake: {kind: fake}
embedders:
  minilm: {kind: fake}
models:
  fake/echo: {provider: fake, model: echo}
"""
ADMIN_KEY = "sk-admin-test-0123456789"


@pytest.fixture(scope="module", params=["open", "admin"])
def keel(request, tmp_path_factory):
    """(base URL …/v1, the headers an admin sends, mode)."""
    admin = request.param == "admin"
    env = {"KEEL_ADMIN_KEY": ADMIN_KEY if admin else ""}
    with keel_server(tmp_path_factory.mktemp(f"keys-{request.param}"), CONFIG, env=env) as url:
        yield url, ({"Authorization": f"Bearer {ADMIN_KEY}"} if admin else {}), request.param


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def create(keel, **body):
    url, admin, _ = keel
    status, headers, key = http("POST", f"{url}/keys", {"name": "team-a", **body}, admin)
    assert status == 201, key
    return key, headers


def test_create_returns_the_key_and_its_secret(keel):
    url, _, _ = keel
    key, headers = create(keel, models=["fake/echo"], surfaces=["chat", "embeddings"], rpm=60,
                          tpm=10_000, budget_usd=50, period="month", expires="30d",
                          metadata={"team": "a"})
    assert key["object"] == "api_key" and key["id"].startswith("key_")
    assert key["secret"].startswith("sk-keel-") and key["hint"].endswith(key["secret"][-4:])
    assert key["status"] == "active" and key["name"] == "team-a"
    assert (key["models"], key["surfaces"]) == (["fake/echo"], ["chat", "embeddings"])
    assert (key["rpm"], key["tpm"], key["budget_usd"], key["period"]) == (60, 10000, 50.0, "month")
    assert key["metadata"] == {"team": "a"} and key["revoked_at"] is None
    assert key["expires_at"] == pytest.approx(key["created_at"] + 30 * 86400)
    assert headers["Cache-Control"] == "no-store"
    # The new secret is a key the gateway accepts.
    status, _, models = http("GET", f"{url}/models", headers=bearer(key["secret"]))
    assert status == 200 and models["object"] == "list"


def test_list_and_get_never_show_the_secret(keel):
    url, admin, _ = keel
    key, _ = create(keel, name="lister")
    status, _, listed = http("GET", f"{url}/keys", headers=admin)
    assert status == 200 and listed["object"] == "list"
    mine = [k for k in listed["data"] if k["id"] == key["id"]]
    assert len(mine) == 1 and mine[0]["name"] == "lister"
    status, _, got = http("GET", f"{url}/keys/{key['id']}", headers=admin)
    assert status == 200 and got == {k: v for k, v in key.items() if k != "secret"}
    for body in (listed, got):
        assert key["secret"] not in str(body) and "secret" not in str(body)


def test_revoke(keel):
    url, admin, mode = keel
    key, _ = create(keel, name="to-revoke")
    status, _, revoked = http("DELETE", f"{url}/keys/{key['id']}", headers=admin)
    assert status == 200 and revoked["status"] == "revoked" and revoked["revoked_at"]
    assert "secret" not in revoked
    status, _, got = http("GET", f"{url}/keys/{key['id']}", headers=admin)
    assert got["status"] == "revoked"
    status, _, error = http("POST", f"{url}/keys/{key['id']}/rotate", headers=admin)
    assert status == 400 and error["error"]["param"] == "id"
    if mode == "admin":  # this replica refuses it at once, not at its next refresh
        status, _, error = http("GET", f"{url}/models", headers=bearer(key["secret"]))
        assert status == 401 and error["error"]["code"] == "invalid_api_key"


def test_rotate(keel):
    url, admin, mode = keel
    key, _ = create(keel, name="to-rotate", rpm=7, metadata={"team": "b"})
    status, headers, rotated = http("POST", f"{url}/keys/{key['id']}/rotate", headers=admin)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert rotated["id"] == key["id"] and rotated["secret"] != key["secret"]
    assert (rotated["rpm"], rotated["metadata"], rotated["status"]) == (7, {"team": "b"}, "active")
    assert rotated["hint"].endswith(rotated["secret"][-4:])
    status, _, _ = http("GET", f"{url}/models", headers=bearer(rotated["secret"]))
    assert status == 200
    if mode == "admin":
        status, _, error = http("GET", f"{url}/models", headers=bearer(key["secret"]))
        assert status == 401 and error["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("method,path", [("GET", "/keys/key_missing"),
                                         ("DELETE", "/keys/key_missing"),
                                         ("POST", "/keys/key_missing/rotate")])
def test_unknown_key_is_a_404(keel, method, path):
    url, admin, _ = keel
    status, _, error = http(method, f"{url}{path}", headers=admin)
    assert status == 404 and error["error"]["code"] == "key_not_found"
    assert error["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,param", [
    ({"name": "x", "owner": "me"}, "owner"),
    ({"name": "x", "secret": "sk-keel-mine"}, "secret"),  # a secret is never chosen
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"name": "x", "models": "fake/echo"}, "models"),
    ({"name": "x", "surfaces": ["chat", "root"]}, "surfaces"),
    ({"name": "x", "surfaces": []}, "surfaces"),
    ({"name": "x", "rpm": 0}, "rpm"),
    ({"name": "x", "rpm": "60"}, "rpm"),
    ({"name": "x", "rpm": 2**40}, "rpm"),
    ({"name": "x", "tpm": 1.5}, "tpm"),
    ({"name": "x", "budget_usd": -1}, "budget_usd"),
    ({"name": "x", "budget_usd": 5, "period": "year"}, "period"),
    ({"name": "x", "period": "day"}, "period"),
    ({"name": "x", "expires": "soon"}, "expires"),
    ({"name": "x", "expires": 30}, "expires"),
    ({"name": "x", "metadata": ["team", "a"]}, "metadata"),
    ({"name": "x\u0000y"}, "name"),
    ({"name": "x", "metadata": {"team": "a\u0000"}}, "metadata.team"),
])
def test_bad_bodies_are_a_400_naming_the_field(keel, body, param):
    url, admin, _ = keel
    status, _, error = http("POST", f"{url}/keys", body, admin)
    assert status == 400, error
    assert error["error"]["param"] == param and error["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"null", b""])
def test_a_body_that_is_not_an_object_is_a_400(keel, raw):
    url, admin, _ = keel
    status, _, error = http("POST", f"{url}/keys", raw, admin)
    assert status == 400 and set(error["error"]) == {"message", "type", "param", "code"}


def test_admin_only_when_auth_is_on(keel):
    url, _, mode = keel
    if mode == "open":  # auth off on loopback: the anonymous caller has every surface
        status, _, listed = http("GET", f"{url}/keys")
        assert status == 200 and listed["object"] == "list"
        return
    status, _, error = http("GET", f"{url}/keys")
    assert status == 401 and error["error"]["code"] == "invalid_api_key"
    status, _, error = http("GET", f"{url}/keys", headers=bearer("sk-keel-wrong"))
    assert status == 401
    user, _ = create(keel, name="no-admin")  # the default surfaces leave admin out
    for method, path in [("GET", "/keys"), ("POST", "/keys"), ("GET", f"/keys/{user['id']}"),
                         ("DELETE", f"/keys/{user['id']}"),
                         ("POST", f"/keys/{user['id']}/rotate")]:
        status, _, error = http(method, f"{url}{path}", {"name": "x"} if method == "POST"
                                else None, bearer(user["secret"]))
        assert status == 403, (method, path, error)
    operator, _ = create(keel, name="operator", surfaces=["admin"])
    status, _, listed = http("GET", f"{url}/keys", headers=bearer(operator["secret"]))
    assert status == 200 and user["id"] in {k["id"] for k in listed["data"]}
