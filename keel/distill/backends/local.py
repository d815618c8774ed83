"""The `local` training backend: fine-tunes a GGUF student (the embedded SmolLM2 by default) on
this machine's CPU with llama.cpp's own optimiser, no PyTorch (see docs/distill-local.md).

    start    checks the training file, then starts `python -m keel.distill.backends.local_train`
             in its own session; its stdout (one JSON object a line) goes to
             <state_dir>/distill/<job id>/progress.jsonl and its stderr to train.log there
    follow   tails progress.jsonl and turns its lines into JobUpdates whose events have the
             OpenAI fine-tuning shape (`message`, and `metrics` with step, total_steps,
             train_loss), until `done` (succeeded, result_model = the GGUF path), `error`
             (failed) or `cancelled`; a worker that dies without a word fails the job with the
             tail of train.log
    cancel   terminates the worker (then kills it after `cancel_grace` seconds) and records
             `cancelled`

Because progress lives in a file and external_id is `local-<pid>`, a job can be followed or
cancelled from another `keel` process on the same machine. The student lands at
<state_dir>/models/<job id>.gguf; serve it with a provider of kind `local` and
`model_path: <that file>`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keel.config import describe_validation_error
from keel.distill.backends.base import JobUpdate, TrainJob
from keel.distill.backends.gguf_convert import FTYPES
from keel.errors import ConfigError, InvalidRequest, KeelError

_FINAL = ("succeeded", "failed", "cancelled")


class LocalBackendOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(None, description="the student GGUF; default: the embedded "
                                   "SmolLM2 (or job.base_model when that is a GGUF file)")
    epochs: int = Field(3, ge=1, le=100)
    learning_rate: float = Field(5e-5, gt=0, le=1e-2, description="AdamW, decays linearly to 10 %")
    context: int = Field(256, ge=1, le=8192, description="tokens per training window, "
                         "rounded up to a multiple of 256")
    threads: int | None = Field(None, ge=1, description="default: all cores")
    max_examples: int | None = Field(None, ge=1, description="train on the first N examples")
    quant: str = Field("q8_0", description=f"the student's GGUF type: {', '.join(FTYPES)}")
    seed: int = 0
    models_dir: str | None = Field(None, description="default: <state_dir>/models")
    poll_interval: float = Field(0.5, gt=0, description="seconds between reads of the progress")
    cancel_grace: float = Field(5.0, ge=0, description="seconds from terminate to kill")


class LocalBackend:
    name: ClassVar[str] = "local"
    Options: ClassVar[type[BaseModel]] = LocalBackendOptions

    def __init__(self, options: dict[str, Any] | LocalBackendOptions | None, runtime) -> None:
        """`options`: LocalBackendOptions (or its dict); `runtime`: keel.pipeline.runtime.Runtime
        (its config's state_dir holds the work folders and the trained models)."""
        if not isinstance(options, LocalBackendOptions):
            try:
                options = LocalBackendOptions.model_validate(options or {})
            except ValidationError as exc:
                raise ConfigError(describe_validation_error("backend local", exc)) from None
        if options.quant not in FTYPES:
            raise ConfigError(f"backend local: quant {options.quant!r} is not one of {', '.join(FTYPES)}")
        self.options = options
        state_dir = Path(runtime.config.state_dir)
        self.work_root = state_dir / "distill"
        self.models_dir = Path(options.models_dir) if options.models_dir else state_dir / "models"
        self._procs: dict[str, subprocess.Popen] = {}

    # -- the protocol ---------------------------------------------------------------------------

    async def start(self, job: TrainJob) -> str:
        from keel.distill.backends.local_train import InputError, read_examples

        opts = self.options
        try:
            examples = read_examples(job.train_file, opts.max_examples)
            if job.validation_file:
                read_examples(job.validation_file)
        except InputError as exc:
            raise InvalidRequest(f"local training: {exc}", param="train_file",
                                 code="invalid_training_file") from None
        base = self._base_model(job)
        work = self.work_dir(job)
        work.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        hp = _hyperparameters(job.hyperparameters, opts)
        argv = [sys.executable, "-m", "keel.distill.backends.local_train",
                "--train", str(job.train_file), "--base", str(base),
                "--out", str(self.result_path(job)), "--work-dir", str(work),
                "--epochs", str(hp["epochs"]), "--learning-rate", repr(hp["learning_rate"]),
                "--context", str(opts.context), "--quant", opts.quant, "--seed", str(opts.seed),
                "--threads", str(opts.threads or 0),
                "--max-examples", str(opts.max_examples or 0)]
        if job.validation_file:
            argv += ["--validation", str(job.validation_file)]
        progress = work / "progress.jsonl"
        progress.write_bytes(orjson.dumps({"event": "queued", "examples": len(examples)}) + b"\n")
        with progress.open("ab") as out, (work / "train.log").open("wb") as log:
            # Popen returns at once; the worker is watched by polling, never waited on here
            proc = subprocess.Popen(argv, stdout=out, stderr=log,  # noqa: ASYNC220
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=_worker_env())
        self._procs[job.id] = proc
        job.external_id = f"local-{proc.pid}"
        return job.external_id

    async def follow(self, job: TrainJob) -> AsyncIterator[JobUpdate]:
        progress = self.work_dir(job) / "progress.jsonl"
        if not progress.is_file():
            raise KeelError(f"local training job {job.id} has not been started here "
                            f"(no {progress})")
        tracker = _Tracker(job.id)
        offset, last_status = 0, None
        while True:
            with progress.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            update = tracker.feed(complete.splitlines())
            if update.status not in _FINAL and not complete and not self._alive(job):
                # the worker may have written its last line just before it exited
                with progress.open("rb") as fh:
                    fh.seek(offset)
                    rest = fh.read()
                offset += len(rest)
                update = tracker.feed(rest.splitlines())
                if update.status not in _FINAL:
                    update = tracker.died(self._exit_code(job), self.work_dir(job) / "train.log")
            if update.status != last_status or update.events:
                last_status = update.status
                yield update
            if update.status in _FINAL:
                self._procs.pop(job.id, None)
                return
            await asyncio.sleep(self.options.poll_interval)

    async def cancel(self, job: TrainJob) -> None:
        pid = self._pid(job)
        if pid is None or not self._alive(job):
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + self.options.cancel_grace
        while self._alive(job) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._alive(job):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while self._alive(job):
                await asyncio.sleep(0.05)
        with (self.work_dir(job) / "progress.jsonl").open("ab") as fh:
            fh.write(orjson.dumps({"event": "cancelled"}) + b"\n")
        for leftover in self.work_dir(job).glob("*.gguf"):
            leftover.unlink(missing_ok=True)
        self.result_path(job).unlink(missing_ok=True)

    def worker_gone(self, job: TrainJob) -> bool:
        """The job's worker was started on this machine (its progress file is here) and is no
        longer running: what it wrote is all there will be, so `follow` ends at once with how
        it ended (done, error, or died). `keel distill jobs` uses it to settle jobs whose
        `keel distill train` was killed before it could record the end."""
        return (self.work_dir(job) / "progress.jsonl").is_file() and not self._alive(job)

    # -- paths and the worker process -------------------------------------------------------

    def work_dir(self, job: TrainJob) -> Path:
        return self.work_root / job.id

    def result_path(self, job: TrainJob) -> Path:
        return self.models_dir / f"{job.id}.gguf"

    def _base_model(self, job: TrainJob) -> Path:
        from keel.providers.local.model import resolve_model_path

        if self.options.model_path:
            return resolve_model_path(self.options.model_path)
        if job.base_model and job.base_model.endswith(".gguf"):
            return resolve_model_path(job.base_model)
        return resolve_model_path(None)

    def _pid(self, job: TrainJob) -> int | None:
        proc = self._procs.get(job.id)
        if proc is not None:
            return proc.pid
        ext = job.external_id or ""
        return int(ext[6:]) if ext.startswith("local-") and ext[6:].isdigit() else None

    def _alive(self, job: TrainJob) -> bool:
        proc = self._procs.get(job.id)
        if proc is not None:
            return proc.poll() is None
        pid = self._pid(job)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _exit_code(self, job: TrainJob) -> int | None:
        proc = self._procs.get(job.id)
        return proc.poll() if proc is not None else None


class _Tracker:
    """Worker lines → one JobUpdate per read, events in the OpenAI fine-tuning shape."""

    def __init__(self, job_id: str) -> None:
        self.job_id, self.n = job_id, 0
        self.status, self.progress = "queued", None
        self.result_model: str | None = None
        self.error: dict | None = None

    def feed(self, lines: list[bytes]) -> JobUpdate:
        events: list[dict] = []
        for raw in lines:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue                      # llama.cpp may print on stdout; only JSON counts
            if isinstance(line, dict):
                event = self._apply(line)
                if event:
                    events.append(event)
        return JobUpdate(status=self.status, events=events, progress=self.progress,
                         result_model=self.result_model, error=self.error)

    def died(self, code: int | None, log: Path) -> JobUpdate:
        tail = ""
        if log.is_file():
            lines = log.read_text("utf-8", "replace").strip().splitlines()
            telling = [ln for ln in lines if "GGML_ASSERT" in ln or "error" in ln.lower()]
            tail = (telling or lines or [""])[-1].strip()
        how = f"with status {code}" if code is not None else "without a result"
        self.status = "failed"
        self.error = {"code": "worker_died",
                      "message": f"the training process exited {how}; see {log}"
                                 + (f": {tail[-400:]}" if tail else "")}
        return JobUpdate(status="failed", events=[self._event(self.error["message"], level="error")],
                         progress=self.progress, error=self.error)

    def _apply(self, line: dict) -> dict | None:
        kind = line.get("event")
        if kind == "queued":
            return self._event(f"queued: {line.get('examples')} examples")
        if kind == "stage":
            self.status = "running"
            return self._event(f"stage: {line.get('stage')}")
        if kind == "dataset":
            return self._event("dataset: {examples} examples, {tokens} tokens in {windows} "
                               "windows of {context}".format(**line), data=line)
        if kind == "step":
            steps, epochs = int(line["steps"]), int(line["epochs"])
            step = (int(line["epoch"]) - 1) * steps + int(line["step"])
            total = steps * epochs
            self.progress = min(1.0, step / total) if total else None
            data = {"step": step, "total_steps": total, "epoch": line["epoch"],
                    "train_loss": line["loss"]}
            return self._event(f"Step {step}/{total}: training loss={line['loss']:.4f}",
                               kind="metrics", data=data)
        if kind == "epoch":
            val = f", validation loss {line['val_loss']:.4f}" if "val_loss" in line else ""
            return self._event(f"epoch {line['epoch']}: training loss {line['loss']:.4f}{val} "
                               f"({line['seconds']} s)", data=line)
        if kind == "done":
            self.status, self.progress, self.result_model = "succeeded", 1.0, line["model"]
            return self._event(f"trained model: {line['model']} ({line.get('seconds')} s)")
        if kind == "error":
            self.status = "failed"
            self.error = {"code": "invalid_training_file" if line.get("kind") == "input"
                          else "training_error", "message": str(line.get("message"))}
            return self._event(self.error["message"], level="error")
        if kind == "cancelled":
            self.status = "cancelled"
            return self._event("cancelled")
        return None

    def _event(self, message: str, *, level: str = "info", kind: str = "message",
               data: dict | None = None) -> dict:
        self.n += 1
        return {"id": f"{self.job_id}-ev{self.n}", "object": "fine_tuning.job.event",
                "created_at": int(time.time()), "level": level, "message": message,
                "type": kind, "data": data or {}}


def _hyperparameters(given: dict[str, Any], opts: LocalBackendOptions) -> dict[str, Any]:
    """OpenAI's names (n_epochs) and ours; the options are the defaults."""
    given = dict(given or {})
    epochs = given.pop("n_epochs", given.pop("epochs", opts.epochs))
    lr = given.pop("learning_rate", opts.learning_rate)
    given.pop("batch_size", None)             # one window per step; accepted for compatibility
    if given:
        raise InvalidRequest(f"local training: unknown hyperparameters {', '.join(sorted(given))} "
                             "(known: n_epochs, epochs, learning_rate, batch_size)",
                             param="hyperparameters")
    if epochs == "auto":
        epochs = opts.epochs
    if not isinstance(epochs, int) or not 1 <= epochs <= 100:
        raise InvalidRequest(f"local training: n_epochs must be 1..100, got {epochs!r}",
                             param="hyperparameters")
    if not isinstance(lr, (int, float)) or not 0 < lr <= 1e-2:
        raise InvalidRequest(f"local training: learning_rate must be in (0, 0.01], got {lr!r}",
                             param="hyperparameters")
    return {"epochs": epochs, "learning_rate": float(lr)}


def _worker_env() -> dict[str, str]:
    """The worker imports keel the way this process does, even from a source checkout."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("GGML_NO_BACKTRACE", "1")   # an abort leaves its one GGML_ASSERT line, no gdb
    return env
