"""Judge calibration: the arithmetic against hand-computed cases, then `keel eval calibrate`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from keel.cli.eval_human import calibrate
from keel.cli.main import KeelGroup
from keel.evals.annotate import Answer, Item, save_annotation
from keel.evals.calibrate import (
    accuracy,
    calibration,
    cohens_kappa,
    confusion,
    human_verdict,
    reading,
)
from tests.evals.test_annotate import make_run
from tests.store.backends import db_url, store  # noqa: F401 - fixtures, one run per backend

cli = KeelGroup()
cli.add_command(calibrate)

# Ten outputs graded by a person and by a judge, as (human, judge):
#
#                judge pass  judge fail   total
#   human pass        4           2         6
#   human fail        1           3         4
#   total             5           5        10
#
# observed agreement p_o = (4 + 3) / 10 = 0.7
# chance agreement  p_e = P(both pass) + P(both fail) = (6/10)(5/10) + (4/10)(5/10)
#                       = 0.30 + 0.20 = 0.5
# kappa = (p_o - p_e) / (1 - p_e) = (0.7 - 0.5) / (1 - 0.5) = 0.4   -> "fair"
BINARY = ([("pass", "pass")] * 4 + [("pass", "fail")] * 2 + [("fail", "pass")] * 1
          + [("fail", "fail")] * 3)

# Three categories, six outputs: (A,A) (A,A) (B,B) (B,C) (C,C) (C,A)
# p_o = 4/6 = 2/3
# human shares: A 2/6, B 2/6, C 2/6; judge shares: A 3/6, B 1/6, C 2/6
# p_e = (2/6)(3/6) + (2/6)(1/6) + (2/6)(2/6) = (6 + 2 + 4) / 36 = 1/3
# kappa = (2/3 - 1/3) / (1 - 1/3) = (1/3) / (2/3) = 0.5   -> "moderate"
CATEGORIES = [("A", "A"), ("A", "A"), ("B", "B"), ("B", "C"), ("C", "C"), ("C", "A")]


def test_kappa_of_the_hand_computed_cases():
    assert accuracy(BINARY) == pytest.approx(0.7)
    assert cohens_kappa(BINARY) == pytest.approx(0.4)
    assert reading(cohens_kappa(BINARY)) == "fair"
    assert confusion(BINARY) == {"pass": {"pass": 4, "fail": 2}, "fail": {"pass": 1, "fail": 3}}
    assert accuracy(CATEGORIES) == pytest.approx(2 / 3)
    assert cohens_kappa(CATEGORIES) == pytest.approx(0.5)
    assert reading(0.5) == "moderate"


def test_kappa_edges():
    assert cohens_kappa([]) is None and accuracy([]) is None
    # Always agreeing on two categories: perfect.
    assert cohens_kappa([("pass", "pass"), ("fail", "fail")]) == pytest.approx(1.0)
    # Always disagreeing, each half the time: p_o = 0, p_e = 0.5 -> (0 - 0.5) / 0.5 = -1.
    assert cohens_kappa([("pass", "fail"), ("fail", "pass")]) == pytest.approx(-1.0)
    assert reading(-1.0) == "poor (worse than chance)"
    # Both raters only ever said "pass": chance explains everything, kappa is undefined.
    assert cohens_kappa([("pass", "pass")] * 3) is None
    assert reading(None) == "undefined"
    # One rater constant, the other not: p_e = 0.5 * 1 = 0.5, p_o = 0.5 -> 0.
    assert cohens_kappa([("pass", "pass"), ("fail", "pass")]) == pytest.approx(0.0)


def test_human_verdicts():
    assert human_verdict("pass") is True and human_verdict("FAIL") is False
    assert human_verdict("4") is True and human_verdict("3") is False
    assert human_verdict("3", pass_at=3) is True
    assert human_verdict("superset") is None and human_verdict(None) is None


def test_calibration_pairs_humans_with_each_grader():
    results = [
        {"variant": "v", "sample_id": "a", "repeat": 0,
         "grades": {"judge": {"passed": True, "label": "B"}, "exact": {"passed": False}}},
        {"variant": "v", "sample_id": "b", "repeat": 0,
         "grades": {"judge": {"passed": False, "label": "D"}, "exact": {"passed": False}}},
        {"variant": "v", "sample_id": "c", "repeat": 0, "grades": {"judge": {"passed": True}}},
    ]
    notes = [
        {"variant": "v", "sample_id": "a", "repeat": 0, "label": "fail", "annotator": "x"},
        {"variant": "v", "sample_id": "a", "repeat": 0, "label": "pass", "annotator": "x"},
        {"variant": "v", "sample_id": "b", "repeat": 0, "label": "2", "annotator": "x"},
        {"variant": "v", "sample_id": "b", "repeat": 0, "label": "d", "annotator": "y"},
        {"variant": "v", "sample_id": "c", "repeat": 0, "label": None, "annotator": "x"},
    ]
    found = {(a.grader, a.kind): a for a in calibration(results, notes)}
    judge = found[("judge", "pass/fail")]
    # x's latest word on a is pass (judge pass), on b a 2 = fail (judge fail); c has no grade.
    assert judge.n == 2 and judge.accuracy == 1.0 and judge.kappa == pytest.approx(1.0)
    assert found[("exact", "pass/fail")].confusion == {"pass": {"fail": 1},
                                                       "fail": {"fail": 1}}
    labels = found[("judge", "label")]
    assert labels.n == 1 and labels.accuracy == 1.0 and labels.confusion == {"d": {"d": 1}}
    assert [a.grader for a in calibration(results, notes, grader="exact")] == ["exact"]


def test_calibrate_command(db_url, store):  # noqa: F811
    # The hand-computed BINARY case again, now as a stored run with human annotations.
    rows = []
    for n, (human, judge) in enumerate(BINARY):
        rows.append({"variant": "base", "sample_id": f"s{n}", "output": {"text": f"answer {n}"},
                     "grades": {"fact": {"score": float(judge == "pass"),
                                         "passed": judge == "pass"}}})
    run_id = make_run(store, rows)
    for n, (human, _) in enumerate(BINARY):
        item = Item(sample_id=f"s{n}", sample=None, run_id=run_id, variant="base", repeat=0)
        save_annotation(store, item, Answer(label=human), "ann")

    result = CliRunner().invoke(cli, ["calibrate", run_id, "--db", db_url, "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    [fact] = report["agreements"]
    assert report["run_id"] == run_id
    assert (fact["grader"], fact["kind"], fact["n"]) == ("fact", "pass/fail", 10)
    assert fact["accuracy"] == pytest.approx(0.7) and fact["kappa"] == pytest.approx(0.4)
    assert fact["confusion"] == {"pass": {"pass": 4, "fail": 2}, "fail": {"pass": 1, "fail": 3}}

    table = CliRunner().invoke(cli, ["calibrate", run_id, "--db", db_url]).output
    assert "fact" in table and "0.70" in table and "0.40" in table and "fair" in table
    assert "human ↓ / grader →" in table
    nothing = CliRunner().invoke(cli, ["calibrate", run_id, "--db", db_url, "--grader", "x"])
    assert "no human grades" in nothing.output
