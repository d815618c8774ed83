"""The protocol every training backend implements, and how `keel distill train` finds one.

A backend turns a validated chat fine-tuning JSONL file (keel.distill.export) into a trained
model. `keel distill train` creates the job row (keel.distill.lineage), then:

    backend = backend_class(name)(options, runtime)
    external_id = await backend.start(job)          # upload, create; returns the backend's id
    async for update in backend.follow(job):       # until a final state: progress and events
        ...                                         # (the CLI prints them and stores them)
    await backend.cancel(job)                       # on Ctrl-C or `keel distill cancel`

`update` is a JobUpdate; the last one has a final status and, on success, `result_model`:
a model name the backend's provider serves (openai) or a GGUF file path (local).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from keel.errors import ConfigError


@dataclass
class TrainJob:
    id: str                        # Keel's job id (distill_jobs.id)
    base_model: str                # the student before training
    train_file: str                # chat fine-tuning JSONL (validated)
    validation_file: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    external_id: str | None = None  # the backend's own id once started
    suffix: str | None = None      # a name part for the trained model


@dataclass
class JobUpdate:
    status: str                    # queued | running | succeeded | failed | cancelled
    events: list[dict] = field(default_factory=list)   # new events since the last update
    progress: float | None = None  # 0..1 when known
    result_model: str | None = None
    error: dict | None = None


class TrainingBackend(Protocol):
    name: str

    async def start(self, job: TrainJob) -> str: ...

    def follow(self, job: TrainJob) -> AsyncIterator[JobUpdate]: ...

    async def cancel(self, job: TrainJob) -> None: ...


BACKENDS = {
    "openai": "keel.distill.backends.openai:OpenAIBackend",
    "local": "keel.distill.backends.local:LocalBackend",
}


def backend_class(name: str):
    """The backend class by name (imported on demand: `local` needs llama-cpp-python)."""
    import importlib

    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown training backend {name!r} (known: {', '.join(BACKENDS)})")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"training backend {name!r} is not available: {exc}") from None
