"""`keel distill dataset | validate | list` (see keel/cli/distill.py and docs/distill-dataset.md).

    keel distill dataset NAME --from-traces [--model M --since 7d --until 1d --feedback up
                                             --min-score 4 --min-grade 0.8 --exclude-guarded
                                             --eval-run RUN --best-per-sample --grader G]
    keel distill dataset NAME --teacher ROUTE --prompts DATASET[@VERSION] | FILE.jsonl
                         [--cut-off drop|trim|keep] [--near-dup 0.95 | off]
                         [--pii redact|pseudonymize|off]
                         [--split 80/10/10] [--out DIR]
    keel distill validate FILE [--token-limit 65536]
    keel distill list
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import click

from keel.cli import common
from keel.cli.common import json_option, open_store_for, store_options
from keel.errors import InvalidRequest


@click.command("dataset")
@click.argument("name")
@click.option("--from-traces", is_flag=True, help="Build it from recorded traces.")
@click.option("--teacher", metavar="ROUTE", help="Run this route over --prompts instead.")
@click.option("--prompts", metavar="DATASET[@VERSION]|FILE",
              help="The teacher's prompt set: an eval dataset or a JSONL/CSV file.")
@click.option("--model", help="Traces of this route or upstream model only.")
@click.option("--since", metavar="WHEN", help="Traces from then on: an age (7d) or a date.")
@click.option("--until", metavar="WHEN", help="Traces before then: an age (1d) or a date.")
@click.option("--feedback", type=click.Choice(["up", "down", "any"]),
              help="Only traces whose latest feedback is this.")
@click.option("--min-score", type=float, help="Only traces whose latest feedback score is ≥ it.")
@click.option("--min-grade", type=float,
              help="Only traces an eval run graded ≥ it (0-1; mean of graders or --grader).")
@click.option("--grader", help="With --min-grade: this grader's score.")
@click.option("--eval-run", metavar="RUN",
              help="Only the traces this eval run made (e.g. a teacher sampled several times "
                   "over a prompt set); --min-grade then reads this run's grades.")
@click.option("--best-per-sample", is_flag=True,
              help="With --eval-run: one answer per sample of the run, the best graded (mean "
                   "of graders or --grader), the shortest of equals.")
@click.option("--cut-off", type=click.Choice(["drop", "trim", "keep"]), default="drop",
              show_default=True,
              help="Answers max_tokens cut off (finish_reason length): leave them out, keep "
                   "them up to their last complete sentence, or keep them whole.")
@click.option("--exclude-guarded", is_flag=True,
              help="Leave out traces where a guardrail did anything but pass.")
@click.option("--limit", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="Read at most this many (newest) traces.")
@click.option("--near-dup", default="0.95", show_default=True, metavar="COSINE|off",
              help="Drop near-duplicates whose last user messages are this similar.")
@click.option("--pii", type=click.Choice(["redact", "pseudonymize", "off"]), default="redact",
              show_default=True, help="Scrub PII from every message with the pii guard.")
@click.option("--split", "split_text", default="80/10/10", show_default=True,
              help="train/validation/test percentages.")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Write train.jsonl, validation.jsonl and test.jsonl here and validate them.")
@click.option("--token-limit", default=65_536, show_default=True, type=click.IntRange(min=1),
              help="Per-example token limit the validator checks.")
@store_options
@json_option
def dataset_command(name, from_traces, teacher, prompts, model, since, until, feedback,
                    min_score, min_grade, grader, eval_run, best_per_sample, cut_off,
                    exclude_guarded, limit, near_dup, pii, split_text, out, token_limit,
                    config_path, db_url, as_json) -> None:
    """Build training set NAME from traces or a teacher run: deduplicated, PII-scrubbed, split
    into NAME-train / NAME-validation / NAME-test eval datasets, recorded with its lineage."""
    from keel.distill import dataset as ds

    if from_traces == bool(teacher):
        raise InvalidRequest("give either --from-traces or --teacher ROUTE --prompts ...")
    if teacher and not prompts:
        raise InvalidRequest("--teacher needs --prompts DATASET[@VERSION] or FILE")
    sizes = ds.parse_split(split_text)
    threshold = _near_dup(near_dup)
    if from_traces:
        filters = ds.TraceFilters(
            model=model, since=_when(since, "--since"), until=_when(until, "--until"),
            feedback=feedback, min_score=min_score, min_grade=min_grade, grader=grader,
            eval_run=eval_run, best_per_sample=best_per_sample, cut_off=cut_off,
            exclude_guarded=exclude_guarded, limit=limit)
        store = open_store_for(config_path, db_url)
        try:
            if eval_run:
                from keel.evals.runs import get_run

                # the lineage names the run by its whole id: a prefix may later name two
                filters.eval_run = get_run(store, eval_run)["id"]
            examples = ds.examples_from_traces(store, filters)
            if not examples:
                raise InvalidRequest("no traces match the filters (traces need recorded "
                                     "bodies: tracing.record_bodies)")
            source = {"kind": "traces", "filters": _shown(filters, since, until),
                      "trace_ids": [e.origin for e in examples]}
            result = ds.build_set(store, name, examples, source=source, near_dup=threshold,
                                  pii=pii, sizes=sizes)
        finally:
            store.close()
    else:
        result = _from_teacher(name, teacher, prompts, threshold, pii, sizes, cut_off,
                               config_path, db_url, quiet=as_json)
    written = _write(result, out, token_limit) if out else {}
    _report(name, result, written, as_json)


def _from_teacher(name, teacher, prompts, threshold, pii, sizes, cut_off, config_path, db_url,
                  quiet):
    from keel.config import load_config
    from keel.distill import dataset as ds
    from keel.gateway import Gateway
    from keel.store import open_store

    config = load_config(config_path)
    store = open_store(db_url or config.database_url())
    try:
        samples, prompt_source = ds.load_prompts(store, prompts)

        async def answer():
            async with Gateway(config) as gateway:
                with click.progressbar(length=len(samples), label=f"teacher {teacher}",
                                       file=None if not quiet else _Null()) as bar:
                    return await ds.examples_from_teacher(gateway, teacher, samples,
                                                          cut_off=cut_off,
                                                          progress=bar.update)

        examples, failures = asyncio.run(answer())
        if not examples:
            first = failures[0]["error"] if failures else "no prompts"
            raise InvalidRequest(f"the teacher answered none of the prompts ({first})")
        source = {"kind": "teacher", "teacher": teacher, "prompts": prompt_source,
                  "cut_off": cut_off,
                  "trace_ids": [e.meta["trace_id"] for e in examples]}
        return ds.build_set(store, name, examples, source=source, near_dup=threshold, pii=pii,
                            sizes=sizes, stats={"prompts": len(samples),
                                                "teacher_failures": len(failures)})
    finally:
        store.close()


class _Null:
    def write(self, _text):
        return 0

    def flush(self):
        pass


def _write(result, out: str, token_limit: int) -> dict:
    from keel.distill.export import write_jsonl
    from keel.distill.validate import validate_file

    written = {}
    for part, examples in result.examples.items():
        path = Path(out) / f"{part}.jsonl"
        count = write_jsonl(examples, path)
        # The minimum of 10 applies to a training file; a small validation file is allowed.
        report = validate_file(path, token_limit=token_limit,
                               min_examples=10 if part == "train" else 0)
        written[part] = {"path": str(path), "examples": count, "report": report.to_dict()}
    return written


def _report(name, result, written, as_json) -> None:
    if as_json:
        click.echo(common.dumps({"set_id": result.set_id, "name": name,
                                 "created": result.created, "splits": result.splits,
                                 "stats": result.stats, "files": written}))
        return
    stats = result.stats
    state = "recorded" if result.created else "unchanged (the newest set already has these)"
    click.echo(f"{name} {result.set_id}: {stats['examples']} examples, {state}")
    click.echo(f"  found {stats['found']}, duplicates {stats['duplicates']}, "
               f"near-duplicates {stats.get('near_duplicates', 'not checked')}, "
               f"PII masked {stats['pii_scrubbed_total']} ({stats['pii']})")
    for part, entry in result.splits.items():
        version = entry["version"] or "(empty, not stored)"
        click.echo(f"  {part:<10} {entry['count']:>6}  {entry['dataset']} {version}")
    for part, entry in written.items():
        report = entry["report"]
        verdict = "valid" if report["ok"] else f"{len(report['problems'])} problem(s)"
        click.echo(f"  wrote {entry['path']}: {entry['examples']} lines, "
                   f"~{report['total_tokens']:,} tokens, {verdict}")
        for problem in report["problems"][:5]:
            click.echo(f"    {_problem_text(problem)}")


@click.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--token-limit", default=65_536, show_default=True, type=click.IntRange(min=1),
              help="Per-example token limit (65,536: gpt-4o-mini; 16,385: gpt-3.5-turbo).")
@click.option("--min-examples", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--max-total-tokens", type=click.IntRange(min=1), help="Fail above this total.")
@json_option
def validate_command(file, token_limit, min_examples, max_total_tokens, as_json) -> None:
    """Check a chat fine-tuning JSONL FILE as OpenAI's fine-tuning API does; exit 1 on
    problems, each printed as line, field and what is wrong."""
    from keel.distill.validate import validate_file

    report = validate_file(file, token_limit=token_limit, min_examples=min_examples,
                           max_total_tokens=max_total_tokens)
    if as_json:
        click.echo(common.dumps(report.to_dict()))
    else:
        click.echo(f"{file}: {report.examples} examples, ~{report.total_tokens:,} tokens "
                   f"(largest ~{report.max_example_tokens:,}, limit {token_limit:,})")
        for problem in report.problems:
            click.echo(f"  {problem}")
        click.echo("valid" if report.ok else f"{len(report.problems)} problem(s)")
    if not report.ok:
        raise SystemExit(1)


@click.command("list")
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(min=1))
@store_options
@json_option
def list_command(limit, config_path, db_url, as_json) -> None:
    """The training sets, newest first: source, examples per split, dataset versions."""
    from keel.distill.lineage import list_sets

    store = open_store_for(config_path, db_url)
    try:
        rows = list_sets(store, limit=limit)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(rows))
        return
    if not rows:
        click.echo("no training sets")
        return
    for row in rows:
        source = row["source"] or {}
        origin = (f"teacher {source.get('teacher')}" if source.get("kind") == "teacher"
                  else f"{len(source.get('trace_ids') or [])} traces")
        counts = "/".join(str(row["splits"].get(p, {}).get("count", 0))
                          for p in ("train", "validation", "test"))
        click.echo(f"{row['id']}  {common.when(row['created_at'])}  {row['name']}  "
                   f"{origin}  train/validation/test {counts}")


def _problem_text(problem: dict) -> str:
    where = f"line {problem['line']}" if problem["line"] is not None else "file"
    return f"{where}: {problem['field']}: {problem['message']}" if problem["field"] else \
        f"{where}: {problem['message']}"


def _near_dup(text: str) -> float | None:
    if text.strip().lower() in ("off", "none", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise InvalidRequest(f"--near-dup: expected a cosine in (0, 1] or off, got {text!r}")
    return value


def _when(text: str | None, option: str) -> float | None:
    """An age (30m, 7d: that long ago) or an ISO date / datetime, as epoch seconds."""
    if text is None:
        return None
    try:
        return common.since(text)
    except InvalidRequest:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise InvalidRequest(f"{option}: expected an age like 2h or 7d, or a date like "
                             f"2026-05-01, got {text!r}") from None


def _shown(filters, since, until) -> dict:
    shown = filters.describe()
    # What the person typed ("7d"), not the epoch it meant today: the same command on the same
    # traces then records the same source, and the lineage reads back as it was asked.
    if since:
        shown["since"] = since
    if until:
        shown["until"] = until
    return shown


COMMANDS = [dataset_command, validate_command, list_command]
