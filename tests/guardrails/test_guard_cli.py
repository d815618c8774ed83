"""`keel guard test`: guards run over labelled texts, the per-text table, precision/recall/F1
checked against a hand-computed case, --json, and --save making an eval run that
`keel eval compare` reads."""

from __future__ import annotations

import orjson
import pytest
import yaml
from click.testing import CliRunner

from keel.cli.main import cli
from keel.guardrails.evaluate import confusion

GUARDS = {
    "input": [
        {"denylist": {"words": ["acme corp", "globex"], "name": "competitors"}},
        {"regex": {"patterns": {"ORDER": r"ORD-\d{6}"}, "action": "flag"}},
    ],
}

# Hand-computed (see each line): competitors tp=2 fp=0 fn=1 tn=3 -> P 1, R 2/3, F1 0.8;
# regex tp=2 fp=1 fn=0 tn=3 -> P 2/3, R 1, F1 0.8; any guard tp=3 fp=1 fn=1 tn=1 -> 0.75 each.
LINES = [
    {"id": "c1", "text": "Is Acme Corp cheaper than you?", "label": "competitors"},  # TP, TN
    {"id": "o1", "text": "My order ORD-123456 is late", "label": "regex"},  # TN, TP
    {"id": "n1", "text": "Hello there, how are you?", "label": False},  # TN, TN
    {"id": "b1", "text": "Globex sent order ORD-000001", "label": True},  # TP, TP
    {"id": "c2", "text": "We beat acme corporation", "label": ["competitors"]},  # FN, TN
    {"id": "o2", "text": "Ticket ORD-1234567 please", "label": False},  # TN, FP
    {"id": "u1", "text": "globex rocks"},  # unlabelled: shown, not scored
]


@pytest.fixture
def files(tmp_path):
    config = tmp_path / "guards.yaml"
    config.write_text(yaml.safe_dump({"guardrails": GUARDS}))
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(orjson.dumps(line).decode() + "\n" for line in LINES))
    return tmp_path, config, data


def keel(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_table_shows_each_guard_per_text_and_the_metrics(files):
    _, config, data = files
    result = keel("guard", "test", config, data, "--no-progress")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if line.startswith("c1 "))
    assert "block" in row and "found DENYLIST" in row and "pass" in row
    row = next(line for line in lines if line.startswith("o2 "))
    assert "flag ✗" in row  # acted on a text labelled false: marked as disagreeing
    assert next(line for line in lines if line.startswith("u1 "))
    metrics = {line.split()[0]: line.split() for line in lines
               if line.startswith(("competitors ", "regex "))}
    # guard texts acted errors labelled tp fp fn tn precision recall F1 p50 p95
    assert metrics["competitors"][1:12] == ["7", "3", "0", "6", "2", "0", "1", "3", "1.000",
                                           "0.667", "0.800"]
    assert metrics["regex"][5:12] == ["2", "1", "0", "3", "0.667", "1.000", "0.800"]
    whole = next(line for line in lines if line.startswith("any guard"))
    assert whole.split()[6:13] == ["3", "1", "1", "1", "0.750", "0.750", "0.750"]


def test_json_has_every_text_and_exact_metrics(files):
    _, config, data = files
    result = keel("guard", "test", config, data, "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["guards"] == ["competitors", "regex"]
    m = report["metrics"]
    assert (m["competitors"]["tp"], m["competitors"]["fp"], m["competitors"]["fn"],
            m["competitors"]["tn"]) == (2, 0, 1, 3)
    assert m["competitors"]["recall"] == pytest.approx(2 / 3)
    assert m["regex"]["precision"] == pytest.approx(2 / 3)
    assert m["regex"]["f1"] == pytest.approx(0.8)
    assert m["any guard"]["f1"] == pytest.approx(0.75)
    assert m["any guard"]["labelled"] == 6 and m["any guard"]["texts"] == 7
    assert m["regex"]["p50_ms"] is not None and m["regex"]["p95_ms"] >= m["regex"]["p50_ms"]
    texts = {t["id"]: t for t in report["texts"]}
    assert texts["c1"]["guards"]["competitors"]["action"] == "block"
    assert texts["o1"]["guards"]["regex"]["action"] == "flag"
    assert texts["u1"]["label"] is None
    assert texts["c2"]["label"] == ["competitors"]


def test_guard_and_set_options_pick_and_change_guards(files):
    _, config, data = files
    result = keel("guard", "test", config, data, "--json", "--guard", "competitors",
                  "--set", "competitors.words=[acme, globex]")
    report = orjson.loads(result.output)
    assert report["guards"] == ["competitors"]
    # "acme" alone now matches "acme corporation": the false negative is gone.
    assert report["metrics"]["competitors"]["fn"] == 0
    assert report["metrics"]["competitors"]["recall"] == 1.0


def test_a_keel_yaml_model_is_picked_with_model(files, tmp_path):
    _, _, data = files
    config = tmp_path / "keel.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "providers": {"fake": {"kind": "fake"}},
        "models": {"bot": {"provider": "fake", "guardrails": GUARDS},
                   "other": {"provider": "fake",
                             "guardrails": {"output": [{"length": {"max_output_tokens": 5}}]}}},
    }))
    result = keel("guard", "test", config, data)
    assert result.exit_code == 2
    assert "--model" in result.output and "bot, other" in result.output
    result = keel("guard", "test", config, data, "--model", "bot", "--json", "--stage", "input")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["guards"] == ["competitors", "regex"]


@pytest.mark.parametrize("line, problem", [
    ('{"text": "x", "label": 3}', "label: expected true, false, a guard name"),
    ('{"text": "x", "label": {"a": 1}}', "label: expected true, false, a guard name"),
    ('{"label": true}', "expected an object with a string `text`"),
    ("not json", "not valid JSON"),
])
def test_bad_lines_are_one_clean_error(files, line, problem):
    tmp_path, config, _ = files
    data = tmp_path / "bad.jsonl"
    data.write_text(line + "\n")
    result = keel("guard", "test", config, data)
    assert result.exit_code == 2
    assert problem in result.output and "Traceback" not in result.output


def test_unknown_guard_options_name_the_entry(files):
    tmp_path, _, data = files
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"guardrails": {"input": [{"regex": {"patern": "x"}}]}}))
    result = keel("guard", "test", config, data)
    assert result.exit_code == 2
    assert "guardrails.input[0]" in result.output and "patern" in result.output


def test_saved_runs_are_eval_runs_that_compare(files):
    tmp_path, config, data = files
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    first = keel("guard", "test", config, data, "--save", "--db", db, "--no-progress")
    assert first.exit_code == 0, first.output
    assert "saved as eval run" in first.output
    second = keel("guard", "test", config, data, "--save", "--db", db, "--json",
                  "--set", "competitors.words=[acme, globex]", "--variant", "loose")
    run_b = orjson.loads(second.output)["run_id"]
    runs = orjson.loads(keel("eval", "list", "--db", db, "--json").output)
    assert runs[0]["id"] == run_b
    run_a = runs[1]["id"]
    assert runs[1]["suite"] == "guards:cases" and runs[1]["status"] == "finished"
    assert runs[1]["summary"]["guards"]["guards"]["competitors"]["f1"] == pytest.approx(0.8)

    shown = orjson.loads(keel("eval", "show", run_a, "--db", db, "--json").output)
    cells = {r["sample_id"]: r for r in shown["results"]}
    assert set(cells) == {line["id"] for line in LINES}

    result = keel("eval", "compare", run_a, run_b, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    pair = orjson.loads(result.output)["pairs"][0]
    assert (pair["variant_a"], pair["variant_b"]) == ("guards", "loose")
    stats = pair["graders"]["competitors"]
    assert stats["n"] == 6  # labelled texts only
    assert stats["mean_a"] == pytest.approx(5 / 6) and stats["mean_b"] == pytest.approx(1.0)
    assert [e["sample_id"] for e in pair["improved"]] == ["c2"]
    assert pair["regressed"] == []
    assert pair["improved"][0]["input"] == "We beat acme corporation"


def test_confusion_edge_cases():
    assert confusion([]) == {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "precision": None,
                             "recall": None, "f1": None}
    nothing_found = confusion([(True, False), (False, False)])
    assert nothing_found["precision"] is None and nothing_found["recall"] == 0.0
    assert nothing_found["f1"] == 0.0


def test_guards_that_ask_the_model_get_the_models_route(tmp_path):
    """The rewrite guard asks the route's model (here a fake one with a fixed answer)."""
    answer = '{"compliant": false, "rewritten": "draw a cat in a hat"}'
    config = tmp_path / "keel.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "providers": {"fake": {"kind": "fake"}},
        "models": {"art": {"provider": "fake", "model": f"fixed:{answer}",
                           "guardrails": {"input": [
                               {"rewrite": {"policy": "no copyrighted characters"}}]}}},
    }))
    data = tmp_path / "art.jsonl"
    data.write_text('{"id": "r1", "text": "draw Mickey Mouse", "label": true}\n')
    result = keel("guard", "test", config, data, "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    outcome = report["texts"][0]["guards"]["rewrite"]
    assert outcome["error"] is None and outcome["action"] == "rewrite"
    assert outcome["text"] == "draw a cat in a hat"
    assert report["metrics"]["rewrite"]["tp"] == 1


def test_zero_and_one_labels_read_as_booleans(files):
    tmp_path, config, _ = files
    data = tmp_path / "ints.jsonl"
    data.write_text('{"id": "a", "text": "ask Globex", "label": 1}\n'
                    '{"id": "b", "text": "ask us", "label": 0}\n'
                    '{"id": "c", "text": "ask ORD-123456", "label": 0}\n')
    report = orjson.loads(keel("guard", "test", config, data, "--json",
                               "--guard", "competitors").output)
    m = report["metrics"]["competitors"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 0, 0, 2)
