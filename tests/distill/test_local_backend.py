"""The `local` training backend on the real embedded model: train a few steps, serve the student
through a Gateway, cancel mid-training, and the errors a user can cause. Tests that run llama.cpp
are marked `model`; the packing and hyperparameter checks run everywhere."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from keel.config import KeelConfig, ModelConfig, ProviderConfig
from keel.distill.backends.base import TrainJob, backend_class
from keel.errors import ConfigError, InvalidRequest
from keel.pipeline.runtime import Runtime

QA = [
    ("How do I reset my password?", "Open Settings, choose Security, then Reset password."),
    ("What are your support hours?", "Monday to Friday, 8:00 to 18:00 CET."),
    ("Can I get a refund?", "Yes, within 30 days of purchase: write to billing@example.com."),
    ("How do I export my data?", "Account, then Data export, then Export: you get a ZIP of CSVs."),
    ("Do you offer a student discount?", "Yes, 50 percent off with a university email address."),
    ("How do I delete my account?", "Account, then Danger zone, then Delete account."),
    ("Which payment methods do you accept?", "Credit cards, PayPal and SEPA bank transfer."),
    ("Where is my invoice?", "Under Billing, then Invoices, each as a PDF."),
]


def write_set(path, pairs=QA):
    with path.open("w") as fh:
        for q, a in pairs:
            messages = [{"role": "system", "content": "You are Acme's support assistant."},
                        {"role": "user", "content": q}, {"role": "assistant", "content": a}]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def backend(tmp_path, **options):
    cls = backend_class("local")
    return cls({"threads": 2, "poll_interval": 0.1, **options},
               Runtime(KeelConfig(state_dir=tmp_path / "state")))


async def run_to_end(b, job):
    updates = [u async for u in b.follow(job)]
    return updates, [e for u in updates for e in u.events]


# -- end to end (module-scoped: one training run serves several tests) ------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    tmp = tmp_path_factory.mktemp("local-train")
    b = backend(tmp, epochs=2, learning_rate=1e-4)
    job = TrainJob(id="dj_e2e", base_model="smollm2", train_file=str(write_set(tmp / "train.jsonl")))

    async def go():
        external = await b.start(job)
        return external, *(await run_to_end(b, job))

    external, updates, events = asyncio.run(go())
    return {"backend": b, "job": job, "external": external, "updates": updates, "events": events}


@pytest.mark.model
def test_training_succeeds_with_a_gguf_under_the_state_dir(trained):
    b, job, last = trained["backend"], trained["job"], trained["updates"][-1]
    assert trained["external"].startswith("local-")
    assert last.status == "succeeded", last.error
    assert last.progress == 1.0
    assert last.result_model == str(b.result_path(job))
    model = b.result_path(job)
    assert model.parent == b.models_dir and model.name == "dj_e2e.gguf"
    assert model.read_bytes()[:4] == b"GGUF"
    assert 100e6 < model.stat().st_size < 200e6           # Q8_0 of 135M parameters
    assert not list(b.work_dir(job).glob("*.gguf"))        # float copies removed


@pytest.mark.model
def test_the_student_keeps_the_base_models_metadata(trained):
    from keel.distill.backends.gguf_convert import restore_metadata
    from keel.providers.local.model import default_model_path

    # nothing left to copy back: chat template, names and licence are in the student
    assert restore_metadata(default_model_path(), trained["backend"].result_path(trained["job"])) == []


@pytest.mark.model
def test_progress_events_carry_steps_and_a_falling_loss(trained):
    events = trained["events"]
    assert all(e["object"] == "fine_tuning.job.event" for e in events)
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert metrics and metrics[-1]["step"] == metrics[-1]["total_steps"]
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    epochs = [e["data"] for e in events if e["message"].startswith("epoch ")]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["loss"] < epochs[0]["loss"]
    statuses = [u.status for u in trained["updates"]]
    assert statuses[0] == "queued" and "running" in statuses


@pytest.mark.model
async def test_the_local_provider_serves_the_student(trained):
    from keel.gateway import Gateway

    path = trained["updates"][-1].result_model
    config = KeelConfig(state_dir=trained["backend"].work_root.parent,
                        providers={"local": ProviderConfig(kind="local", model_path=path, n_ctx=512)},
                        models={"student": ModelConfig(provider="local")})
    async with Gateway(config) as gw:
        body = {"model": "student", "max_tokens": 24, "temperature": 0,
                "messages": [{"role": "system", "content": "You are Acme's support assistant."},
                             {"role": "user", "content": QA[1][0]}]}
        answer = await gw.complete(body)
    assert answer["choices"][0]["message"]["content"].strip()
    assert answer["usage"]["completion_tokens"] > 0


# -- cancel and failures ----------------------------------------------------------------------

@pytest.mark.model
async def test_cancel_stops_the_worker_mid_training(tmp_path):
    pytest.importorskip("llama_cpp")
    b = backend(tmp_path, epochs=50)
    job = TrainJob(id="dj_cancel", base_model="smollm2",
                   train_file=str(write_set(tmp_path / "train.jsonl")))
    await b.start(job)
    seen = []
    async for update in b.follow(job):
        seen.append(update)
        if any(e["type"] == "metrics" for e in update.events):
            await b.cancel(job)
    assert seen[-1].status == "cancelled"
    assert seen[-1].progress is not None and seen[-1].progress < 0.5
    assert not b._alive(job)
    assert not b.result_path(job).exists()
    assert not list(b.work_dir(job).glob("*.gguf"))


@pytest.mark.model
async def test_a_worker_that_dies_fails_the_job_with_its_exit_status(tmp_path):
    import os
    import signal

    pytest.importorskip("llama_cpp")
    b = backend(tmp_path, epochs=50)
    job = TrainJob(id="dj_killed", base_model="smollm2",
                   train_file=str(write_set(tmp_path / "train.jsonl")))
    external = await b.start(job)
    async for update in b.follow(job):
        if update.status == "running":
            os.kill(int(external.removeprefix("local-")), signal.SIGKILL)
        last = update
    assert last.status == "failed" and last.error["code"] == "worker_died"
    assert "exited with status -9" in last.error["message"]


async def test_an_empty_training_file_is_refused_before_anything_starts(tmp_path):
    b = backend(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    job = TrainJob(id="dj_empty", base_model="smollm2", train_file=str(empty))
    with pytest.raises(InvalidRequest, match="empty.jsonl has no examples"):
        await b.start(job)
    assert job.external_id is None and not b.work_dir(job).exists()


async def test_an_example_without_an_assistant_answer_names_its_line(tmp_path):
    path = write_set(tmp_path / "train.jsonl")
    with path.open("a") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                          {"role": "user", "content": "again"}]}) + "\n")
    job = TrainJob(id="dj_bad", base_model="smollm2", train_file=str(path))
    with pytest.raises(InvalidRequest, match="line 9: the last message must be the assistant"):
        await backend(tmp_path).start(job)


@pytest.mark.model
async def test_a_model_file_llama_cpp_cannot_read_fails_the_job(tmp_path):
    pytest.importorskip("llama_cpp")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf at all")
    b = backend(tmp_path, model_path=str(broken))
    job = TrainJob(id="dj_broken", base_model="smollm2",
                   train_file=str(write_set(tmp_path / "train.jsonl")))
    await b.start(job)
    updates, _ = await run_to_end(b, job)
    assert updates[-1].status == "failed"
    assert "failed" in updates[-1].error["message"] and updates[-1].result_model is None


def test_options_and_hyperparameters_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="backend local"):
        backend(tmp_path, epoch=3)
    with pytest.raises(ConfigError, match="quant 'q3'"):
        backend(tmp_path, quant="q3")
    from keel.distill.backends.local import _hyperparameters

    opts = backend(tmp_path).options
    assert _hyperparameters({"n_epochs": 4}, opts) == {"epochs": 4, "learning_rate": opts.learning_rate}
    with pytest.raises(InvalidRequest, match="unknown hyperparameters momentum"):
        _hyperparameters({"momentum": 0.9}, opts)


def test_packing_keeps_examples_whole_and_pads_with_end_of_turn():
    from keel.distill.backends.local_train import pack

    windows = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], context=5, pad=0)
    assert windows == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert pack([list(range(10))], context=3, pad=0) == [[6, 7, 8, 9]]  # keeps the answer end


# -- a job whose `keel distill train` was killed ---------------------------------------------

def test_jobs_settles_a_job_whose_worker_is_gone(tmp_path):
    """`keel distill train` killed (SIGTERM, a closed terminal) leaves its row `running`; the
    listing reads what the dead worker wrote and records how the job ended. A job whose worker
    still runs, and one started on another machine (no progress file here), stay as they are."""
    import subprocess
    import sys

    import orjson
    import yaml
    from click.testing import CliRunner

    from keel.cli.distill import distill_group
    from keel.cli.main import KeelGroup
    from keel.distill import lineage
    from keel.store import open_store

    state = tmp_path / "state"
    config = tmp_path / "keel.yaml"
    url = f"sqlite:///{tmp_path / 'keel.db'}"
    config.write_text(yaml.safe_dump({"state_dir": str(state), "store": {"url": url}}))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = open_store(url)

    def job(pid: int, lines: list[dict] | None) -> str:
        job_id = lineage.create_job(store, backend="local", base_model="smollm2", set_id=None,
                                    options={"train_file": "train.jsonl"})
        lineage.update_job(store, job_id, status="running", external_id=f"local-{pid}")
        if lines is not None:
            (state / "distill" / job_id).mkdir(parents=True)
            (state / "distill" / job_id / "progress.jsonl").write_bytes(
                b"".join(orjson.dumps(line) + b"\n" for line in lines))
        return job_id

    step = {"event": "step", "epoch": 1, "epochs": 2, "step": 1, "steps": 3, "loss": 2.5}
    died = job(gone.pid, [{"event": "stage", "stage": "train"}, step])
    done = job(gone.pid, [step, {"event": "done", "model": "/m/student.gguf", "seconds": 9}])
    alive = job(os.getpid(), [step])
    elsewhere = job(gone.pid, None)
    finished = job(gone.pid, [step, {"event": "done", "model": "/m/other.gguf", "seconds": 9}])
    store.close()

    cli = KeelGroup()
    cli.add_command(distill_group)
    # cancelling a job that ended unrecorded says how it ended, not "cancelled"
    cancelled = CliRunner().invoke(cli, ["distill", "cancel", finished, "--config", str(config)])
    assert cancelled.exit_code != 0 and "has already succeeded" in cancelled.output
    listed = CliRunner().invoke(cli, ["distill", "jobs", "--config", str(config), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["id"]: r for r in orjson.loads(listed.output)}
    assert rows[died]["status"] == "failed" and rows[died]["error"]["code"] == "worker_died"
    assert any(e["type"] == "metrics" for e in rows[died]["events"])
    assert (rows[done]["status"], rows[done]["result_model"]) == ("succeeded", "/m/student.gguf")
    assert rows[alive]["status"] == rows[elsewhere]["status"] == "running"
    shown = CliRunner().invoke(cli, ["distill", "job", died, "--config", str(config), "--json"])
    assert orjson.loads(shown.output)["status"] == "failed"
