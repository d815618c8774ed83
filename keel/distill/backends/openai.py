"""The `openai` training backend: any OpenAI-compatible fine-tuning API.

    start    POST /files (multipart, purpose fine-tune) for the training and validation files,
             then POST /fine_tuning/jobs {model, training_file, validation_file,
             hyperparameters, suffix}: returns the upstream job id
    follow   GET /fine_tuning/jobs/{id} with backoff (from `poll_interval`, times `backoff` while
             nothing changes, at most `max_poll_interval`; back to `poll_interval` when events
             arrive), and GET /fine_tuning/jobs/{id}/events for the ones not seen yet; yields a
             JobUpdate whenever the status changes or events arrive, until a final status
    cancel   POST /fine_tuning/jobs/{id}/cancel

Where it trains is a provider in keel.yaml of kind `openai` (option `provider`, default
"openai"): its base_url, api_key, headers, timeouts and organization are used as the chat
provider uses them. A poll that fails on the way (a 5xx, a 429, a timeout, a reset connection)
is retried with the same backoff, `max_poll_failures` times in a row, so a long job is not
given up for a blip. The trained model is the job's `fine_tuned_model`, served by that provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keel.config import describe_validation_error
from keel.distill.backends.base import JobUpdate, TrainJob
from keel.errors import ConfigError, KeelError, UpstreamError
from keel.providers.openai import OpenAIOptions
from keel.providers.openai_errors import http_error
from keel.providers.upstream import base_headers, open_session, read_body, timeout_error

# The API's states -> the job row's (keel.distill.lineage.JOB_STATES).
_STATUS = {"validating_files": "queued", "queued": "queued", "running": "running",
           "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}
_FINAL = ("succeeded", "failed", "cancelled")
_EVENT_PAGES = 20  # at most 2,000 new events read per poll


class OpenAIBackendOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field("openai", description="a provider in keel.yaml of kind openai")
    poll_interval: float = Field(2.0, gt=0, description="seconds between the first polls")
    max_poll_interval: float = Field(30.0, gt=0)
    backoff: float = Field(1.5, ge=1.0, description="interval factor while nothing changes")
    max_poll_failures: int = Field(5, ge=1, description="failed polls in a row before giving up")


class OpenAIBackend:
    name: ClassVar[str] = "openai"
    Options: ClassVar[type[BaseModel]] = OpenAIBackendOptions

    def __init__(self, options: dict[str, Any] | OpenAIBackendOptions | None, runtime) -> None:
        """`options`: OpenAIBackendOptions (or its dict); `runtime`: keel.pipeline.runtime.Runtime
        (its config's `providers:` name the upstream)."""
        if not isinstance(options, OpenAIBackendOptions):
            try:
                options = OpenAIBackendOptions.model_validate(options or {})
            except ValidationError as exc:
                raise ConfigError(describe_validation_error("backend openai", exc)) from None
        self.options = options
        self.upstream = _provider_options(runtime.config, options.provider)
        self.base_url = self.upstream.base_url
        self._who = f"provider {options.provider!r} at {self.base_url}"

    # -- the protocol ---------------------------------------------------------------------------

    async def start(self, job: TrainJob) -> str:
        async with self._session() as session:
            training = await self._upload(session, job.train_file)
            validation = (await self._upload(session, job.validation_file)
                          if job.validation_file else None)
            body: dict[str, Any] = {"model": job.base_model, "training_file": training}
            if validation:
                body["validation_file"] = validation
            if job.hyperparameters:
                body["hyperparameters"] = job.hyperparameters
            if job.suffix:
                body["suffix"] = job.suffix
            created = await self._call(session, "POST", "/fine_tuning/jobs", json=body)
        if not isinstance(created.get("id"), str):
            raise UpstreamError(f"{self._who} created a fine-tuning job without an id: "
                                f"{str(created)[:200]}")
        job.external_id = created["id"]
        return created["id"]

    async def follow(self, job: TrainJob) -> AsyncIterator[JobUpdate]:
        job_id = _started(job)
        opts = self.options
        seen: set[str] = set()
        last_status: str | None = None
        interval, failures = opts.poll_interval, 0
        async with self._session() as session:
            while True:
                try:
                    upstream = await self._call(session, "GET", f"/fine_tuning/jobs/{job_id}")
                    events = await self._new_events(session, job_id, seen)
                    failures = 0
                except KeelError as exc:
                    failures += 1
                    if not exc.retryable or failures >= opts.max_poll_failures:
                        raise
                    await asyncio.sleep(interval)
                    interval = min(interval * opts.backoff, opts.max_poll_interval)
                    continue
                update = _update(upstream, events)
                if update.status != last_status or events:
                    last_status = update.status
                    yield update
                if update.status in _FINAL:
                    return
                interval = (opts.poll_interval if events
                            else min(interval * opts.backoff, opts.max_poll_interval))
                await asyncio.sleep(interval)

    async def cancel(self, job: TrainJob) -> None:
        job_id = _started(job)
        async with self._session() as session:
            await self._call(session, "POST", f"/fine_tuning/jobs/{job_id}/cancel")

    # -- HTTP -----------------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        headers = base_headers(self.upstream,
                               "api-key" if self.upstream.api_version else "Authorization")
        headers.pop("Content-Type")  # per request: JSON, or multipart for uploads
        if self.upstream.organization:
            headers["OpenAI-Organization"] = self.upstream.organization
        return open_session(self.upstream, headers)

    async def _upload(self, session: aiohttp.ClientSession, path: str) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "fine-tune")
        form.add_field("file", Path(path).read_bytes(), filename=Path(path).name,
                       content_type="application/jsonl")
        uploaded = await self._call(session, "POST", "/files", data=form)
        if not isinstance(uploaded.get("id"), str):
            raise UpstreamError(f"{self._who} stored {path} without giving its file id")
        return uploaded["id"]

    async def _new_events(self, session: aiohttp.ClientSession, job_id: str,
                          seen: set[str]) -> list[dict]:
        """The events not in `seen` (which they join), oldest first. The API lists them newest
        first and `after` pages to older ones, so reading stops at the first one seen."""
        new: list[dict] = []
        after: str | None = None
        for _ in range(_EVENT_PAGES):
            query = {"limit": "100", **({"after": after} if after else {})}
            page = await self._call(session, "GET", f"/fine_tuning/jobs/{job_id}/events",
                                    params=query)
            data = [e for e in page.get("data") or () if isinstance(e, dict)]
            fresh = [e for e in data if e.get("id") not in seen]
            new.extend(fresh)
            if len(fresh) < len(data) or not page.get("has_more") or not data:
                break
            after = data[-1].get("id")
        seen.update(e.get("id") for e in new)
        new.reverse()
        new.sort(key=lambda e: e.get("created_at") or 0)  # stable: a tie keeps the API's order
        return new

    async def _call(self, session: aiohttp.ClientSession, method: str, path: str, *,
                    json: dict | None = None, data: Any = None,
                    params: dict | None = None) -> dict:
        url = self.base_url + path
        headers = None
        if json is not None:
            data, headers = orjson.dumps(json), {"Content-Type": "application/json"}
        if self.upstream.api_version:
            params = {**(params or {}), "api-version": self.upstream.api_version}
        try:
            async with session.request(method, url, data=data, headers=headers,
                                       params=params) as resp:
                raw = await read_body(resp, self.upstream, self._who)
                status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise timeout_error(exc, self.upstream, self._who) from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"could not reach {self._who}: "
                                f"{exc.os_error.strerror or exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the connection to {self._who} failed: "
                                f"{exc.__class__.__name__}: {exc}") from None
        if status >= 400:
            raise http_error(self.options.provider, self.base_url, status, raw, resp_headers,
                             path=path)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise UpstreamError(f"{self._who} answered {method} {path} with a body that is not a "
                                f"JSON object: {raw[:200].decode('utf-8', 'replace')!r}")
        return value


def _provider_options(config, name: str) -> OpenAIOptions:
    provider = config.providers.get(name)
    if provider is None:
        known = ", ".join(sorted(config.providers)) or "none defined"
        raise ConfigError(f"the openai training backend needs a provider {name!r} of kind "
                          f"openai in keel.yaml (providers: {known}); pass --provider NAME")
    if provider.kind != "openai":
        raise ConfigError(f"providers.{name}: kind {provider.kind!r} cannot fine-tune; the "
                          "openai training backend needs a provider of kind openai")
    try:
        return OpenAIOptions.model_validate(provider.model_extra or {})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error("keel.yaml", exc, f"providers.{name}"))\
            from None


def _started(job: TrainJob) -> str:
    if not job.external_id:
        raise ConfigError(f"job {job.id} has no upstream job id: it was never started")
    return job.external_id


def _update(upstream: dict, events: list[dict]) -> JobUpdate:
    status = _STATUS.get(upstream.get("status"), "running")
    error = upstream.get("error") if status == "failed" else None
    if status == "failed" and not error:
        error = {"code": "failed", "message": "the fine-tuning job failed (no reason given)"}
    return JobUpdate(status=status, events=events, progress=_progress(upstream, events),
                     result_model=upstream.get("fine_tuned_model") if status == "succeeded"
                     else None, error=error)


def _progress(upstream: dict, events: list[dict]) -> float | None:
    if upstream.get("status") == "succeeded":
        return 1.0
    for event in reversed(events):
        data = event.get("data") or {}
        if isinstance(data, dict) and data.get("total_steps") and data.get("step") is not None:
            return min(1.0, float(data["step"]) / float(data["total_steps"]))
    return None
