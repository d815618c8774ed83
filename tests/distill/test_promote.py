"""`keel distill promote` and the `shadow` layer, on the fake upstream over real sockets: shadow
never changes or delays the served answer and fills an eval run; a canary share holds and
x-keel-model tells who answered; the router snippet validates; --write edits keel.yaml safely."""

from __future__ import annotations

import random
import time
from contextlib import asynccontextmanager

import orjson
import pytest
import yaml
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel import plugins
from keel.api import create_app
from keel.config import KeelConfig
from keel.distill import lineage
from keel.evals import runs
from keel.gateway import Gateway
from keel.orchestration.router.layer import RouterLayerOptions
from keel.providers.fake_server import serve_fake_upstream
from keel.store import open_store
from tests.distill.test_evaluate import keel as distill
from tests.store.backends import db_url  # noqa: F401  (fixture)

MESSAGES = [{"role": "user", "content": "ping pong"}]


@pytest.fixture(autouse=True)
def shadow_layer(monkeypatch):
    """The `shadow` layer under its name, whether or not pyproject's entry point is installed."""
    if "shadow" not in plugins.available("keel.layers"):
        monkeypatch.setitem(plugins._BUILTIN["keel.layers"], "shadow",
                            "keel.distill.shadow:ShadowLayer")
        plugins.available.cache_clear()
    yield
    plugins.available.cache_clear()


@pytest.fixture
def upstream():
    with serve_fake_upstream() as url:
        yield url


def config_dict(tmp_path, db_url, upstream, models):  # noqa: F811
    return {
        "state_dir": str(tmp_path / "state"),
        "store": {"url": db_url},
        "providers": {"up": {"kind": "openai", "base_url": upstream, "read_timeout": 10.0}},
        "models": models,
        "pipeline": [],
    }


@asynccontextmanager
async def keel(raw: dict):
    gateway = Gateway(KeelConfig.model_validate(raw))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), gateway
    finally:
        await server.close()


async def ask(url: str, model: str, content: str = "ping pong", stream: bool = False):
    body = {"model": model, "messages": [{"role": "user", "content": content}],
            "stream": stream}
    started = time.perf_counter()
    async with ClientSession() as client, client.post(f"{url}/v1/chat/completions",
                                                      json=body) as resp:
        raw = await resp.read()
        return resp.status, resp.headers, raw, time.perf_counter() - started


def answer(raw: bytes) -> str:
    return orjson.loads(raw)["choices"][0]["message"]["content"]


def shadow_of(gateway, route: str):
    (layer,) = [x for x in gateway.routes[route].layers if x.name == "shadow"]
    return layer


# -- shadow ------------------------------------------------------------------------------------


async def test_shadow_never_delays_or_changes_the_answer_and_fills_an_eval_run(
        tmp_path, db_url, upstream):  # noqa: F811
    # The student echoes too, but only after 600 ms; the served model answers at once.
    shadow = {"student": "student", "share": 1.0, "seed": 1}
    models = {"chat": {"provider": "up", "model": "echo", "pipeline": [{"shadow": shadow}]},
              "student": {"provider": "up", "model": "slow-600"}}
    async with keel(config_dict(tmp_path, db_url, upstream, models)) as (url, gateway):
        plain = await ask(url, "student", "warm up")  # the student really is slow
        assert plain[3] >= 0.55
        layer = shadow_of(gateway, "chat")
        for i in range(4):
            status, headers, raw, took = await ask(url, "chat", f"question {i}")
            assert status == 200 and answer(raw) == f"question {i}"
            assert headers["x-keel-model"] == "echo" and "x-keel-canary" not in headers
            assert took < 0.4, f"the served answer waited for the shadow call ({took:.2f}s)"
        status, _, raw, took = await ask(url, "chat", "streamed question", stream=True)
        assert status == 200 and b"streamed" in raw and took < 0.4
        assert layer.sampled == 5
        await layer.drain()
        run_id = layer.run_id
    store = open_store(db_url)
    try:
        run = runs.get_run(store, run_id)
        cells = runs.results(store, run_id)
    finally:
        store.close()
    assert run["suite"] == "shadow-chat" and run["dataset_name"] == "shadow:chat"
    assert len(cells) == 5 and {c["variant"] for c in cells} == {"student"}
    served = sorted(c["output"]["served"] for c in cells)
    assert served == sorted([f"question {i}" for i in range(4)] + ["streamed question"])
    assert all(c["grades"]["agreement"]["score"] == 1.0 for c in cells)
    assert all(c["latency_ms"] >= 550 for c in cells)
    assert run["summary"]["variants"]["student"]["graders"]["agreement"]["mean"] == 1.0


async def test_shadow_with_a_model_graded_judge_and_a_sampled_share(tmp_path, db_url, upstream):  # noqa: F811
    shadow = {"student": "student", "share": 0.5, "seed": 3,
              "judge": {"kind": "fact", "model": "judge-d", "name": "same-facts"}}
    models = {"chat": {"provider": "up", "model": "echo", "pipeline": [{"shadow": shadow}]},
              "student": {"provider": "up", "model": "fixed:Lyon"},
              "judge-d": {"provider": "up", "model": "fixed:D"}}  # "disagrees"
    picks = random.Random(3)
    expected = sum(picks.random() < 0.5 for _ in range(12))
    async with keel(config_dict(tmp_path, db_url, upstream, models)) as (url, gateway):
        for i in range(12):
            status, _, raw, _ = await ask(url, "chat", f"where is {i}")
            assert status == 200 and answer(raw) == f"where is {i}"
        layer = shadow_of(gateway, "chat")
        await layer.drain()
    store = open_store(db_url)
    try:
        cells = runs.results(store, layer.run_id)
    finally:
        store.close()
    assert 0 < expected < 12 and len(cells) == expected
    grades = [c["grades"]["same-facts"] for c in cells]
    assert {g["label"] for g in grades} == {"D"} and {g["score"] for g in grades} == {0.0}
    assert {c["output"]["text"] for c in cells} == {"Lyon"}


# -- canary ------------------------------------------------------------------------------------


async def test_canary_share_holds_and_x_keel_model_tells(tmp_path, db_url, upstream):  # noqa: F811
    shadow = {"student": "student", "mode": "serve", "share": 0.25, "seed": 7}
    models = {"chat": {"provider": "up", "model": "fixed:teacher",
                       "pipeline": [{"shadow": shadow}]},
              "student": {"provider": "up", "model": "fixed:student"}}
    n = 200
    picks = random.Random(7)
    expected = sum(picks.random() < 0.25 for _ in range(n))
    answered = {"teacher": 0, "student": 0}
    async with keel(config_dict(tmp_path, db_url, upstream, models)) as (url, _):
        for i in range(n):
            status, headers, raw, _ = await ask(url, "chat", f"q{i}")
            assert status == 200
            who = answer(raw)
            answered[who] += 1
            assert headers["x-keel-model"] == f"fixed:{who}"
            assert (headers.get("x-keel-canary") == "student") == (who == "student")
        status, headers, raw, _ = await ask(url, "chat", "stream", stream=True)
        assert status == 200
    assert answered["student"] == expected
    assert 0.18 * n <= answered["student"] <= 0.32 * n


# -- promote -----------------------------------------------------------------------------------


def promote_setup(tmp_path, db_url, upstream, comment: bool = False):  # noqa: F811
    models = {"chat": {"provider": "up", "model": "echo", "pricing": {"input": 5, "output": 15}},
              "student": {"provider": "up", "model": "fixed:pong"}}
    raw = config_dict(tmp_path, db_url, upstream, models)
    path = tmp_path / "keel.yaml"
    text = yaml.safe_dump(raw, sort_keys=False)
    path.write_text(("# my gateway\n" if comment else "") + text)
    store = open_store(db_url)
    try:
        run_id = runs.create_run(store, suite="distill-faq", dataset_name="faq-test",
                                 dataset_version="v1", config={}, git_commit=None,
                                 keel_version="0")
        job_id = lineage.create_job(store, backend="openai", base_model="smollm2", set_id=None,
                                    options={"evaluations": [{"eval_run_id": run_id}]})
        lineage.update_job(store, job_id, status="succeeded", result_model="student")
    finally:
        store.close()
    return path, job_id, run_id


async def test_promote_shadow_writes_keel_yaml_and_records_the_lineage(
        tmp_path, db_url, upstream):  # noqa: F811
    path, job_id, run_id = promote_setup(tmp_path, db_url, upstream)
    result = distill("promote", job_id, "--route", "chat", "--mode", "shadow", "--share", "0.2",
                     "--seed", "3", "--judge", "fuzzy_match:name=agree", "--config", path,
                     "--write", path, "--json")
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.stdout)
    assert out["approved_by"] == run_id and out["written"] == str(path)
    written = yaml.safe_load(path.read_text())
    assert (tmp_path / "keel.yaml.bak").exists()
    shadow = written["models"]["chat"]["pipeline"][-1]["shadow"]
    assert shadow == {"student": "student", "mode": "shadow", "share": 0.2, "seed": 3,
                      "judge": {"kind": "fuzzy_match", "name": "agree"},
                      "run": out["shadow_run"]}
    assert written["models"]["chat"]["pricing"] == {"input": 5, "output": 15}
    store = open_store(db_url)
    try:
        (promotion,) = lineage.promotions(store, "chat")
        assert runs.get_run(store, out["shadow_run"])["suite"] == "shadow-chat"
    finally:
        store.close()
    assert (promotion["job_id"], promotion["model"], promotion["mode"], promotion["share"],
            promotion["eval_run_id"]) == (job_id, "student", "shadow", 0.2, run_id)
    # The written file serves: the shadow cells land in the run the promotion created.
    from keel.config import load_config

    gateway_raw = load_config(path).model_dump(mode="json", exclude_unset=True)
    async with keel(gateway_raw) as (url, gateway):
        for i in range(20):
            status, _, raw, _ = await ask(url, "chat", f"hello {i}")
            assert status == 200 and answer(raw) == f"hello {i}"
        layer = shadow_of(gateway, "chat")
        await layer.drain()
    store = open_store(db_url)
    try:
        cells = runs.results(store, out["shadow_run"])
    finally:
        store.close()
    assert len(cells) == layer.sampled > 0
    assert {c["grades"]["agree"]["score"] for c in cells} == {0.0}  # "pong" ≠ "hello i"


def test_promote_refuses_to_rewrite_a_commented_file_and_prints_the_snippet(
        tmp_path, db_url, upstream):  # noqa: F811
    path, job_id, _ = promote_setup(tmp_path, db_url, upstream, comment=True)
    before = path.read_text()
    result = distill("promote", job_id, "--route", "chat", "--mode", "canary", "--share", "0.3",
                     "--config", path, "--write", path)
    assert result.exit_code == 2 and "has comments" in result.output
    assert "mode: serve" in result.output and "share: 0.3" in result.output
    assert path.read_text() == before and not (tmp_path / "keel.yaml.bak").exists()


def test_promote_router_snippet_is_a_valid_config(tmp_path, db_url, upstream):  # noqa: F811
    path, _, run_id = promote_setup(tmp_path, db_url, upstream)
    result = distill("promote", "student", "--route", "chat", "--mode", "router",
                     "--approved-by", run_id[:12], "--config", path, "--json")
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.stdout)
    assert out["approved_by"] == run_id and out["job_id"] is None
    router = out["snippet"]["models"]["chat"]["router"]
    assert router["deployments"] == [
        {"provider": "up", "model": "echo", "group": "strong"},
        {"provider": "up", "model": "fixed:pong", "group": "cheap"}]
    assert router["learned"] == {"strong": "strong", "cheap": "cheap",
                                 "model_file": "router-chat.npz"}
    RouterLayerOptions.model_validate(router)
    raw = yaml.safe_load(path.read_text())
    raw["models"].update(yaml.safe_load(out["yaml"])["models"])
    config = KeelConfig.model_validate(raw)
    assert config.models["chat"].router["learned"]["cheap"] == "cheap"
    assert out["train"] == f"keel router train {run_id} --strong teacher --cheap student " \
                           "--out router-chat.npz"
    result = distill("promote", "nobody", "--route", "chat", "--mode", "router",
                     "--config", path)
    assert result.exit_code == 2 and "neither a distillation job nor a model" in result.output


def test_canary_layer_rejects_an_unknown_student(tmp_path, db_url, upstream):  # noqa: F811
    from keel.errors import ConfigError

    models = {"chat": {"provider": "up", "model": "echo",
                       "pipeline": [{"shadow": {"student": "ghost"}}]}}
    with pytest.raises(ConfigError, match="no model 'ghost'"):
        Gateway(KeelConfig.model_validate(config_dict(tmp_path, db_url, upstream, models)))
