"""The fake upstream's fine-tuning API: files and `fine_tuning/jobs` with scripted job states.

The subset of OpenAI's API that `keel distill train --backend openai` uses, served by
`keel fake-upstream` next to its chat completions, so the whole path is tested over a socket:

    POST /v1/files                           multipart `file` + `purpose` (fine-tune): a file
    GET  /v1/files, /v1/files/{id}           list, get (`/content` gives the bytes back)
    POST /v1/fine_tuning/jobs                model, training_file, validation_file,
                                             hyperparameters, suffix, seed: a job
    GET  /v1/fine_tuning/jobs                list (newest first; `after`, `limit`)
    GET  /v1/fine_tuning/jobs/{id}           the job; EACH GET MOVES ITS SCRIPT ONE STEP
    GET  /v1/fine_tuning/jobs/{id}/events    newest first; `after` pages to older ones
    POST /v1/fine_tuning/jobs/{id}/cancel    cancels a job not yet final (else 400)

The job's `suffix` chooses its script (so does a base model named `fail` or `stall`):

    fail...    validating_files → queued → running → failed (error code `fake_training_failed`)
    stall...   validating_files → queued → running, and running until cancelled
    otherwise  validating_files → queued → running (one `metrics` event per epoch, epochs =
               `hyperparameters.n_epochs`, default 3) → succeeded

Polls, not time, drive the script, so a test is deterministic however slow the machine.

A job that succeeded serves its model `ft:BASE:keel:SUFFIX:ID` (`ft:BASE:keel::ID` without a
suffix) on /v1/chat/completions, streaming or not. It "learned" its training file: a last user
message that is exactly a user message of the file gets that example's assistant answer; any
other gets the echo prefixed with `[ft] `, so a test can tell the fine-tuned model answered.
An `ft:` name no job produced is a 404 `model_not_found`, as upstream.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from keel.errors import InvalidRequest
from keel.messages import content_text, last_user_text
from keel.providers.fake_server import API_KEY, PROVIDER, _error

STATE = web.AppKey("fine_tuning", object)
DEFAULT_EPOCHS = 3
_FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class FakeFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def public(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None}


@dataclass
class FakeJob:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict
    suffix: str | None
    seed: int
    created_at: int
    script: list[str]
    step: int = 0
    status: str = "validating_files"
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: dict | None = None
    trained_tokens: int | None = None
    events: list[dict] = field(default_factory=list)  # oldest first

    def public(self) -> dict:
        return {
            "id": self.id, "object": "fine_tuning.job", "created_at": self.created_at,
            "model": self.model, "fine_tuned_model": self.fine_tuned_model,
            "organization_id": "org-keel-fake", "status": self.status,
            "training_file": self.training_file, "validation_file": self.validation_file,
            "hyperparameters": self.hyperparameters, "result_files": [],
            "trained_tokens": self.trained_tokens, "error": self.error,
            "finished_at": self.finished_at, "seed": self.seed, "estimated_finish": None,
            "integrations": [], "metadata": None,
            "method": {"type": "supervised",
                       "supervised": {"hyperparameters": self.hyperparameters}},
        }


class FineTuningState:
    """Files, jobs and the fine-tuned models, for the life of one fake upstream."""

    def __init__(self) -> None:
        self.files: dict[str, FakeFile] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.models: dict[str, dict[str, str]] = {}  # ft model -> user text -> answer
        self._ids = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-fake{next(self._ids):06d}"

    def event(self, job: FakeJob, message: str, *, level: str = "info",
              kind: str = "message", data: dict | None = None) -> None:
        job.events.append({"id": self.new_id("ftevent"), "object": "fine_tuning.job.event",
                           "created_at": int(time.time()), "level": level, "message": message,
                           "type": kind, "data": data or {}})

    def advance(self, job: FakeJob) -> None:
        """One poll: the job moves to its script's next state and says so in its events."""
        if job.status in _FINAL or job.step + 1 >= len(job.script):
            return
        job.step += 1
        state = job.script[job.step]
        if state == "queued":
            job.status = "queued"
            self.event(job, "Files validated, moving job to queued state")
        elif state.startswith("epoch:"):
            epoch, total = (int(n) for n in state[6:].split("/"))
            if job.status != "running":
                job.status = "running"
                self.event(job, "Fine-tuning job started")
            loss = round(1.0 / (epoch + 1), 4)
            self.event(job, f"Step {epoch}/{total}: training loss={loss}", kind="metrics",
                       data={"step": epoch, "total_steps": total, "train_loss": loss})
        elif state == "running":
            job.status = "running"
            self.event(job, "Fine-tuning job started")
        elif state == "failed":
            job.status, job.finished_at = "failed", int(time.time())
            job.error = {"code": "fake_training_failed", "param": None,
                         "message": "fake: scripted training failure"}
            self.event(job, "Fine-tuning job failed: fake: scripted training failure",
                       level="error")
        elif state == "succeeded":
            self._succeed(job)

    def _succeed(self, job: FakeJob) -> None:
        short = job.id.rsplit("-", 1)[-1]
        name = f"ft:{job.model}:keel:{job.suffix or ''}:{short}"
        job.status, job.finished_at, job.fine_tuned_model = "succeeded", int(time.time()), name
        examples = _examples(self.files[job.training_file].data)
        job.trained_tokens = sum(len(u.split()) + len(a.split()) for u, a in examples.items())
        self.models[name] = examples
        self.event(job, f"New fine-tuned model created: {name}")
        self.event(job, "The job has successfully completed")


def add_fine_tuning(app: web.Application) -> None:
    """Add the fine-tuning routes to the fake upstream's app, and let its chat completions
    serve the models they train."""
    state = FineTuningState()
    app[STATE] = state
    app[PROVIDER] = FineTunedModels(app[PROVIDER], state)
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{id}", get_file)
    app.router.add_get("/v1/files/{id}/content", file_content)
    app.router.add_post("/v1/fine_tuning/jobs", create_job)
    app.router.add_get("/v1/fine_tuning/jobs", list_jobs)
    app.router.add_get("/v1/fine_tuning/jobs/{id}", get_job)
    app.router.add_get("/v1/fine_tuning/jobs/{id}/events", list_events)
    app.router.add_post("/v1/fine_tuning/jobs/{id}/cancel", cancel_job)


class FineTunedModels:
    """The fake provider, plus the `ft:` models that succeeded jobs produced."""

    def __init__(self, inner, state: FineTuningState) -> None:
        self.inner = inner
        self.state = state

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def chat(self, body: dict, model: str) -> dict:
        if not model.startswith("ft:"):
            return await self.inner.chat(body, model)
        result = await self.inner.chat(body, "fixed:" + self._answer(body, model))
        result["model"] = model
        return result

    async def stream(self, body: dict, model: str) -> AsyncIterator[dict]:
        if not model.startswith("ft:"):
            async for chunk in self.inner.stream(body, model):
                yield chunk
            return
        async for chunk in self.inner.stream(body, "fixed:" + self._answer(body, model)):
            chunk["model"] = model
            yield chunk

    def _answer(self, body: dict, model: str) -> str:
        examples = self.state.models.get(model)
        if examples is None:
            err = InvalidRequest(f"The model `{model}` does not exist or you do not have access "
                                 "to it.", param="model", code="model_not_found")
            err.status = 404
            raise err
        text = last_user_text(body.get("messages"))
        return examples.get(text.strip()) or f"[ft] {text}"


def _examples(data: bytes) -> dict[str, str]:
    """user text -> assistant answer, for each example's first user turn and its answer."""
    examples: dict[str, str] = {}
    for line in data.splitlines():
        try:
            messages = orjson.loads(line).get("messages") or []
        except (orjson.JSONDecodeError, AttributeError):
            continue
        user = next((m for m in messages if m.get("role") == "user"), None)
        answer = next((m for m in messages if m.get("role") == "assistant"), None)
        if user and answer and answer.get("content"):
            examples.setdefault(content_text(user.get("content")).strip(),
                                content_text(answer.get("content")))
    return examples


# -- handlers -----------------------------------------------------------------------------------


def _unauthorized(request: web.Request) -> web.Response | None:
    expected = request.app[API_KEY]
    if expected is not None and request.headers.get("Authorization") != expected:
        return _error(401, "Incorrect API key provided", code="invalid_api_key")
    return None


def _json(value: dict) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


def _page(items: list[dict], request: web.Request) -> web.Response:
    """A list page, newest first: `after` an id gives the ones after it in that order."""
    after = request.query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    try:
        limit = max(1, min(int(request.query.get("limit", 20)), 100))
    except ValueError:
        return _error(400, "limit: expected an integer", param="limit")
    return _json({"object": "list", "data": items[:limit], "has_more": len(items) > limit})


async def upload_file(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    if not request.content_type.startswith("multipart/"):
        return _error(400, "expected a multipart/form-data body with `file` and `purpose`")
    fields: dict = {}
    async for part in await request.multipart():
        if part.name == "file":
            fields["filename"] = part.filename or "upload.jsonl"
            fields["data"] = await part.read()
        elif part.name:
            fields[part.name] = await part.text()
    if "data" not in fields:
        return _error(400, "'file' is a required property", param="file")
    if fields.get("purpose") not in ("fine-tune", "batch", "assistants", "user_data"):
        return _error(400, f"invalid purpose {fields.get('purpose')!r}", param="purpose")
    state: FineTuningState = request.app[STATE]
    file = FakeFile(state.new_id("file"), fields["filename"], fields["purpose"],
                    fields["data"], int(time.time()))
    state.files[file.id] = file
    return _json(file.public())


async def list_files(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    files = [f.public() for f in reversed(request.app[STATE].files.values())]
    return _json({"object": "list", "data": files, "has_more": False})


def _file(request: web.Request) -> FakeFile | web.Response:
    file = request.app[STATE].files.get(request.match_info["id"])
    if file is None:
        return _error(404, f"No such File object: {request.match_info['id']}", param="id")
    return file


async def get_file(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    file = _file(request)
    return file if isinstance(file, web.Response) else _json(file.public())


async def file_content(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    file = _file(request)
    if isinstance(file, web.Response):
        return file
    return web.Response(body=file.data, content_type="application/octet-stream")


async def create_job(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _error(400, "you must provide a model parameter", param="model")
    state: FineTuningState = request.app[STATE]
    for key in ("training_file", "validation_file"):
        file_id = body.get(key)
        if (file_id is not None or key == "training_file") and file_id not in state.files:
            return _error(400, f"invalid {key}: {file_id!r} is not an uploaded file", param=key,
                          code="invalid_file")
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
        return _error(400, "suffix: at most 64 characters", param="suffix")
    hyper = dict(body.get("hyperparameters") or {})
    epochs = hyper.get("n_epochs")
    if epochs is not None and epochs != "auto" and (not isinstance(epochs, int) or epochs < 1):
        return _error(400, "hyperparameters.n_epochs: expected a positive integer or 'auto'",
                      param="hyperparameters.n_epochs")
    hyper = {"n_epochs": epochs if isinstance(epochs, int) else DEFAULT_EPOCHS,
             "batch_size": hyper.get("batch_size", 1),
             "learning_rate_multiplier": hyper.get("learning_rate_multiplier", 1.0)}
    job = FakeJob(
        id=state.new_id("ftjob"), model=body["model"], training_file=body["training_file"],
        validation_file=body.get("validation_file"), hyperparameters=hyper, suffix=suffix,
        seed=int(body.get("seed") or 42), created_at=int(time.time()),
        script=_script(body["model"], suffix or "", hyper["n_epochs"]),
    )
    state.jobs[job.id] = job
    state.event(job, f"Created fine-tuning job: {job.id}")
    state.event(job, f"Validating training file: {job.training_file}")
    return _json(job.public())


def _script(model: str, suffix: str, epochs: int) -> list[str]:
    start = ["validating_files", "queued"]
    if suffix.startswith("fail") or model == "fail":
        return start + ["running", "failed"]
    if suffix.startswith("stall") or model == "stall":
        return start + ["running"]
    return start + [f"epoch:{i}/{epochs}" for i in range(1, epochs + 1)] + ["succeeded"]


async def list_jobs(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    return _page([j.public() for j in reversed(request.app[STATE].jobs.values())], request)


def _job(request: web.Request) -> FakeJob | web.Response:
    job = request.app[STATE].jobs.get(request.match_info["id"])
    if job is None:
        return _error(404, f"No such fine-tuning job: {request.match_info['id']}",
                      param="fine_tuning_job_id", code="not_found")
    return job


async def get_job(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    job = _job(request)
    if isinstance(job, web.Response):
        return job
    request.app[STATE].advance(job)
    return _json(job.public())


async def list_events(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    job = _job(request)
    if isinstance(job, web.Response):
        return job
    return _page(list(reversed(job.events)), request)


async def cancel_job(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    job = _job(request)
    if isinstance(job, web.Response):
        return job
    if job.status in _FINAL:
        return _error(400, f"Job {job.id} has already {job.status}; it cannot be cancelled",
                      code="invalid_state")
    job.status, job.finished_at = "cancelled", int(time.time())
    request.app[STATE].event(job, "Fine-tuning job cancelled")
    return _json(job.public())
