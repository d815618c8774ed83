"""The run store: eval runs and their per-cell results in `eval_runs` / `eval_results`.

A run row is created before the first cell runs and holds the audit (`config`); results are
written as cells finish, so an interrupted run keeps what it did and `--resume` fills in only
what is missing. A cell is one (variant, sample, repeat).
"""

from __future__ import annotations

import getpass
import subprocess
import time
from typing import Iterable

import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.pipeline.trace import new_trace_id
from keel.store.models import eval_results, eval_runs

RUNNING, FINISHED, FAILED = "running", "finished", "failed"


def create_run(store, *, suite: str, dataset_name: str, dataset_version: str, config: dict,
               git_commit: str | None, keel_version: str) -> str:
    run_id = new_trace_id()
    with store.engine.begin() as conn:
        conn.execute(eval_runs.insert().values(
            id=run_id, created_at=time.time(), suite=suite, status=RUNNING,
            dataset_name=dataset_name, dataset_version=dataset_version, config=config,
            git_commit=git_commit, keel_version=keel_version,
        ))
    return run_id


def reopen_run(store, run_id: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(eval_runs.update().where(eval_runs.c.id == run_id)
                     .values(status=RUNNING, finished_at=None))


def finish_run(store, run_id: str, status: str, summary: dict | None = None,
               config: dict | None = None) -> None:
    values = {"status": status, "finished_at": time.time(), "summary": summary}
    if config is not None:
        values["config"] = config
    with store.engine.begin() as conn:
        conn.execute(eval_runs.update().where(eval_runs.c.id == run_id).values(**values))


def write_results(store, run_id: str, rows: Iterable[dict]) -> None:
    """Insert finished cells; a cell already stored (a failed one being re-run) is replaced."""
    rows = [dict(row, run_id=run_id) for row in rows]
    if not rows:
        return
    with store.engine.begin() as conn:
        for row in rows:
            if row.pop("replace", False):
                conn.execute(eval_results.delete().where(
                    (eval_results.c.run_id == run_id) & (eval_results.c.variant == row["variant"])
                    & (eval_results.c.sample_id == row["sample_id"])
                    & (eval_results.c.repeat == row["repeat"])))
        conn.execute(eval_results.insert(), rows)


def done_cells(store, run_id: str) -> tuple[set, set]:
    """(cells that finished with an output, cells that ended in an error)."""
    ok, failed = set(), set()
    query = sa.select(eval_results.c.variant, eval_results.c.sample_id, eval_results.c.repeat,
                      eval_results.c.error).where(eval_results.c.run_id == run_id)
    with store.engine.connect() as conn:
        for variant, sample_id, repeat, error in conn.execute(query):
            (failed if error is not None else ok).add((variant, sample_id, repeat))
    return ok, failed


def get_run(store, run_id: str) -> dict:
    """A run by its id or a unique prefix of it."""
    if not run_id:
        raise InvalidRequest("a run id is needed")
    query = sa.select(eval_runs).where(eval_runs.c.id.startswith(run_id, autoescape=True)).limit(2)
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    if not rows:
        raise NotFound(f"no eval run {run_id!r} (see `keel eval list`)")
    if len(rows) > 1:
        raise InvalidRequest(f"run id prefix {run_id!r} is ambiguous; give more characters")
    return rows[0]


def list_runs(store, limit: int = 20, suite: str | None = None) -> list[dict]:
    query = sa.select(eval_runs).order_by(eval_runs.c.id.desc()).limit(limit)
    if suite:
        query = query.where(eval_runs.c.suite == suite)
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def previous_run(store, suite: str, before: str) -> dict | None:
    """The newest finished run of `suite` older than run `before`: the default baseline."""
    query = (sa.select(eval_runs)
             .where((eval_runs.c.suite == suite) & (eval_runs.c.id < before)
                    & (eval_runs.c.status == FINISHED))
             .order_by(eval_runs.c.id.desc()).limit(1))
    with store.engine.connect() as conn:
        row = conn.execute(query).first()
    return dict(row._mapping) if row else None


def results(store, run_id: str) -> list[dict]:
    query = (sa.select(eval_results).where(eval_results.c.run_id == run_id)
             .order_by(eval_results.c.variant, eval_results.c.id))
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def os_user() -> str:
    """Who is running this: the OS user name ("anonymous" where a container has none). Runs
    record it, and `keel eval annotate` names its annotator by it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


def git_commit(cwd=None) -> str | None:
    """HEAD of the git repository the user runs in, if any (the code that made the run)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def run_samples(store, run: dict) -> dict:
    """sample id -> Sample of the dataset version the run ran on ({} if it is not stored)."""
    from keel.errors import KeelError
    from keel.evals.dataset_store import get_dataset

    try:
        _, samples = get_dataset(store, run["dataset_name"], run["dataset_version"])
    except KeelError:
        return {}
    return {s.id: s for s in samples}
