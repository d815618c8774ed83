"""POST /v1/feedback and GET /v1/feedback, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import StoreConfig
from keel.gateway import Gateway
from keel.ops.feedback import feedback_for, sentiment
from tests.api.conftest import fake_config
from tests.store.backends import db_url  # noqa: F401 - the fixture, parametrized per backend


@pytest.fixture
async def keel_with_feedback(db_url, tmp_path):  # noqa: F811
    gateway = Gateway(fake_config(tmp_path, store=StoreConfig(url=db_url)))
    app = create_app(gateway)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with ClientSession(base_url=str(server.make_url(""))) as session:
        yield session, gateway
    await server.close()


async def answer(session) -> str:
    body = {"model": "fake/echo", "messages": [{"role": "user", "content": "hi"}]}
    async with session.post("/v1/chat/completions", json=body) as response:
        assert response.status == 200
        return response.headers["x-keel-trace-id"]


async def test_feedback_right_after_the_answer_is_stored(keel_with_feedback):
    session, gateway = keel_with_feedback
    trace_id = await answer(session)
    # Sent at once: the trace is most likely still in the writer's buffer, which the
    # handler flushes before looking again.
    body = {"trace_id": trace_id, "score": -1, "comment": "wrong city",
            "correction": "Paris", "metadata": {"user": "u1"}}
    async with session.post("/v1/feedback", json=body) as response:
        assert response.status == 201
        stored = await response.json()
    assert stored["object"] == "feedback" and isinstance(stored["id"], int)
    assert {k: stored[k] for k in body} == body
    assert isinstance(stored["created_at"], int)

    async with session.post("/v1/feedback", json={"trace_id": trace_id, "score": 4}) as response:
        assert response.status == 201
    async with session.get("/v1/feedback", params={"trace_id": trace_id}) as response:
        listed = await response.json()
    assert listed["object"] == "list" and [f["score"] for f in listed["data"]] == [-1, 4]
    assert listed["data"][1]["comment"] is None
    assert len(feedback_for(gateway.runtime.store, trace_id)) == 2


async def test_unknown_trace_is_a_404(keel_with_feedback):
    session, _ = keel_with_feedback
    async with session.post("/v1/feedback", json={"trace_id": "0" * 24, "score": 1}) as response:
        assert response.status == 404
        error = (await response.json())["error"]
    assert error["code"] == "trace_not_found" and error["param"] == "trace_id"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("patch, param", [
    ({"score": 0}, "score"),
    ({"score": 6}, "score"),
    ({"score": -2}, "score"),
    ({"score": 2.5}, "score"),
    ({"score": "1"}, "score"),
    ({"score": True}, "score"),
    ({"score": None}, "score"),
    ({"comment": 5}, "comment"),
    ({"correction": ["x"]}, "correction"),
    ({"metadata": "m"}, "metadata"),
    ({"trace_id": 12}, "trace_id"),
    ({"rating": 1}, "rating"),
    ({"scale": "stars"}, "scale"),
    ({"scale": ["rating"]}, "scale"),
    ({"scale": "thumbs", "score": 4}, "score"),
    ({"scale": "rating", "score": -1}, "score"),
])
async def test_bad_fields_are_a_400_naming_the_field(keel_with_feedback, patch, param):
    session, _ = keel_with_feedback
    trace_id = await answer(session)
    async with session.post("/v1/feedback", json={"trace_id": trace_id, "score": 1, **patch}) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"]


async def test_missing_fields_and_bad_bodies(keel_with_feedback):
    session, _ = keel_with_feedback
    for body, param in [({"score": 1}, "trace_id"), ({"trace_id": "abc"}, "score")]:
        async with session.post("/v1/feedback", json=body) as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == param
    async with session.post("/v1/feedback", data=b"[1, 2]",
                            headers={"content-type": "application/json"}) as response:
        assert response.status == 400
    async with session.post("/v1/feedback", data=b"{oops",
                            headers={"content-type": "application/json"}) as response:
        assert response.status == 400
    async with session.get("/v1/feedback") as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "trace_id"


async def test_score_accepts_whole_floats(keel_with_feedback):
    session, _ = keel_with_feedback
    trace_id = await answer(session)
    async with session.post("/v1/feedback", json={"trace_id": trace_id, "score": 5.0}) as r:
        assert r.status == 201
        assert (await r.json())["score"] == 5


async def test_waits_for_a_trace_still_in_the_writers_buffer(db_url, tmp_path):  # noqa: F811
    from keel.config import TracingConfig

    # The writer would sit on the trace for a minute: only the handler's flush can store it.
    config = fake_config(tmp_path, store=StoreConfig(url=db_url),
                         tracing=TracingConfig(flush_interval_s=60))
    app = create_app(Gateway(config))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession(base_url=str(server.make_url(""))) as session:
            trace_id = await answer(session)
            body = {"trace_id": trace_id, "score": 1}
            async with session.post("/v1/feedback", json=body) as response:
                assert response.status == 201
    finally:
        await server.close()


async def test_the_scale_is_stored_and_read_from_the_score_when_not_given(keel_with_feedback):
    session, gateway = keel_with_feedback
    trace_id = await answer(session)
    for body in ({"score": 1, "scale": "rating"}, {"score": 1}, {"score": 3}, {"score": -1}):
        async with session.post("/v1/feedback", json={"trace_id": trace_id, **body}) as r:
            assert r.status == 201
    rows = feedback_for(gateway.runtime.store, trace_id)
    assert [(f["score"], f["scale"]) for f in rows] == [
        (1, "rating"), (1, "thumbs"), (3, "rating"), (-1, "thumbs")]
    assert [sentiment(f["score"], f["scale"]) for f in rows] == ["down", "up", "neutral", "down"]
