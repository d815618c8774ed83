"""`keel distill dataset`: filters, dedupe, PII scrub, splits, versions and lineage, on traces
recorded by a real in-process Keel on the fake provider (each test on each store backend)."""

from __future__ import annotations

import asyncio
import json
import random
import time

import numpy as np
import orjson
import pytest
import yaml
from click.testing import CliRunner

from keel.cli.distill import distill_group
from keel.cli.main import KeelGroup
from keel.config import KeelConfig
from keel.distill import dataset as ds
from keel.distill import from_traces, lineage
from keel.distill.export import example_line, export_split
from keel.distill.validate import validate_file
from keel.errors import InvalidRequest
from keel.evals.dataset_store import get_dataset
from keel.gateway import Gateway
from keel.ops.feedback import add_feedback
from keel.pipeline.trace import Trace
from keel.store import open_store
from tests.store.backends import db_url  # noqa: F401  (fixture)

DAY = 86400.0


def config_dict(tmp_path, url: str) -> dict:
    return {
        "state_dir": str(tmp_path / "state"),
        "store": {"url": url},
        "tracing": {"flush_interval_s": 0.05},
        "providers": {"fake": {"kind": "fake"}},
        "models": {
            "teacher": {"provider": "fake", "model": "echo"},
            "other": {"provider": "fake", "model": "fixed:ok"},
            "guarded": {"provider": "fake", "model": "echo",
                        "guardrails": {"input": [{"pii": {"action": "redact"}}]}},
            "tools": {"provider": "fake", "model": "tool-call"},
            "short": {"provider": "fake", "model": "echo", "defaults": {"max_tokens": 4}},
        },
        "pipeline": [],
    }


@pytest.fixture
def keel(tmp_path, db_url):  # noqa: F811
    """(config, store) of a Keel on the fake provider whose traces land in the test's store."""
    config = KeelConfig.model_validate(config_dict(tmp_path, db_url))
    store = open_store(db_url)
    yield config, store
    store.close()


def ask(text: str, model: str = "teacher", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def record(config: KeelConfig, bodies: list[dict], started_at: float | None = None) -> list[str]:
    """Send each body through Gateway.complete; the trace ids, in order (flushed on close)."""
    async def go():
        ids = []
        async with Gateway(config) as gateway:
            for body in bodies:
                trace = Trace(started_at=started_at) if started_at else Trace()
                await gateway.complete(body, trace=trace)
                ids.append(trace.id)
        return ids
    return asyncio.run(go())


def chosen(store, **filters) -> list[str]:
    return [e.origin for e in ds.examples_from_traces(store, ds.TraceFilters(**filters))]


def no_embed(texts):  # near-duplicates off by construction: orthogonal vectors
    return np.eye(len(texts), dtype=np.float32)


# -- filters (one test each) -----------------------------------------------------------------


def test_filter_by_route_or_upstream_model(keel):
    config, store = keel
    mine = record(config, [ask("a"), ask("b")])
    record(config, [ask("c", model="other")])
    assert chosen(store, model="teacher") == mine
    assert chosen(store, model="echo") == mine  # the upstream model that answered
    assert len(chosen(store)) == 3


def test_filter_by_time_range(keel):
    config, store = keel
    now = time.time()
    record(config, [ask("old")], started_at=now - 3 * DAY)
    middle = record(config, [ask("middle")], started_at=now - DAY)
    record(config, [ask("new")])
    assert chosen(store, since=now - 2 * DAY, until=now - DAY / 2) == middle
    assert len(chosen(store, since=now - 2 * DAY)) == 2
    assert len(chosen(store, until=now - 2 * DAY)) == 1


def test_filter_by_feedback_up(keel):
    config, store = keel
    up, down, silent = record(config, [ask("a"), ask("b"), ask("c")])
    add_feedback(store, up, 1)
    add_feedback(store, down, 1)
    add_feedback(store, down, -1)  # the latest word counts
    assert chosen(store, feedback="up") == [up]
    example = ds.examples_from_traces(store, ds.TraceFilters(feedback="up"))[0]
    assert example.meta["feedback_score"] == 1 and silent not in chosen(store, feedback="any")


def test_filter_by_feedback_score(keel):
    config, store = keel
    great, fine, _ = record(config, [ask("a"), ask("b"), ask("c")])
    add_feedback(store, great, 5)
    add_feedback(store, fine, 3)
    assert chosen(store, min_score=4) == [great]
    assert chosen(store, min_score=3) == [great, fine]


def test_filter_by_eval_grade(tmp_path, keel):
    """Traces an eval run produced and graded: echo passes `includes` on even samples only."""
    from keel.evals.runner import run_suite
    from keel.evals.suite import load_suite
    from tests.evals.support import write_suite

    config, store = keel
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, config.database_url())))
    suite = load_suite(write_suite(tmp_path, path, variants={"base": {"model": "teacher"}}))
    asyncio.run(run_suite(suite, config, store, progress=False, config_path=str(path)))
    ungraded = record(config, [ask("question 0 about answer0")])
    kept = ds.examples_from_traces(store, ds.TraceFilters(min_grade=1.0))
    assert sorted(last_user(e) for e in kept) == [
        "question 0 about answer0", "question 2 about answer2", "question 4 about answer4"]
    assert all(e.meta["grade"] == 1.0 for e in kept) and ungraded[0] not in chosen(
        store, min_grade=0.0)
    assert len(chosen(store, min_grade=0.0)) == 6
    assert chosen(store, min_grade=0.5, grader="nonexistent") == []


def test_filter_by_eval_run(tmp_path, keel):
    """--eval-run keeps only that run's traces, graded by that run: the same samples answered
    in a second run (and graded there) and traces outside any run are left out; a run id that
    names no run is refused, not read as an empty set."""
    from keel.errors import NotFound
    from keel.evals.runner import run_suite
    from keel.evals.suite import load_suite
    from tests.evals.support import write_suite

    config, store = keel
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, config.database_url())))
    suite = load_suite(write_suite(tmp_path, path, variants={"base": {"model": "teacher"}}))
    first = asyncio.run(run_suite(suite, config, store, progress=False, config_path=str(path)))
    second = asyncio.run(run_suite(suite, config, store, progress=False, config_path=str(path)))
    record(config, [ask("question 0 about answer0")])
    first_id, second_id = first.run_id, second.run_id
    mine = ds.examples_from_traces(store, ds.TraceFilters(eval_run=first_id, min_grade=1.0))
    theirs = ds.examples_from_traces(store, ds.TraceFilters(eval_run=second_id[:20],
                                                            min_grade=1.0))
    assert sorted(last_user(e) for e in mine) == sorted(last_user(e) for e in theirs) == [
        "question 0 about answer0", "question 2 about answer2", "question 4 about answer4"]
    assert not {e.origin for e in mine} & {e.origin for e in theirs}
    assert len(ds.examples_from_traces(store, ds.TraceFilters(eval_run=first_id))) == 6
    assert len(chosen(store, min_grade=0.0)) == 12
    with pytest.raises(NotFound):
        ds.examples_from_traces(store, ds.TraceFilters(eval_run="ffffffffffff"))

    url = config.database_url()
    result = run_cli("dataset", "graded", "--from-traces", "--eval-run", first_id[:16],
                     "--min-grade", "1", "--grader", "includes", "--near-dup", "off",
                     "--split", "100/0/0", "--db", url, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["stats"]["examples"] == 3
    source = lineage.get_set(store, report["set_id"])["source"]
    assert source["filters"] == {"eval_run": first_id, "min_grade": 1.0, "cut_off": "drop",
                                 "grader": "includes"}
    assert set(source["trace_ids"]) == {e.origin for e in mine}
    missing = run_cli("dataset", "graded", "--from-traces", "--eval-run", "ffffffffffff",
                      "--db", url)
    assert missing.exit_code != 0 and "no eval run 'ffffffffffff'" in missing.output


def test_best_per_sample_of_an_eval_run(tmp_path, keel):
    """Best of N: two variants answer each sample; per sample the best-graded answer is kept
    (echo passes `includes` on even samples), and of equal grades the shorter ("ok")."""
    from keel.evals.runner import run_suite
    from keel.evals.suite import load_suite
    from tests.evals.support import write_suite

    config, store = keel
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, config.database_url())))
    suite = load_suite(write_suite(tmp_path, path, variants={
        "echo": {"model": "teacher"}, "fixed": {"model": "other"}}))
    run = asyncio.run(run_suite(suite, config, store, progress=False, config_path=str(path)))
    kept = ds.examples_from_traces(store, ds.TraceFilters(eval_run=run.run_id,
                                                          best_per_sample=True))
    answers = {last_user(e): e.answer["content"] for e in kept}
    assert len(kept) == 6
    for i in range(6):
        question = next(q for q in answers if q.split()[1] == str(i))
        assert (answers[question] == "ok") is (i % 2 == 1), (i, answers[question])
    assert all(e.meta["grade"] == (1.0 if answers[last_user(e)] != "ok" else 0.0)
               for e in kept)
    right = ds.examples_from_traces(store, ds.TraceFilters(
        eval_run=run.run_id, best_per_sample=True, min_grade=1.0))
    assert len(right) == 3 and all(e.answer["content"] != "ok" for e in right)
    with pytest.raises(InvalidRequest, match="needs eval_run"):
        ds.examples_from_traces(store, ds.TraceFilters(best_per_sample=True))

    result = run_cli("dataset", "best", "--from-traces", "--eval-run", run.run_id,
                     "--best-per-sample", "--near-dup", "off", "--split", "100/0/0",
                     "--db", config.database_url(), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["stats"]["examples"] == 6
    assert lineage.get_set(store, report["set_id"])["source"]["filters"] == {
        "eval_run": run.run_id, "best_per_sample": True, "cut_off": "drop"}


def test_answers_cut_off_by_max_tokens_are_dropped_trimmed_or_kept(keel):
    """The fake echoes the question, cut to max_tokens words with finish_reason "length"."""
    config, store = keel
    whole, cut, no_sentence = record(config, [
        ask("Short and complete."),
        ask("Open Settings. Then click the big button", max_tokens=5),
        ask("one two three four five six", max_tokens=3)])
    assert chosen(store) == chosen(store, cut_off="drop") == [whole]
    kept = {e.origin: e for e in ds.examples_from_traces(store, ds.TraceFilters(cut_off="keep"))}
    assert kept[cut].answer["content"] == "Open Settings. Then click the"
    assert kept[no_sentence].meta["cut_off"] == "keep" and "cut_off" not in kept[whole].meta
    trimmed = {e.origin: e for e in ds.examples_from_traces(store, ds.TraceFilters(
        cut_off="trim"))}
    assert set(trimmed) == {whole, cut}  # nothing complete is left of "one two three"
    assert trimmed[cut].answer["content"] == "Open Settings."
    assert trimmed[cut].meta["cut_off"] == "trim"
    assert trimmed[whole].answer["content"] == "Short and complete."
    with pytest.raises(InvalidRequest, match="cut_off: expected one of drop, trim, keep"):
        chosen(store, cut_off="sometimes")


@pytest.mark.parametrize(("text", "expected"), [
    ("It costs 10. Then you", "It costs 10."),
    ("Version 2.5 is out. Next", "Version 2.5 is out."),
    ('He said "stop." Then', 'He said "stop."'),
    ("Steps:\n1. Open **Settings > Billing**.\n2. Click Change\n3.",
     "Steps:\n1. Open **Settings > Billing**."),
    ("1. Open it. 2.", "1. Open it."),
    ("Data is sent over TLS. Use TLS 1.", "Data is sent over TLS."),  # 1.2, cut at the dot
    ("no end at all", None),
    ("3.", None),
])
def test_trim_to_the_last_complete_sentence(text, expected):
    from keel.distill.cut_off import trim_to_sentence

    assert trim_to_sentence(text) == expected


def test_finish_reason_of_a_completion_or_a_stream_summary():
    from keel.distill.cut_off import apply_cut_off, finish_reason

    assert finish_reason({"choices": [{"finish_reason": "length"}]}) == "length"
    assert finish_reason({"content": "hi", "finish_reason": "stop"}) == "stop"  # keel.api.sse
    assert finish_reason("not a response") is None
    call = {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                 "function": {"name": "f", "arguments": "{"}}]}
    assert apply_cut_off(call, "length", "trim") is None  # half a tool call is not trimmed
    assert apply_cut_off(call, "length", "keep") == call


def test_best_per_sample_prefers_a_complete_answer_to_a_trimmed_one():
    def example(text, grade, cut=False):
        meta = {"grade": grade, **({"cut_off": "trim"} if cut else {})}
        return ds.Example(prompt=[{"role": "user", "content": "q"}], origin=text,
                          answer={"role": "assistant", "content": text}, meta=meta)

    examples = [example("short, trimmed.", 1.0, cut=True), example("a longer complete one.", 1.0),
                example("best.", 0.5)]
    kept = from_traces._best_per_sample(examples, {e.origin: "s1" for e in examples})
    assert [e.origin for e in kept] == ["a longer complete one."]


def test_filter_excludes_guarded_traces(keel):
    config, store = keel
    clean, masked = record(config, [ask("hello", model="guarded"),
                                    ask("mail me at ann@example.com", model="guarded")])
    assert chosen(store, exclude_guarded=True) == [clean]
    assert chosen(store) == [clean, masked]
    spans = [{"name": "guard.pii", "attrs": {"action": "pass"}},
             {"name": "guard.topics", "attrs": {"action": "flag"}}, {"name": "provider"}]
    assert from_traces.guard_actions(spans) == ["guard.topics=flag"]


# -- dedupe, PII, splits ---------------------------------------------------------------------


def test_exact_duplicates_are_dropped(keel):
    config, store = keel
    record(config, [ask("same"), ask("same"), ask("other")])
    result = ds.build_set(store, "faq", ds.examples_from_traces(store, ds.TraceFilters()),
                          source={"kind": "test"}, near_dup=None, sizes=(100, 0, 0))
    assert result.stats["found"] == 3 and result.stats["duplicates"] == 1
    assert result.splits["train"]["count"] == 2


def test_near_duplicates_by_embedding(keel):
    config, store = keel
    record(config, [ask("How do I reset my password?"), ask("How can I reset my password?"),
                    ask("How do I change my password?"), ask("What are your opening hours?")])
    examples = ds.examples_from_traces(store, ds.TraceFilters())
    kept, dropped = ds.dedupe_near(list(examples), 0.95)  # the embedded MiniLM
    assert dropped == 1
    assert [last_user(e) for e in kept] == ["How do I reset my password?",
                                             "How do I change my password?",
                                             "What are your opening hours?"]
    looser, dropped = ds.dedupe_near(list(examples), 0.85)
    assert dropped == 2 and len(looser) == 2


def test_pii_is_scrubbed_in_prompt_and_answer(keel):
    config, store = keel
    text = "I am ann@example.com, call +1 415-555-2671 or ann@example.com"
    record(config, [ask(text)])  # echo: the answer repeats it
    redacted = ds.build_set(store, "pii", ds.examples_from_traces(store, ds.TraceFilters()),
                            source={}, near_dup=None, sizes=(100, 0, 0))
    example = redacted.examples["train"][0]
    assert example.prompt[0]["content"] == "I am [EMAIL], call [PHONE] or [EMAIL]"
    assert example.answer["content"] == "I am [EMAIL], call [PHONE] or [EMAIL]"
    assert redacted.stats["pii_scrubbed"] == {"EMAIL": 4, "PHONE": 2}
    _, samples = get_dataset(store, "pii-train")
    assert "ann@example.com" not in orjson.dumps([s.to_dict() for s in samples]).decode()

    pseudo = ds.examples_from_traces(store, ds.TraceFilters())
    counts = ds.scrub(pseudo, "pseudonymize")
    assert pseudo[0].answer["content"] == "I am <EMAIL_1>, call <PHONE_1> or <EMAIL_1>"
    assert counts == {"EMAIL": 4, "PHONE": 2}
    untouched = ds.examples_from_traces(store, ds.TraceFilters())
    assert ds.scrub(untouched, "off") == {} and "ann@example.com" in last_user(untouched[0])


def test_pii_scrub_reaches_tool_call_arguments_and_text_parts():
    example = ds.Example(
        prompt=[{"role": "user", "content": [{"type": "text", "text": "to bob@example.org"}]}],
        answer={"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "send", "arguments": '{"to": "bob@example.org"}'}}]})
    assert ds.scrub([example], "redact") == {"EMAIL": 2}
    assert example.prompt[0]["content"][0]["text"] == "to [EMAIL]"
    assert example.answer["tool_calls"][0]["function"]["arguments"] == '{"to": "[EMAIL]"}'


def test_splits_are_deterministic_and_stable():
    examples = [ds.Example(prompt=[{"role": "user", "content": f"q{i}"}],
                           answer={"role": "assistant", "content": f"a{i}"}) for i in range(200)]
    first = ds.split(examples)
    shuffled = examples[:]
    random.Random(7).shuffle(shuffled)
    assert ds.split(shuffled) == first
    sizes = {k: len(v) for k, v in first.items()}
    assert sum(sizes.values()) == 200 and 140 <= sizes["train"] <= 180
    assert 8 <= sizes["validation"] <= 35 and 8 <= sizes["test"] <= 35
    # More examples later: none of the first ones changes split.
    more = ds.split(examples + [ds.Example(prompt=[{"role": "user", "content": f"n{i}"}],
                                           answer={"role": "assistant", "content": "x"})
                                for i in range(50)])
    for name, part in first.items():
        assert {e.key() for e in part} <= {e.key() for e in more[name]}
    assert ds.split(examples, (50, 0, 50))["validation"] == []
    with pytest.raises(Exception, match="adding up to 100"):
        ds.parse_split("80/10/20")


# -- versions and lineage --------------------------------------------------------------------


def test_same_input_same_versions_new_traces_new_version(keel):
    config, store = keel
    record(config, [ask(f"question number {i}") for i in range(12)])

    def build():
        examples = ds.examples_from_traces(store, ds.TraceFilters())
        return ds.build_set(store, "faq", examples, near_dup=None,
                            source={"trace_ids": [e.origin for e in examples]})

    first = build()
    again = build()
    assert first.created and not again.created and again.set_id == first.set_id
    assert again.splits == first.splits
    record(config, [ask("a brand new question")])
    third = build()
    assert third.created and third.set_id != first.set_id
    changed = [p for p in ds.SPLITS if third.splits[p]["version"] != first.splits[p]["version"]]
    assert len(changed) == 1 and third.splits[changed[0]]["count"] == \
        first.splits[changed[0]]["count"] + 1
    assert len(lineage.list_sets(store)) == 2


def test_lineage_records_source_splits_and_stats(keel):
    config, store = keel
    ids = record(config, [ask(f"q {i}") for i in range(10)] + [ask("q 0")])
    examples = ds.examples_from_traces(store, ds.TraceFilters(model="teacher"))
    source = {"kind": "traces", "filters": {"model": "teacher"},
              "trace_ids": [e.origin for e in examples]}
    result = ds.build_set(store, "lin", examples, source=source, near_dup=None)
    row = lineage.get_set(store, result.set_id)
    assert row["name"] == "lin" and row["source"]["trace_ids"] == ids
    assert row["stats"]["found"] == 11 and row["stats"]["duplicates"] == 1
    assert row["stats"]["examples"] == 10
    total = 0
    for part, entry in row["splits"].items():
        assert entry["dataset"] == f"lin-{part}"
        if entry["count"]:
            meta, samples = get_dataset(store, entry["dataset"], entry["version"])
            assert meta["sample_count"] == entry["count"] == len(samples)
            assert all(s.metadata["trace_id"] in ids for s in samples)
            total += len(samples)
    assert total == 10


# -- teacher, export, CLI --------------------------------------------------------------------


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}


def test_teacher_answers_become_targets_with_tools_kept(keel, tmp_path):
    config, store = keel
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"weather in city {i}?", "tools": [WEATHER]})
                               + "\n" for i in range(3)))
    samples, described = ds.load_prompts(store, str(prompts))

    async def go():
        async with Gateway(config) as gateway:
            return await ds.examples_from_teacher(gateway, "tools", samples)

    examples, failures = asyncio.run(go())
    assert failures == [] and len(examples) == 3 and described["file"] == str(prompts)
    line = example_line(examples[0])
    assert line["tools"] == [WEATHER]
    call = line["messages"][-1]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"]
    result = ds.build_set(store, "weather", examples, source={"teacher": "tools"},
                          near_dup=None, sizes=(100, 0, 0))
    out = tmp_path / "train.jsonl"
    assert export_split(store, "weather-train", result.splits["train"]["version"], out) == 3
    assert json.loads(out.read_text().splitlines()[0]) == example_line(
        result.examples["train"][0])
    assert validate_file(out, min_examples=3).ok


def run_cli(*args: str):
    cli = KeelGroup()
    cli.add_command(distill_group)
    return CliRunner().invoke(cli, ["distill", *args], catch_exceptions=False)


def test_cli_from_traces_writes_and_validates_the_splits(keel, tmp_path, db_url):  # noqa: F811
    config, store = keel
    ids = record(config, [ask(f"how do I do task {i}, mail x{i}@example.com") for i in range(30)])
    add_feedback(store, ids[0], -1)
    out = tmp_path / "out"
    result = run_cli("dataset", "tasks", "--from-traces", "--model", "teacher", "--since", "1d",
                     "--near-dup", "off", "--out", str(out), "--db", db_url, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["created"] and report["stats"]["pii_scrubbed"] == {"EMAIL": 60}
    assert report["stats"]["examples"] == 30
    counts = {p: report["splits"][p]["count"] for p in ds.SPLITS}
    assert sum(counts.values()) == 30
    for part in ds.SPLITS:
        lines = (out / f"{part}.jsonl").read_text().splitlines()
        assert len(lines) == counts[part] == report["files"][part]["examples"]
    assert report["files"]["train"]["report"]["ok"]
    row = lineage.get_set(store, report["set_id"])
    assert row["source"]["filters"] == {"model": "teacher", "since": "1d", "cut_off": "drop"}
    assert sorted(row["source"]["trace_ids"]) == sorted(ids)

    up_only = run_cli("dataset", "tasks", "--from-traces", "--feedback", "up", "--db", db_url)
    assert up_only.exit_code == 2 and "no traces match the filters" in up_only.output
    listed = run_cli("list", "--db", db_url)
    assert "tasks" in listed.output and "30 traces" in listed.output
    valid = run_cli("validate", str(out / "train.jsonl"))
    assert valid.exit_code == 0 and valid.output.strip().endswith("valid")
    both = run_cli("dataset", "x", "--from-traces", "--teacher", "teacher", "--db", db_url)
    assert both.exit_code == 2 and "either --from-traces or --teacher" in both.output


def test_cli_teacher_over_a_stored_dataset(keel, tmp_path):
    config, store = keel
    from keel.evals.dataset_store import import_dataset
    from keel.evals.datasets import sample_from_dict

    _, version, _ = import_dataset(store, "questions", [
        sample_from_dict({"input": f"what is item {i}?"}) for i in range(12)])
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, config.database_url())))
    result = run_cli("dataset", "items", "--teacher", "teacher", "--prompts",
                     f"questions@{version[:8]}", "--near-dup", "off", "--split", "100/0/0",
                     "--config", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["stats"]["prompts"] == 12 and report["stats"]["teacher_failures"] == 0
    row = lineage.get_set(store, report["set_id"])
    assert row["source"]["teacher"] == "teacher"
    assert row["source"]["prompts"] == {"dataset": "questions", "version": version}
    _, samples = get_dataset(store, "items-train")
    assert sorted(s.ideal for s in samples) == sorted(f"what is item {i}?" for i in range(12))
    unknown = run_cli("dataset", "x", "--teacher", "nope", "--prompts", "questions",
                      "--config", str(path))
    assert unknown.exit_code == 2 and "nope" in unknown.output


def test_teacher_answers_cut_off_by_max_tokens(keel, tmp_path):
    """Route `short` answers at most 4 words: cut-off answers are failures under drop, their
    last complete sentence under trim."""
    config, store = keel
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input": text}) + "\n" for text in (
        "Yes, it works.", "No. It does not work today", "one two three four five")))
    samples, _ = ds.load_prompts(store, str(prompts))

    async def go(mode):
        async with Gateway(config) as gateway:
            return await ds.examples_from_teacher(gateway, "short", samples, cut_off=mode)

    examples, failures = asyncio.run(go("drop"))
    assert [e.answer["content"] for e in examples] == ["Yes, it works."]
    assert len(failures) == 2 and "max_tokens cut the answer off" in failures[0]["error"]
    examples, failures = asyncio.run(go("trim"))
    assert [e.answer["content"] for e in examples] == ["Yes, it works.", "No."]
    assert examples[1].meta["cut_off"] == "trim" and len(failures) == 1
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, config.database_url())))
    result = run_cli("dataset", "short", "--teacher", "short", "--prompts", str(prompts),
                     "--cut-off", "keep", "--near-dup", "off", "--split", "100/0/0",
                     "--config", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["stats"]["examples"] == 3
    assert lineage.get_set(store, report["set_id"])["source"]["cut_off"] == "keep"


def last_user(example: ds.Example) -> str:
    return [m for m in example.prompt if m["role"] == "user"][-1]["content"]
