"""`keel eval dataset` import / list / show / versions / from-traces, on each store."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from keel.cli.eval_dataset import dataset
from keel.cli.main import KeelGroup
from keel.evals.dataset_store import get_dataset
from keel.ops.feedback import add_feedback
from keel.ops.traces import TraceRecorder
from tests.ops.helpers import make_trace, tracing
from tests.store.backends import db_url, store  # noqa: F401 - fixtures, one run per backend

# Mounted the way `keel eval` mounts it, so KeelErrors print as one line with exit code 2.
cli = KeelGroup()
cli.add_command(dataset)


def run(*args: str):
    return CliRunner().invoke(cli, ["dataset", *args], catch_exceptions=False)


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_import_list_show_versions(db_url, tmp_path):  # noqa: F811
    first = write_jsonl(tmp_path / "v1.jsonl", [
        {"input": "What is 2+2?", "ideal": "4"},
        {"input": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Capital of France?"}], "ideal": ["Paris"]},
    ])
    result = run("import", first, "--name", "qa", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "qa " in result.output and "2 samples, stored" in result.output
    again = json.loads(run("import", first, "--name", "qa", "--db", db_url, "--json").output)
    assert again["created"] is False and again["samples"] == 2
    v1 = again["version"]

    second = write_jsonl(tmp_path / "v2.jsonl", [{"input": "What is 3+3?", "ideal": "6"}])
    v2 = json.loads(run("import", second, "--name", "qa", "--db", db_url, "--json").output)
    assert v2["created"] and v2["version"] != v1

    listed = run("list", "--db", db_url)
    assert listed.exit_code == 0 and "qa" in listed.output and v2["version"] in listed.output
    rows = json.loads(run("list", "--db", db_url, "--json").output)
    assert rows[0]["versions"] == 2 and rows[0]["sample_count"] == 1

    versions = json.loads(run("versions", "qa", "--db", db_url, "--json").output)
    assert [v["version"] for v in versions] == [v2["version"], v1]
    assert v1 in run("versions", "qa", "--db", db_url).output

    shown = run("show", "qa", "--version", v1[:8], "--db", db_url)
    assert shown.exit_code == 0, shown.output
    assert "Capital of France?" in shown.output and "• Paris" in shown.output
    data = json.loads(run("show", "qa", "--version", v1, "--limit", "1", "--db", db_url,
                          "--json").output)
    assert data["version"] == v1 and len(data["samples"]) == 1
    assert data["samples"][0]["ideal"] == "4"


def test_errors_are_one_clean_line(db_url, tmp_path):  # noqa: F811
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "ok"}\n{"ideal": "x"}\n')
    result = run("import", str(bad), "--name", "x", "--db", db_url)
    assert result.exit_code == 2
    assert "bad.jsonl:2: missing field 'input'" in result.output
    run("import", write_jsonl(tmp_path / "ok.jsonl", [{"input": "a"}]), "--name", "x",
        "--db", db_url)
    result = run("show", "nope", "--db", db_url)
    assert result.exit_code == 2 and "no dataset 'nope'" in result.output
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert run("list", "--db", missing).exit_code == 2
    assert not (tmp_path / "none.db").exists()


# -- from traces -----------------------------------------------------------------------------


@pytest.fixture
def production(store):  # noqa: F811
    """Five traces: two thumbs down (one corrected twice), a thumbs up, a rating of 5 and a
    rating of 1 (down: it says its scale), and an old thumbs down."""
    traces = [make_trace(n, model="gpt-4o-mini" if n != 3 else "smollm2") for n in range(5)]
    old = make_trace(9)
    old.started_at = time.time() - 10 * 86400  # ten days ago
    recorder = TraceRecorder(store, tracing())
    for trace in [*traces, old]:
        recorder.submit(trace)
    recorder.close()
    t = [trace.id for trace in traces]
    add_feedback(store, t[0], -1, comment="wrong", correction="first fix")
    add_feedback(store, t[0], -1, correction="better fix")
    add_feedback(store, t[1], 1, comment="great")
    add_feedback(store, t[2], 1)
    add_feedback(store, t[2], -1, comment="changed my mind")  # the latest word counts
    add_feedback(store, t[3], 5)
    add_feedback(store, t[4], 1, scale="rating")
    add_feedback(store, old.id, -1)
    return t, old.id


def build(db_url, *args):  # noqa: F811
    result = run("from-traces", "bad-answers", "--db", db_url, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_from_traces_with_feedback_down(db_url, store, production):  # noqa: F811
    t, _old = production
    report = build(db_url, "--feedback", "down", "--since", "7d")
    assert report["samples"] == 3 and report["created"]
    meta, samples = get_dataset(store, "bad-answers", report["version"])
    assert meta["source"] == "traces feedback=down since=7d"
    by_id = {s.id: s for s in samples}
    assert set(by_id) == {t[0], t[2], t[4]}  # not t[1] (up), nor the ten-day-old one
    corrected = by_id[t[0]]
    assert corrected.input == [{"role": "user", "content": "hello 0"}]
    assert corrected.ideal == "better fix"  # the latest correction
    assert corrected.metadata == {"trace_id": t[0], "model": "gpt-4o-mini",
                                  "feedback_score": -1, "output": "hi 0"}
    assert by_id[t[2]].ideal is None
    assert by_id[t[2]].metadata["feedback_comment"] == "changed my mind"

    again = build(db_url, "--feedback", "down", "--since", "7d")
    assert again["version"] == report["version"] and not again["created"]
    human = run("from-traces", "bad-answers", "--db", db_url, "--feedback", "down")
    assert "bad-answers" in human.output and "4 samples, stored" in human.output


def test_from_traces_other_filters(db_url, store, production):  # noqa: F811
    t, _old = production
    assert build(db_url, "--feedback", "up")["samples"] == 2  # t[1] and the 5 on t[3]
    rated = build(db_url, "--min-score", "4")
    _, samples = get_dataset(store, "bad-answers", rated["version"])
    assert [s.id for s in samples] == [t[3]]
    assert build(db_url, "--model", "smollm2")["samples"] == 1
    everything = build(db_url, "--limit", "3")
    _, samples = get_dataset(store, "bad-answers", everything["version"])
    assert [s.id for s in samples] == [t[4], t[3], t[2]]  # newest first
    result = run("from-traces", "x", "--db", db_url, "--model", "nobody")
    assert result.exit_code == 2 and "no traces match" in result.output
