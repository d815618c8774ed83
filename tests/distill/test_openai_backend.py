"""The `openai` training backend and `keel distill train` against `keel fake-upstream`'s
fine-tuning API, served over a real loopback socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml
from click.testing import CliRunner

from keel.cli.main import cli
from keel.config import KeelConfig, load_config
from keel.distill import lineage
from keel.distill.backends.base import TrainJob, backend_class
from keel.distill.backends.openai import OpenAIBackend
from keel.errors import ConfigError, UpstreamError
from keel.gateway import Gateway
from keel.pipeline.runtime import Runtime
from keel.providers.fake_server import serve_fake_upstream
from keel.store import open_store

KEY = "tuner-key"
FAST = {"provider": "tuner", "poll_interval": 0.01, "max_poll_interval": 0.05}
QUESTIONS = [f"How do I reset password number {i}?" for i in range(12)]


@pytest.fixture(autouse=True)
def _tuner_key(monkeypatch):
    monkeypatch.setenv("KEEL_TEST_TUNER_KEY", KEY)


@pytest.fixture(scope="module")
def upstream():
    with serve_fake_upstream(api_key=KEY) as url:
        yield url


@pytest.fixture
def train_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    lines = [{"messages": [{"role": "system", "content": "You are the support bot."},
                           {"role": "user", "content": q},
                           {"role": "assistant", "content": f"Open settings, step {i}."}]}
             for i, q in enumerate(QUESTIONS)]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def _config(tmp_path: Path, url: str, **models) -> Path:
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "providers": {"tuner": {"kind": "openai", "base_url": url,
                                    "api_key": "${KEEL_TEST_TUNER_KEY}"}},
        "models": models,
    }))
    return path


def _backend(tmp_path, url) -> OpenAIBackend:
    return backend_class("openai")(FAST, Runtime(load_config(_config(tmp_path, url))))


def _upstream(url: str, method: str, path: str) -> dict:
    """A request to the fake upstream, straight over HTTP (what the fake itself says)."""
    import urllib.request

    request = urllib.request.Request(url + path, method=method,
                                     headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def _follow(backend, job) -> list:
    return [update async for update in backend.follow(job)]


# -- the backend --------------------------------------------------------------------------------


async def test_a_job_goes_queued_running_succeeded_and_relays_each_event_once(
        tmp_path, upstream, train_file):
    backend = _backend(tmp_path, upstream)
    job = TrainJob(id="j1", base_model="smol", train_file=str(train_file),
                   validation_file=str(train_file), hyperparameters={"n_epochs": 2},
                   suffix="faq")
    external = await backend.start(job)
    assert external.startswith("ftjob-") and job.external_id == external
    updates = await _follow(backend, job)
    assert [u.status for u in updates] == ["queued", "running", "running", "succeeded"]
    final = updates[-1]
    assert final.result_model == f"ft:smol:keel:faq:{external.rsplit('-', 1)[1]}"
    assert final.progress == 1.0 and updates[1].progress == 0.5 and final.error is None
    relayed = [e for u in updates for e in u.events]
    upstream_events = _upstream(upstream, "GET", f"/fine_tuning/jobs/{external}/events")["data"]
    assert [e["id"] for e in relayed] == [e["id"] for e in reversed(upstream_events)]
    assert relayed[0]["message"] == f"Created fine-tuning job: {external}"
    assert [e["data"]["step"] for e in relayed if e["type"] == "metrics"] == [1, 2]
    created = _upstream(upstream, "GET", f"/fine_tuning/jobs/{external}")
    assert created["hyperparameters"]["n_epochs"] == 2 and created["validation_file"]
    uploaded = _upstream(upstream, "GET", f"/files/{created['training_file']}")
    assert (uploaded["purpose"], uploaded["bytes"]) == ("fine-tune", train_file.stat().st_size)


async def test_a_failed_job_ends_with_its_error(tmp_path, upstream, train_file):
    backend = _backend(tmp_path, upstream)
    job = TrainJob(id="j2", base_model="smol", train_file=str(train_file), suffix="fail-1")
    await backend.start(job)
    updates = await _follow(backend, job)
    assert updates[-1].status == "failed" and updates[-1].result_model is None
    assert updates[-1].error["code"] == "fake_training_failed"
    assert updates[-1].events[-1]["level"] == "error"


async def test_a_cancelled_job_ends_cancelled(tmp_path, upstream, train_file):
    backend = _backend(tmp_path, upstream)
    job = TrainJob(id="j3", base_model="smol", train_file=str(train_file), suffix="stall")
    await backend.start(job)
    statuses = []
    async for update in backend.follow(job):
        statuses.append(update.status)
        if update.status == "running":
            await backend.cancel(job)
    assert statuses == ["queued", "running", "cancelled"]
    assert _upstream(upstream, "GET", f"/fine_tuning/jobs/{job.external_id}")["status"] == \
        "cancelled"
    with pytest.raises(Exception, match="already cancelled"):
        await backend.cancel(job)


async def test_upstream_refusals_and_config_mistakes_are_clear(tmp_path, upstream, train_file,
                                                               monkeypatch):
    runtime = Runtime(load_config(_config(tmp_path, upstream)))
    with pytest.raises(ConfigError, match="provider 'openai' of kind openai"):
        OpenAIBackend({}, runtime)
    with pytest.raises(ConfigError, match="poll_interval"):
        OpenAIBackend({"provider": "tuner", "poll_interval": -1}, runtime)
    monkeypatch.setenv("KEEL_TEST_TUNER_KEY", "wrong")
    backend = OpenAIBackend(FAST, Runtime(load_config(_config(tmp_path, upstream))))
    with pytest.raises(UpstreamError, match="rejected Keel's API key"):
        await backend.start(TrainJob(id="j4", base_model="smol", train_file=str(train_file)))


def test_the_fake_api_speaks_the_openai_sdk(upstream, train_file):
    """The official SDK drives the fake end to end, and its strict types accept every answer."""
    from openai import OpenAI
    from openai.types import FileObject
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

    client = OpenAI(base_url=upstream, api_key=KEY, max_retries=0)
    with train_file.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    FileObject.model_validate(uploaded.model_dump())
    job = client.fine_tuning.jobs.create(model="smol", training_file=uploaded.id,
                                         hyperparameters={"n_epochs": 1}, suffix="sdk")
    for _ in range(5):
        job = client.fine_tuning.jobs.retrieve(job.id)
    FineTuningJob.model_validate(job.model_dump())
    assert job.status == "succeeded" and job.fine_tuned_model.startswith("ft:smol:keel:sdk:")
    events = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(events.data) == 2 and events.has_more
    older = client.fine_tuning.jobs.list_events(job.id, after=events.data[-1].id, limit=100)
    assert not older.has_more and older.data[-1].message.startswith("Created fine-tuning job")
    for event in events.data + older.data:
        FineTuningJobEvent.model_validate(event.model_dump())
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=100).data]
    answer = client.chat.completions.create(model=job.fine_tuned_model,
                                            messages=[{"role": "user", "content": QUESTIONS[3]}])
    assert answer.choices[0].message.content == "Open settings, step 3."
    assert answer.model == job.fine_tuned_model
    stream = client.chat.completions.create(model=job.fine_tuned_model, stream=True,
                                            messages=[{"role": "user", "content": "unseen"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "[ft] unseen"
    assert {c.model for c in chunks} == {job.fine_tuned_model}
    with pytest.raises(Exception, match="model_not_found|does not exist"):
        client.chat.completions.create(model="ft:smol:keel::nope",
                                       messages=[{"role": "user", "content": "hi"}])


async def test_failed_polls_are_retried_with_backoff_then_given_up(tmp_path):
    """A 503 or 429 while polling does not end a long job: the poll is retried, up to
    max_poll_failures in a row."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    calls: list[float] = []
    plan = {"fail": 2}

    async def get_job(request):
        calls.append(time.monotonic())
        if len(calls) <= plan["fail"]:
            status = 429 if len(calls) == 1 else 503
            return web.json_response({"error": {"message": "busy", "type": "x"}}, status=status)
        return web.json_response({"id": "ftjob-x", "status": "succeeded",
                                  "fine_tuned_model": "ft:smol:keel::x"})

    async def events(request):
        return web.json_response({"object": "list", "data": [], "has_more": False})

    app = web.Application()
    app.router.add_get("/v1/fine_tuning/jobs/ftjob-x", get_job)
    app.router.add_get("/v1/fine_tuning/jobs/ftjob-x/events", events)
    async with TestServer(app, host="127.0.0.1") as server:
        backend = _backend(tmp_path, str(server.make_url("/v1")))
        job = TrainJob(id="j5", base_model="smol", train_file="-", external_id="ftjob-x")
        (update,) = await _follow(backend, job)
        assert (update.status, update.result_model, len(calls)) == \
            ("succeeded", "ft:smol:keel::x", 3)
        assert calls[2] - calls[1] > calls[1] - calls[0] > 0.005  # the wait grew
        calls.clear()
        plan["fail"] = 100
        backend.options.max_poll_failures = 3
        with pytest.raises(UpstreamError, match="failed \\(503\\): busy"):
            await _follow(backend, job)
        assert len(calls) == 3


# -- the CLI ------------------------------------------------------------------------------------


def _train(config: Path, source, *args: str):
    result = CliRunner().invoke(cli, [
        "distill", "train", str(source), "--backend", "openai", "--base-model", "smol",
        "--provider", "tuner", "--config", str(config), "-o", "poll_interval=0.01",
        "-o", "max_poll_interval=0.05", *args])
    return result


def _store(tmp_path: Path):
    return open_store(f"sqlite:///{tmp_path / 'state' / 'keel.db'}")


def test_train_follows_records_and_the_trained_model_answers_as_a_keel_model(
        tmp_path, upstream, train_file):
    config = _config(tmp_path, upstream)
    result = _train(config, train_file, "--suffix", "faq", "--epochs", "2",
                    "--register", "faq-student")
    assert result.exit_code == 0, result.output
    assert "Fine-tuning job started" in result.output and "Step 2/2" in result.output
    assert "status: succeeded" in result.output
    store = _store(tmp_path)
    (row,) = lineage.list_jobs(store)
    assert (row["status"], row["backend"], row["base_model"]) == ("succeeded", "openai", "smol")
    assert row["result_model"].startswith("ft:smol:keel:faq:") and row["finished_at"]
    assert row["options"]["register"] == "faq-student"
    assert row["options"]["hyperparameters"] == {"n_epochs": 2}
    upstream_events = _upstream(upstream, "GET",
                                f"/fine_tuning/jobs/{row['external_id']}/events?limit=100")
    assert [e["id"] for e in row["events"]] == [e["id"] for e in reversed(upstream_events["data"])]
    # The printed keel.yaml snippet, as is, serves the trained model.
    snippet = yaml.safe_load(result.output[result.output.index("models:"):])
    assert snippet == {"models": {"faq-student": {"provider": "tuner",
                                                  "model": row["result_model"]}}}
    raw = yaml.safe_load(config.read_text())
    raw["models"] = snippet["models"]
    config.write_text(yaml.safe_dump(raw))
    learned, other = asyncio.run(_ask(config, "faq-student", QUESTIONS[5], "something else"))
    assert learned["choices"][0]["message"]["content"] == "Open settings, step 5."
    assert other["choices"][0]["message"]["content"] == "[ft] something else"
    listed = CliRunner().invoke(cli, ["distill", "jobs", "--config", str(config), "--json"])
    assert [j["id"] for j in orjson.loads(listed.output)] == [row["id"]]
    shown = CliRunner().invoke(cli, ["distill", "job", row["id"][:10], "--config", str(config)])
    assert shown.exit_code == 0 and "New fine-tuned model created" in shown.output
    assert row["result_model"] in shown.output


async def _ask(config: Path, model: str, *questions: str) -> list[dict]:
    async with Gateway(load_config(config)) as gateway:
        return [await gateway.complete({"model": model, "messages": [
            {"role": "user", "content": q}]}) for q in questions]


def test_a_failed_job_exits_1_with_its_error_stored(tmp_path, upstream, train_file):
    config = _config(tmp_path, upstream)
    result = _train(config, train_file, "--suffix", "fail")
    assert result.exit_code == 1
    assert "failed: fake_training_failed: fake: scripted training failure" in result.output
    (row,) = lineage.list_jobs(_store(tmp_path))
    assert row["status"] == "failed" and row["error"]["code"] == "fake_training_failed"
    assert row["result_model"] is None and row["events"][-1]["level"] == "error"


def test_no_wait_then_follow_and_cancel(tmp_path, upstream, train_file):
    config = _config(tmp_path, upstream)
    started = _train(config, train_file, "--no-wait", "--epochs", "1")
    assert started.exit_code == 0 and "keel distill job" in started.output
    stalled = _train(config, train_file, "--no-wait", "--suffix", "stall")
    assert stalled.exit_code == 0
    store = _store(tmp_path)
    stall_row, ok_row = lineage.list_jobs(store)
    assert (ok_row["status"], stall_row["status"]) == ("queued", "queued")
    followed = CliRunner().invoke(cli, ["distill", "job", ok_row["id"], "--follow",
                                        "--config", str(config)])
    assert followed.exit_code == 0 and "status: succeeded" in followed.output
    assert lineage.get_job(store, ok_row["id"])["result_model"].startswith("ft:smol:keel::")
    cancelled = CliRunner().invoke(cli, ["distill", "cancel", stall_row["id"], "--config",
                                         str(config)])
    assert cancelled.exit_code == 0, cancelled.output
    assert lineage.get_job(store, stall_row["id"])["status"] == "cancelled"
    assert _upstream(upstream, "GET", f"/fine_tuning/jobs/{stall_row['external_id']}")[
        "status"] == "cancelled"
    again = CliRunner().invoke(cli, ["distill", "cancel", stall_row["id"], "--config",
                                     str(config)])
    assert again.exit_code == 2 and "already cancelled" in again.output


def test_an_invalid_file_is_refused_before_any_upload(tmp_path, upstream, train_file):
    config = _config(tmp_path, upstream)
    before = len(_upstream(upstream, "GET", "/files")["data"])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(train_file.read_bytes() + b'{"messages": [{"role": "robot", "content": 1}]}\n')
    result = _train(config, bad)
    assert result.exit_code == 2
    assert "nothing was uploaded" in result.output and "line 13" in result.output
    assert len(_upstream(upstream, "GET", "/files")["data"]) == before
    assert lineage.list_jobs(_store(tmp_path)) == []


def test_train_on_a_training_set_uploads_its_splits(tmp_path, upstream):
    from keel.distill.dataset import Example, build_set

    config = _config(tmp_path, upstream)
    store = _store(tmp_path)
    examples = [Example(prompt=[{"role": "user", "content": f"question {i}?"}],
                        answer={"role": "assistant", "content": f"answer {i}."})
                for i in range(60)]
    built = build_set(store, "faq", examples, source={"test": True}, near_dup=None, pii="off")
    result = _train(config, "faq", "--epochs", "1")
    assert result.exit_code == 0, result.output
    (row,) = lineage.list_jobs(store)
    assert row["set_id"] == built.set_id and row["status"] == "succeeded"
    job = _upstream(upstream, "GET", f"/fine_tuning/jobs/{row['external_id']}")
    for split, key in (("train", "training_file"), ("validation", "validation_file")):
        content = _upstream_bytes(upstream, f"/files/{job[key]}/content")
        assert len(content.splitlines()) == built.splits[split]["count"] > 0


def _upstream_bytes(url: str, path: str) -> bytes:
    import urllib.request

    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def test_ctrl_c_cancels_the_job_at_the_backend(tmp_path, upstream, train_file):
    config = _config(tmp_path, upstream)
    command = [sys.executable, "-m", "keel", "distill", "train", str(train_file), "--backend",
               "openai", "--base-model", "smol", "--provider", "tuner", "--config", str(config),
               "--suffix", "stall", "-o", "poll_interval=0.05", "-o", "max_poll_interval=0.1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "status: running" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "cancelled job" in err
    (row,) = lineage.list_jobs(_store(tmp_path))
    assert row["status"] == "cancelled" and "Ctrl-C" in row["events"][-1]["message"]
    assert _upstream(upstream, "GET", f"/fine_tuning/jobs/{row['external_id']}")["status"] == \
        "cancelled"


def test_a_refused_start_marks_the_job_failed(tmp_path, upstream, train_file, monkeypatch):
    config = _config(tmp_path, upstream)
    monkeypatch.setenv("KEEL_TEST_TUNER_KEY", "wrong")
    result = _train(config, train_file)
    assert result.exit_code == 2 and "rejected Keel's API key" in result.output
    (row,) = lineage.list_jobs(_store(tmp_path))
    assert row["status"] == "failed" and "rejected Keel's API key" in row["error"]["message"]
    assert row["external_id"] is None


def test_an_unknown_backend_provider_is_one_line(tmp_path, upstream, train_file):
    config = _config(tmp_path, upstream)
    result = CliRunner().invoke(cli, [
        "distill", "train", str(train_file), "--backend", "openai", "--base-model", "smol",
        "--provider", "nope", "--config", str(config)])
    assert result.exit_code == 2 and "provider 'nope' of kind openai" in result.output
    assert isinstance(load_config(config), KeelConfig)
    assert not (tmp_path / "state" / "keel.db").exists() or \
        lineage.list_jobs(_store(tmp_path)) == []
