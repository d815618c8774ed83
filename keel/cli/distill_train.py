"""`keel distill train | jobs | job | cancel`: train a student and follow its job.

    keel distill train SET_OR_FILE --backend openai|local --base-model M [--provider NAME]
                       [--epochs N] [--batch-size N] [--learning-rate-multiplier X]
                       [--suffix S] [--validation-file F] [--register NAME]
                       [-o KEY=VALUE ...] [--no-wait]
    keel distill jobs                   the jobs, newest first
    keel distill job ID [--follow]      one job with its events (--follow: until it ends)
    keel distill cancel ID              cancel it at the backend

SET_OR_FILE is a chat fine-tuning JSONL file, or a training set (`keel distill dataset`) by id
or name, whose train split (and validation split, when it has one) is exported first. Files are
checked with keel.distill.validate before anything is uploaded. The job row
(keel.distill.lineage) records the backend's events, status, error and trained model as they
come. `-o KEY=VALUE` passes a backend option (openai: poll_interval, max_poll_interval, ...).

Exit codes: 0 trained (or started, with --no-wait); 1 the job failed or was cancelled
elsewhere; 2 a usage, config or upstream error (one red line); 130 Ctrl-C, which cancels the
job at the backend first.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, store_options
from keel.distill import lineage
from keel.distill.backends.base import BACKENDS, JobUpdate, TrainJob, backend_class
from keel.errors import InvalidRequest, KeelError

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "red", "running": "yellow",
          "queued": "yellow"}


def _options(ctx, param, values) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}")
        found[key.strip()] = yaml.safe_load(raw) if raw else ""
    return found


@click.command("train")
@click.argument("source", metavar="SET_OR_FILE")
@click.option("--backend", "backend_name", type=click.Choice(sorted(BACKENDS)), required=True,
              help="openai: an OpenAI-compatible fine-tuning API; local: this machine's CPU.")
@click.option("--base-model", required=True, help="The student before training.")
@click.option("--provider", help="openai: the provider in keel.yaml to train with "
              "(default: openai).")
@click.option("--validation-file", type=click.Path(exists=True, dir_okay=False),
              help="Validation JSONL (default: the set's validation split, if any).")
@click.option("--epochs", type=click.IntRange(min=1), help="n_epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="batch_size.")
@click.option("--learning-rate-multiplier", type=click.FloatRange(min=0, min_open=True),
              help="learning_rate_multiplier.")
@click.option("--suffix", help="A name part for the trained model.")
@click.option("--register", "register_name", metavar="NAME",
              help="The Keel model name to give the student (for `keel distill promote`).")
@click.option("-o", "--option", "backend_options", multiple=True, callback=_options,
              metavar="KEY=VALUE", help="A backend option. Repeatable.")
@click.option("--no-wait", is_flag=True, help="Start the job and return.")
@store_options
def train_command(source, backend_name, base_model, provider, validation_file, epochs,
                  batch_size, learning_rate_multiplier, suffix, register_name, backend_options,
                  no_wait, config_path, db_url) -> None:
    """Train a student on a training set or a fine-tuning JSONL file, and follow the job."""
    from keel.config import load_config

    config = load_config(config_path)
    store = common.open_store_for(config_path, db_url, must_exist=False)
    try:
        set_id, train_file, split_validation = _training_files(store, config, source)
        validation_file = validation_file or split_validation
        check_file(train_file)
        if validation_file:
            check_file(validation_file, validation=True)
        if provider:
            backend_options = {"provider": provider, **backend_options}
        hyper = {k: v for k, v in (("n_epochs", epochs), ("batch_size", batch_size),
                                   ("learning_rate_multiplier", learning_rate_multiplier))
                 if v is not None}
        backend = _backend(backend_name, backend_options, config)
        job_id = lineage.create_job(store, backend=backend_name, base_model=base_model,
                                    set_id=set_id, options={
                                        "train_file": str(Path(train_file).resolve()),
                                        "validation_file": validation_file
                                        and str(Path(validation_file).resolve()),
                                        "hyperparameters": hyper, "suffix": suffix,
                                        "register": register_name,
                                        "backend_options": backend_options})
        out = common.console()
        out.print(f"job {job_id}: training {base_model} on {train_file} with {backend_name}")
        outcome = asyncio.run(_start_and_follow(store, backend, _train_job(
            lineage.get_job(store, job_id)), follow=not no_wait, out=out))
        _finish(store, job_id, outcome, out)
    finally:
        store.close()


@click.command("jobs")
@store_options
@json_option
def jobs_command(config_path, db_url, as_json) -> None:
    """List the training jobs, newest first."""
    store = common.open_store_for(config_path, db_url)
    try:
        rows = lineage.list_jobs(store)
        if _settle_orphans(store, rows, config_path):
            rows = lineage.list_jobs(store)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(rows))
        return
    table = Table("id", "created", "backend", "base model", "status", "trained model", "set")
    for row in rows:
        table.add_row(row["id"], common.when(row["created_at"]), row["backend"],
                      row["base_model"], _status(row["status"]), row["result_model"] or "-",
                      row["set_id"] or "-")
    common.console().print(table)


@click.command("job")
@click.argument("job_id", metavar="ID")
@click.option("--follow", is_flag=True, help="Follow it until it ends (e.g. after --no-wait).")
@store_options
@json_option
def job_command(job_id, follow, config_path, db_url, as_json) -> None:
    """Show a training job and its events."""
    from keel.config import load_config

    store = common.open_store_for(config_path, db_url)
    try:
        row = lineage.get_job(store, job_id)
        if _settle_orphans(store, [row], config_path):
            row = lineage.get_job(store, row["id"])
        if follow and row["status"] not in lineage.FINAL_STATES:
            out = common.console()
            backend = _backend(row["backend"], (row["options"] or {}).get("backend_options"),
                               load_config(config_path))
            outcome = asyncio.run(_start_and_follow(store, backend, _train_job(row),
                                                    follow=True, out=out, start=False))
            _finish(store, row["id"], outcome, out)
            return
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(row))
        return
    _show(row)


@click.command("cancel")
@click.argument("job_id", metavar="ID")
@store_options
def cancel_command(job_id, config_path, db_url) -> None:
    """Cancel a training job at its backend."""
    from keel.config import load_config

    store = common.open_store_for(config_path, db_url)
    try:
        row = lineage.get_job(store, job_id)
        if _settle_orphans(store, [row], config_path):  # it ended unrecorded: not "cancelled"
            row = lineage.get_job(store, row["id"])
        if row["status"] in lineage.FINAL_STATES:
            raise InvalidRequest(f"job {row['id']} has already {row['status']}")
        backend = _backend(row["backend"], (row["options"] or {}).get("backend_options"),
                           load_config(config_path))
        asyncio.run(backend.cancel(_train_job(row)))
        _record(store, row["id"], JobUpdate("cancelled", events=[_note("cancelled with "
                                                                       "`keel distill cancel`")]))
    finally:
        store.close()
    click.echo(f"cancelled job {row['id']}")


COMMANDS = [train_command, jobs_command, job_command, cancel_command]


# -- the work, as functions ---------------------------------------------------------------------


def check_file(path: str | Path, *, validation: bool = False) -> None:
    """Refuse a training (or validation) file the fine-tuning API would refuse, before any
    upload. The 10-example minimum is the training file's alone."""
    from keel.distill.validate import MIN_EXAMPLES, validate_file

    problems = validate_file(path, min_examples=1 if validation else MIN_EXAMPLES).problems
    if problems:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InvalidRequest(f"{path}: {len(problems)} problem(s), nothing was uploaded: "
                             f"{shown}{more} (see `keel distill validate {path}`)")


def _training_files(store, config, source: str) -> tuple[str | None, Path, Path | None]:
    """(set id, train file, validation file) for a JSONL path or a training set."""
    if Path(source).is_file():
        return None, Path(source), None
    from keel.distill.export import export_split

    row = lineage.get_set(store, source)
    folder = Path(config.state_dir) / "distill" / "files"
    files: dict[str, Path] = {}
    for split in ("train", "validation"):
        info = (row["splits"] or {}).get(split) or {}
        if info.get("count"):
            files[split] = folder / f"{row['id']}-{split}.jsonl"
            export_split(store, info["dataset"], info.get("version"), files[split])
    if "train" not in files:
        raise InvalidRequest(f"training set {row['name']} ({row['id']}) has no train examples")
    return row["id"], files["train"], files.get("validation")


def _backend(name: str, options: dict | None, config):
    from keel.pipeline.runtime import Runtime

    return backend_class(name)(options or {}, Runtime(config))


def _settle_orphans(store, rows: list[dict], config_path) -> bool:
    """Local jobs still `queued`/`running` whose worker on this machine is gone (its `keel
    distill train` was killed, or the machine restarted): read what the worker wrote, so the
    row says how the job ended (succeeded, failed with `worker_died`, …) instead of running
    forever. True when a row was settled. Jobs at a remote API, or started on another machine,
    are left as they are: following them is `keel distill job ID --follow`."""
    from keel.config import load_config

    open_jobs = [r for r in rows if r["backend"] == "local" and r["external_id"]
                 and r["status"] not in lineage.FINAL_STATES]
    if not open_jobs:
        return False
    settled = False
    config = load_config(config_path)
    for row in open_jobs:
        try:
            backend = _backend("local", (row["options"] or {}).get("backend_options"), config)
        except KeelError:  # the local extra is not installed here: nothing to read
            return settled
        job = _train_job(row)
        if not backend.worker_gone(job):
            continue

        async def drain(backend=backend, job=job):
            async for update in backend.follow(job):
                await asyncio.to_thread(_record, store, job.id, update)

        asyncio.run(drain())
        settled = True
    return settled


def _train_job(row: dict) -> TrainJob:
    options = row["options"] or {}
    return TrainJob(id=row["id"], base_model=row["base_model"], train_file=options["train_file"],
                    validation_file=options.get("validation_file"),
                    hyperparameters=options.get("hyperparameters") or {},
                    external_id=row["external_id"], suffix=options.get("suffix"))


async def _start_and_follow(store, backend, job: TrainJob, *, follow: bool, out,
                            start: bool = True) -> str:
    """Start the job (unless `start` is False) and follow it to its end, recording every update;
    returns its final status, "started" (not followed) or "interrupted" (Ctrl-C: cancelled)."""
    last: str | None = None
    try:
        if start:
            try:
                external_id = await backend.start(job)
            except KeelError as exc:  # nothing is training: the row says why
                await asyncio.to_thread(lineage.update_job, store, job.id, status="failed",
                                        error={"code": exc.code, "message": exc.message})
                raise
            await asyncio.to_thread(lineage.update_job, store, job.id, external_id=external_id)
            out.print(f"started at the backend as {external_id}")
        if not follow:
            return "started"
        try:
            async for update in backend.follow(job):
                await asyncio.to_thread(_record, store, job.id, update)
                _print_update(out, update, last)
                last = update.status
        except KeelError as exc:  # the job may still run upstream: its status stays as known
            exc.message += (f"; the job may still be running: follow it again with "
                            f"`keel distill job {job.id} --follow`")
            raise
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task
        asyncio.current_task().uncancel()
        if job.external_id:
            await backend.cancel(job)
        await asyncio.to_thread(_record, store, job.id, JobUpdate(
            "cancelled", events=[_note("cancelled by Ctrl-C in `keel distill train`")]))
        return "interrupted"
    return last or "running"


def _record(store, job_id: str, update: JobUpdate) -> None:
    """Add an update to the job row: its new events (by id, once), status, model, error."""
    row = lineage.get_job(store, job_id)
    events = list(row["events"] or [])
    known = {e.get("id") for e in events if e.get("id")}
    events += [e for e in update.events if not e.get("id") or e["id"] not in known]
    fields: dict[str, Any] = {"status": update.status, "events": events}
    if update.result_model:
        fields["result_model"] = update.result_model
    if update.error:
        fields["error"] = update.error
    lineage.update_job(store, job_id, **fields)


def _note(message: str) -> dict:
    return {"created_at": int(time.time()), "level": "info", "message": message,
            "type": "message", "source": "keel"}


def _print_update(out, update: JobUpdate, last: str | None) -> None:
    for event in update.events:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("created_at") or time.time()))
        level = event.get("level") or "info"
        line = Text(f"{stamp}  ")
        line.append(f"{level:5}", style={"error": "red", "warn": "yellow"}.get(level, "dim"))
        line.append(f"  {event.get('message', '')}")
        out.print(line)
    if update.status != last:
        progress = f" ({update.progress:.0%})" if update.progress is not None else ""
        out.print(Text.assemble("status: ", _status(update.status), progress))


def _finish(store, job_id: str, outcome: str, out) -> None:
    row = lineage.get_job(store, job_id)
    if outcome == "started":
        out.print(f"follow it with `keel distill job {job_id} --follow`")
    elif outcome == "interrupted":
        click.secho(f"interrupted: cancelled job {job_id} at the backend", fg="red", err=True)
        sys.exit(EXIT_INTERRUPTED)
    elif outcome == "succeeded":
        out.print(f"trained: {row['result_model']}")
        out.print("add it to keel.yaml:\n")
        click.echo(model_snippet(row))
    elif outcome in ("failed", "cancelled"):
        error = row["error"] or {}
        reason = f": {error.get('code') or 'error'}: {error.get('message')}" if error else ""
        click.secho(f"error: job {job_id} {outcome}{reason}", fg="red", err=True)
        sys.exit(EXIT_FAILED)


def model_snippet(row: dict) -> str:
    """The keel.yaml lines that serve a job's trained model as a Keel model."""
    options = row["options"] or {}
    name = options.get("register") or f"student-{row['id'][:8]}"
    if row["backend"] == "local":
        section = {"providers": {name: {"kind": "local", "model_path": row["result_model"]}},
                   "models": {name: {"provider": name}}}
    else:
        provider = (options.get("backend_options") or {}).get("provider") or "openai"
        section = {"models": {name: {"provider": provider, "model": row["result_model"]}}}
    return yaml.safe_dump(section, sort_keys=False)


def _show(row: dict) -> None:
    out = common.console()
    options = row["options"] or {}
    for key, value in (("id", row["id"]), ("backend", row["backend"]),
                       ("base model", row["base_model"]), ("set", row["set_id"] or "-"),
                       ("upstream id", row["external_id"] or "-"),
                       ("created", common.when(row["created_at"])),
                       ("finished", common.when(row["finished_at"]) if row["finished_at"]
                        else "-"),
                       ("train file", options.get("train_file")),
                       ("hyperparameters", options.get("hyperparameters") or "-"),
                       ("trained model", row["result_model"] or "-")):
        out.print(f"{key:16}{value}")
    out.print(Text.assemble(f"{'status':16}", _status(row["status"])))
    if row["error"]:
        out.print(f"{'error':16}{row['error'].get('code')}: {row['error'].get('message')}")
    if row["events"]:
        out.print("events:")
        _print_update(out, JobUpdate(row["status"], events=row["events"]), row["status"])
    if row["status"] == "succeeded" and row["result_model"]:
        out.print("keel.yaml:")
        click.echo(model_snippet(row))


def _status(status: str) -> Text:
    return Text(status, style=_STYLE.get(status, ""))
