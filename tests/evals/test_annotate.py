"""`keel eval annotate`: one sample at a time, saved as it goes, driven through CliRunner input."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from keel.cli.eval_human import annotate
from keel.cli.main import KeelGroup
from keel.errors import InvalidRequest
from keel.evals.annotate import Answer, parse_grade, run_annotations
from keel.evals.base import Sample
from keel.evals.dataset_store import dataset_versions, get_dataset, import_dataset
from keel.store.models import eval_annotations, eval_results, eval_runs
from tests.store.backends import db_url, store  # noqa: F401 - fixtures, one run per backend

cli = KeelGroup()
cli.add_command(annotate)


def run(db_url, *args, input: str):  # noqa: F811
    return CliRunner().invoke(cli, ["annotate", "--db", db_url, *args], input=input,
                              catch_exceptions=False)


def make_dataset(store, n: int = 3) -> tuple[str, list[Sample]]:  # noqa: F811
    samples = [Sample(id=f"q{i}", input=[{"role": "user", "content": f"question {i}"}],
                      ideal=f"answer {i}") for i in range(n)]
    _, version, _ = import_dataset(store, "qa", samples)
    return version, samples


def make_run(store, results: list[dict], run_id: str = "run0001abc") -> str:  # noqa: F811
    """A finished run of dataset `qa` with the given result rows (variant, sample_id, output,
    grades; repeat 0 unless given)."""
    version, _ = make_dataset(store)
    now = time.time()
    with store.engine.begin() as conn:
        conn.execute(eval_runs.insert().values(
            id=run_id, created_at=now, finished_at=now, suite="support", status="finished",
            dataset_name="qa", dataset_version=version, config={}, keel_version="0.1.0"))
        conn.execute(eval_results.insert(), [
            {"run_id": run_id, "repeat": 0, "created_at": now, "output": None, "error": None,
             "grades": {},
             **row} for row in results])
    return run_id


def annotations(store):  # noqa: F811
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(eval_annotations).order_by(eval_annotations.c.id))
        return [dict(row) for row in rows.mappings()]


def test_parse_grade():
    assert parse_grade("p") == Answer(label="pass", score=1.0)
    assert parse_grade(" FAIL ") == Answer(label="fail", score=0.0)
    assert parse_grade("4") == Answer(label="4", score=4.0)
    assert parse_grade("superset") == Answer(label="superset")
    with pytest.raises(InvalidRequest):
        parse_grade("  ")


def test_dataset_annotation_saves_as_it_goes_and_resumes(db_url, store):  # noqa: F811
    make_dataset(store)
    # q0: pass with a comment; q1: write an ideal answer; q2 is shown, then q quits.
    result = run(db_url, "--dataset", "qa", "--annotator", "ann",
                 input="p\nclear and right\ni\na better answer\n\nq\n")
    assert result.exit_code == 0, result.output
    assert "3 left for ann" in result.output and "question 0" in result.output
    assert "answer 0" in result.output and "saved 2 annotation(s)" in result.output
    first, second = annotations(store)
    assert (first["sample_id"], first["label"], first["score"], first["comment"]) == \
        ("q0", "pass", 1.0, "clear and right")
    assert first["annotator"] == "ann" and first["dataset_id"] is not None
    assert first["run_id"] is None
    assert (second["sample_id"], second["ideal"], second["label"]) == ("q1", "a better answer",
                                                                        None)

    # The ideal answer makes a new version of the dataset; the annotated one is unchanged.
    assert "ideal answers: dataset qa new version" in result.output
    assert "1 sample(s) changed" in result.output
    versions = dataset_versions(store, "qa")
    assert len(versions) == 2
    _, latest = get_dataset(store, "qa")
    _, original = get_dataset(store, "qa", versions[1]["version"])
    assert [s.ideal for s in latest] == ["answer 0", "a better answer", "answer 2"]
    assert [s.ideal for s in original] == ["answer 0", "answer 1", "answer 2"]

    # The next session (on the new version) starts at q2; running out of input stops cleanly.
    result = run(db_url, "--dataset", "qa", "--annotator", "ann", input="")
    assert result.exit_code == 0, result.output
    assert "1 left for ann" in result.output and "question 2" in result.output
    # Another annotator sees everything; a bad grade is asked again; s skips.
    result = run(db_url, "--dataset", "qa", "--annotator", "bob",
                 input="s\n" + "x" * 201 + "\n4\n\nfail\nnope\n")
    assert "3 left for bob" in result.output and "at most 200 characters" in result.output
    saved = [(a["annotator"], a["sample_id"], a["label"]) for a in annotations(store)[2:]]
    assert saved == [("bob", "q1", "4"), ("bob", "q2", "fail")]


def test_run_annotation_shows_output_and_verdicts(db_url, store):  # noqa: F811
    grades = {"fact": {"score": 1.0, "passed": True, "label": "B",
                       "reasoning": "the answer contains the expert answer"}}
    run_id = make_run(store, [
        {"variant": "base", "sample_id": "q0", "output": {"text": "the base answer"},
         "grades": grades},
        {"variant": "new", "sample_id": "q0", "output": {"text": "the new answer"},
         "grades": {"fact": {"score": 0.0, "passed": False, "label": "D"}}},
        {"variant": "base", "sample_id": "q1", "output": None,
         "error": {"message": "upstream failed"}},
    ])
    result = run(db_url, "--run", run_id[:5], "--annotator", "ann",
                 input="fail\n\nsuperset\nclose enough\nq\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 left for ann" in out and "variant base" in out and "question 0" in out
    assert "the base answer" in out and "the new answer" in out
    assert "the answer contains the expert answer" in out and "pass" in out
    notes = run_annotations(store, run_id)
    assert [(n["variant"], n["sample_id"], n["repeat"], n["label"], n["score"]) for n in notes] \
        == [("base", "q0", 0, "fail", 0.0), ("new", "q0", 0, "superset", None)]
    assert notes[1]["comment"] == "close enough"

    result = run(db_url, "--run", run_id, "--annotator", "ann", "--blind", input="q\n")
    assert "1 left for ann" in result.output and "upstream failed" in result.output
    assert "ideal answers" not in result.output  # nobody wrote one

    # An ideal written for a failed output goes into a new version of the run's dataset.
    result = run(db_url, "--run", run_id, "--annotator", "ann", input="i\nthe real answer\n\n")
    assert "ideal answers: dataset qa new version" in result.output
    _, latest = get_dataset(store, "qa")
    assert [s.ideal for s in latest] == ["answer 0", "the real answer", "answer 2"]


def test_eval_show_lists_the_human_grades_of_a_run(db_url, store):  # noqa: F811
    import json

    from keel.cli.main import cli as keel_cli

    run_id = make_run(store, [
        {"variant": "base", "sample_id": "q0", "output": {"text": "an answer"}},
        {"variant": "base", "sample_id": "q1", "output": {"text": "another"}},
    ])
    result = run(db_url, "--run", run_id, "--annotator", "ann", input="pass\nlooks right\nq\n")
    assert result.exit_code == 0, result.output
    shown = CliRunner().invoke(keel_cli, ["eval", "show", run_id, "--db", db_url],
                               catch_exceptions=False).output
    assert "1 human annotation(s)" in shown and "looks right" in shown and "ann" in shown
    shown = CliRunner().invoke(keel_cli, ["eval", "show", run_id, "--db", db_url, "--json"],
                               catch_exceptions=False).output
    (note,) = json.loads(shown)["annotations"]
    assert (note["sample_id"], note["label"], note["annotator"]) == ("q0", "pass", "ann")


def test_annotate_needs_exactly_one_target(db_url, store):  # noqa: F811
    make_dataset(store)
    result = run(db_url, input="")
    assert result.exit_code == 2 and "--dataset NAME or --run RUN_ID" in result.output
    result = run(db_url, "--run", "nosuchrun", input="")
    assert result.exit_code == 2 and "no eval run 'nosuchrun'" in result.output
