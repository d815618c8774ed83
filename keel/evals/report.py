"""A run's numbers and how they are shown: the summary, its table, CSV/JSONL export, HTML.

The summary is per variant × grader: mean score, pass rate, n, errors, and the variant's mean
latency, tokens and cost. With repeats > 1 it adds, per grader, `agreement` (how often the
repeats of a sample reach the same verdict, 1.0 = always) and `pass_all` (the share of samples
that passed on every repeat).

A grade that could not be made (`__error__`) or read (`__invalid__`) carries its reason in
`details.error`; `problems` lists them per cell, and every view shows the label with the reason
(`__error__: judge prompt too long for smollm2 (4500 tokens > context 4096)`).
"""

from __future__ import annotations

import csv
import html
import io
from collections import defaultdict
from datetime import datetime
from statistics import fmean

import orjson
from rich.table import Table


def summarize(rows: list[dict], grader_names: list[str], repeats: int = 1) -> dict:
    names = list(grader_names)
    for row in rows:
        names += [g for g in (row.get("grades") or {}) if g not in names]
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_variant[row["variant"]].append(row)
    variants = {}
    for variant, vrows in by_variant.items():
        ok = [r for r in vrows if r.get("error") is None]
        costs = [r["cost_usd"] for r in ok if r.get("cost_usd") is not None]
        variants[variant] = {
            "cells": len(vrows),
            "errors": len(vrows) - len(ok),
            "latency_ms": _mean([r["latency_ms"] for r in ok if r.get("latency_ms") is not None]),
            "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in ok),
            "completion_tokens": sum(r.get("completion_tokens") or 0 for r in ok),
            "cost_usd": sum(costs) if costs else None,
            "graders": {g: _grader_summary(vrows, g, repeats) for g in names},
        }
    return {"repeats": repeats, "cells": len(rows), "variants": variants}


def _grader_summary(rows: list[dict], grader: str, repeats: int) -> dict:
    grades = [(r, (r.get("grades") or {}).get(grader)) for r in rows]
    grades = [(r, g) for r, g in grades if g is not None]
    verdicts = [g["passed"] for _, g in grades if g.get("passed") is not None]
    found = {
        "mean": _mean([g["score"] for _, g in grades]),
        "pass_rate": _mean([1.0 if p else 0.0 for p in verdicts]),
        "n": len(grades),
        "errors": sum(1 for _, g in grades if g.get("label") in ("__error__", "__invalid__")),
    }
    if repeats > 1:
        per_sample: dict[str, list[bool]] = defaultdict(list)
        for r, g in grades:
            if g.get("passed") is not None:
                per_sample[r["sample_id"]].append(bool(g["passed"]))
        runs = [v for v in per_sample.values() if v]
        found["agreement"] = _mean([max(v.count(True), v.count(False)) / len(v) for v in runs])
        found["pass_all"] = _mean([1.0 if all(v) else 0.0 for v in runs])
    return found


PROBLEM_LABELS = ("__error__", "__invalid__")


def grade_note(grade: dict) -> str:
    """A grade's label with its reason, when it has one."""
    label = grade.get("label") or ""
    error = (grade.get("details") or {}).get("error")
    return f"{label}: {error}" if error and label in PROBLEM_LABELS else label


def problems(rows: list[dict]) -> list[dict]:
    """What went wrong, per cell: the answer's error (its grades all fail for it), or each grade
    that could not be made or read, with the reason."""
    found = []
    for r in rows:
        where = {"variant": r["variant"], "sample_id": r["sample_id"], "repeat": r["repeat"]}
        if r.get("error"):
            found.append({**where, "grader": None,
                          "problem": f"no answer: {r['error'].get('message')}"})
            continue
        for name, grade in (r.get("grades") or {}).items():
            if grade.get("label") in PROBLEM_LABELS:
                found.append({**where, "grader": name, "problem": grade_note(grade)})
    return found


def _mean(values: list[float]) -> float | None:
    return fmean(values) if values else None


# -- the table -----------------------------------------------------------------------------


def summary_table(summary: dict, title: str | None = None) -> Table:
    repeats = summary.get("repeats", 1) > 1
    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    columns = ["variant", "grader", "mean", "pass rate", "n", "errors"]
    columns += ["agreement", "pass all"] if repeats else []
    columns += ["latency ms", "tokens in/out", "cost $"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("variant", "grader") else "right",
                         no_wrap=True)
    for variant, v in summary.get("variants", {}).items():
        for i, (grader, g) in enumerate(v["graders"].items()):
            first = i == 0
            cells = [variant if first else "", grader, fmt(g["mean"]), fmt(g["pass_rate"]),
                     str(g["n"]), str(v["errors"]) if first else ""]
            cells += [fmt(g.get("agreement")), fmt(g.get("pass_all"))] if repeats else []
            cells += [
                fmt(v["latency_ms"], 1) if first else "",
                f"{v['prompt_tokens']}/{v['completion_tokens']}" if first else "",
                fmt(v["cost_usd"], 6) if first else "",
            ]
            table.add_row(*cells)
    return table


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# -- export --------------------------------------------------------------------------------


def export_rows(run: dict, results: list[dict], samples: dict) -> list[dict]:
    """One flat dict per cell: the sample, the answer, the measurements, every grade."""
    out = []
    for r in results:
        sample = samples.get(r["sample_id"])
        out.append({
            "run_id": run["id"], "variant": r["variant"], "sample_id": r["sample_id"],
            "repeat": r["repeat"],
            "input": sample.input if sample else None,
            "ideal": sample.ideal if sample else None,
            "output": output_text(r), "error": r.get("error"),
            "latency_ms": r.get("latency_ms"), "prompt_tokens": r.get("prompt_tokens"),
            "completion_tokens": r.get("completion_tokens"), "cost_usd": r.get("cost_usd"),
            "system_fingerprint": r.get("system_fingerprint"), "trace_id": r.get("trace_id"),
            "grades": r.get("grades") or {},
        })
    return out


def to_jsonl(rows: list[dict]) -> str:
    return "".join(orjson.dumps(row).decode() + "\n" for row in rows)


def to_csv(rows: list[dict]) -> str:
    graders = []
    for row in rows:
        graders += [g for g in row["grades"] if g not in graders]
    base = ["run_id", "variant", "sample_id", "repeat", "input", "ideal", "output", "error",
            "latency_ms", "prompt_tokens", "completion_tokens", "cost_usd",
            "system_fingerprint", "trace_id"]
    header = base + [f"{g}.{k}" for g in graders for k in ("score", "passed", "label", "error")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        cells = [_cell(row[k], k) for k in base]
        for g in graders:
            grade = row["grades"].get(g) or {}
            cells += [_cell(grade.get("score")), _cell(grade.get("passed")),
                      _cell(grade.get("label")), _cell((grade.get("details") or {}).get("error"))]
        writer.writerow(cells)
    return buffer.getvalue()


def _cell(value, key: str = "") -> str:
    if value is None:
        return ""
    if key == "input" and isinstance(value, list):
        return message_text(value)
    if key == "error" and isinstance(value, dict):
        return str(value.get("message"))
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


def output_text(result: dict) -> str | None:
    return ((result.get("output") or {}).get("text")) if result.get("error") is None else None


def message_text(messages: list[dict]) -> str:
    """Chat messages as readable text: the last user turn, or every turn when there is none."""
    for msg in reversed(messages or []):
        if msg.get("role") == "user" and isinstance(msg.get("content"), str):
            return msg["content"]
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages or [])


# -- HTML ----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f4f4f4} td.num{text-align:right} .pass{color:#080} .fail{color:#b00}
pre{white-space:pre-wrap;margin:0;max-width:40em} details pre{font-size:12px}
"""


def to_html(run: dict, results: list[dict], samples: dict) -> str:
    """A self-contained page: summary, audit and every cell. All text is escaped."""
    e = html.escape
    summary = run.get("summary") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>eval run {e(run['id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(run['suite'])} <small>run {e(run['id'])}</small></h1>",
        "<p>", e(f"status {run['status']} · dataset {run['dataset_name']}@"
                 f"{run['dataset_version'][:12]} · {_time(run['created_at'])} · "
                 f"keel {run['keel_version']} · git {run.get('git_commit') or '-'}"), "</p>",
        "<h2>Summary</h2>", _html_summary(summary),
        "<h2>Audit</h2><details><summary>variants, graders, judge</summary><pre>",
        e(orjson.dumps(run.get("config"), option=orjson.OPT_INDENT_2).decode()),
        "</pre></details>",
        "<h2>Samples</h2>", _html_cells(results, samples), "</body></html>",
    ]
    return "".join(parts)


def _html_summary(summary: dict) -> str:
    e = html.escape
    rows = ["<table><tr><th>variant</th><th>grader</th><th>mean</th><th>pass rate</th>"
            "<th>n</th><th>errors</th><th>latency ms</th><th>tokens in/out</th><th>cost $</th>"
            "</tr>"]
    for variant, v in summary.get("variants", {}).items():
        for grader, g in v["graders"].items():
            rows.append(
                f"<tr><td>{e(variant)}</td><td>{e(grader)}</td><td class=num>{fmt(g['mean'])}"
                f"</td><td class=num>{fmt(g['pass_rate'])}</td><td class=num>{g['n']}</td>"
                f"<td class=num>{v['errors']}</td><td class=num>{fmt(v['latency_ms'], 1)}</td>"
                f"<td class=num>{v['prompt_tokens']}/{v['completion_tokens']}</td>"
                f"<td class=num>{fmt(v['cost_usd'], 4)}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _html_cells(results: list[dict], samples: dict) -> str:
    e = html.escape
    rows = ["<table><tr><th>sample</th><th>variant</th><th>input</th><th>ideal</th>"
            "<th>output</th><th>grades</th></tr>"]
    for r in results:
        sample = samples.get(r["sample_id"])
        ideal = sample.ideal if sample else None
        ideal = " | ".join(map(str, ideal)) if isinstance(ideal, list) else ideal
        answer = output_text(r)
        if answer is None:
            answer = f"ERROR: {(r.get('error') or {}).get('message')}"
        grades = []
        for name, g in (r.get("grades") or {}).items():
            css = "pass" if g.get("passed") else "fail" if g.get("passed") is False else ""
            label = f" ({grade_note(g)})" if g.get("label") else ""
            grades.append(f"<div class='{css}' title='{e(str(g.get('reasoning') or ''))}'>"
                          f"{e(name)}: {fmt(g.get('score'), 2)}{e(label)}</div>")
        repeat = f" #{r['repeat']}" if r.get("repeat") else ""
        rows.append(
            f"<tr><td>{e(r['sample_id'] + repeat)}</td><td>{e(r['variant'])}</td>"
            f"<td><pre>{e(message_text(sample.input) if sample else '')}</pre></td>"
            f"<td><pre>{e(str(ideal or ''))}</pre></td><td><pre>{e(answer or '')}</pre></td>"
            f"<td>{''.join(grades)}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
