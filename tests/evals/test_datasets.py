"""Loading datasets (JSONL, CSV, the OpenAI evals registry), versions, and the dataset store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.errors import InvalidRequest, NotFound
from keel.evals.base import Sample
from keel.evals.datasets import (
    dataset_version,
    dataset_versions,
    get_dataset,
    import_dataset,
    list_datasets,
    load_samples,
)
from tests.data_paths import OPENAI_EVALS
from tests.store.backends import db_url, store  # noqa: F401 - fixtures, one run per backend

REGISTRY = OPENAI_EVALS / "data"
REGISTRY_FILES = sorted(REGISTRY.glob("*/*.jsonl"))
assert REGISTRY_FILES, f"the OpenAI evals registry samples are missing from {REGISTRY}"


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


# -- the OpenAI evals registry ---------------------------------------------------------------


@pytest.mark.parametrize("path", REGISTRY_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_registry_samples_load_unchanged(path):
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    samples = load_samples(path)
    assert len(samples) == len(raw)
    for sample, record in zip(samples, raw):
        assert sample.input == record["input"]  # chat messages as they are, names included
        assert sample.ideal == record["ideal"]
        assert sample.metadata == {}
    assert len({s.id for s in samples}) == len(samples)


# -- JSONL -----------------------------------------------------------------------------------


def test_jsonl_fields(tmp_path):
    path = write(tmp_path / "d.jsonl", [
        {"input": "What is 2+2?", "ideal": "4"},
        "",  # blank lines are skipped
        {"id": 7, "input": [{"role": "user", "content": "hi"}], "ideal": ["hello", "hi"],
         "context": ["doc one"], "metadata": {"topic": "greeting"}, "difficulty": "easy"},
        {"input": "no ideal"},
        {"input": "numeric", "ideal": 42},
    ])
    first, second, third, fourth = load_samples(path)
    assert first.input == [{"role": "user", "content": "What is 2+2?"}]
    assert first.ideal == "4" and first.id.startswith("s") and len(first.id) == 13
    assert second.id == "7" and second.ideal == ["hello", "hi"] and second.context == ["doc one"]
    # a field Keel does not know is kept in metadata
    assert second.metadata == {"topic": "greeting", "difficulty": "easy"}
    assert third.ideal is None and third.ideals() == []
    assert fourth.ideal == "42"


def test_other_field_names(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"question": "Why?", "answer": "Because."}])
    [sample] = load_samples(path, input_field="question", ideal_field="answer")
    assert sample.input[0]["content"] == "Why?" and sample.ideal == "Because."


@pytest.mark.parametrize("line, message", [
    ("{not json", "d.jsonl:2: not valid JSON"),
    ('["a list"]', "d.jsonl:2: expected a JSON object, got a list"),
    ('{"ideal": "x"}', "d.jsonl:2: missing field 'input'"),
    ('{"input": 3}', "d.jsonl:2: input: expected a string or a non-empty list"),
    ('{"input": [{"content": "x"}]}', "d.jsonl:2: input[0]: expected a chat message"),
    ('{"input": "x", "ideal": [["nested"]]}', "d.jsonl:2: ideal: expected a string or a list"),
    ('{"input": "x", "context": 5}', "d.jsonl:2: context: expected a string or a list"),
    ('{"input": "x", "metadata": "m"}', "d.jsonl:2: metadata: expected an object"),
    ('{"input": "x", "id": [1]}', "d.jsonl:2: id: expected a string or an integer"),
])
def test_jsonl_errors_name_file_line_and_field(tmp_path, line, message):
    path = write(tmp_path / "d.jsonl", [{"input": "fine"}, line])
    with pytest.raises(InvalidRequest) as caught:
        load_samples(path)
    assert message in caught.value.message
    assert str(tmp_path) in caught.value.message


def test_file_errors(tmp_path):
    with pytest.raises(InvalidRequest, match="no such file"):
        load_samples(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidRequest, match="expected a .jsonl or .csv file"):
        load_samples(write(tmp_path / "d.txt", ["x"]))
    with pytest.raises(InvalidRequest, match="no samples"):
        load_samples(write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(InvalidRequest, match="'a' appears more than once"):
        load_samples(write(tmp_path / "dup.jsonl", [{"id": "a", "input": "x"},
                                                    {"id": "a", "input": "y"}]))


# -- CSV -------------------------------------------------------------------------------------


def test_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "id,input,ideal,context,metadata,team\n"
        'q1,"What is the capital\nof France?",Paris,,"{""level"": 1}",geo\n'
        'q2,"[{""role"": ""system"", ""content"": ""Be brief.""}, '
        '{""role"": ""user"", ""content"": ""2+2?""}]","[""4"", ""four""]",doc,,\n'
    )
    first, second = load_samples(path)
    assert first.id == "q1"
    assert first.input == [{"role": "user", "content": "What is the capital\nof France?"}]
    assert first.ideal == "Paris" and first.context is None
    assert first.metadata == {"level": 1, "team": "geo"}
    assert second.input[0] == {"role": "system", "content": "Be brief."}
    assert second.ideal == ["4", "four"] and second.context == "doc"


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('input,metadata\nok,\nbad,"{nope"\n')
    with pytest.raises(InvalidRequest, match=r"d.csv:3: metadata: not valid JSON"):
        load_samples(path)
    path.write_text("input\nok,extra\n")
    with pytest.raises(InvalidRequest, match=r"d.csv:2: more cells"):
        load_samples(path)


# -- ids and versions ------------------------------------------------------------------------


def test_content_ids_survive_edits_elsewhere(tmp_path):
    before = load_samples(write(tmp_path / "a.jsonl", [{"input": "one"}, {"input": "two"}]))
    after = load_samples(write(tmp_path / "b.jsonl", [{"input": "zero"}, {"input": "one"},
                                                      {"input": "two"}]))
    assert [s.id for s in before] == [s.id for s in after[1:]]
    repeated = load_samples(write(tmp_path / "c.jsonl", [{"input": "one"}, {"input": "one"}]))
    assert repeated[1].id == repeated[0].id + "-2"


def test_version_is_a_stable_order_sensitive_content_hash():
    a = Sample(id="a", input=[{"role": "user", "content": "x"}], ideal="1")
    b = Sample(id="b", input=[{"role": "user", "content": "y"}], ideal="2")
    version = dataset_version([a, b])
    assert len(version) == 16
    assert version == dataset_version([Sample(**a.to_dict()), Sample(**b.to_dict())])
    assert dataset_version([b, a]) != version
    assert dataset_version([a, Sample(**{**b.to_dict(), "ideal": "3"})]) != version
    assert dataset_version([a, Sample(**{**b.to_dict(), "metadata": {"k": 1}})]) != version


# -- the store -------------------------------------------------------------------------------


def samples(*texts: str) -> list[Sample]:
    return [Sample(id="", input=[{"role": "user", "content": t}], ideal=t.upper(),
                   metadata={"n": i}) for i, t in enumerate(texts)]


def test_import_is_idempotent_and_versions_by_content(store):  # noqa: F811
    name, v1, created = import_dataset(store, "support", samples("a", "b"), source="a.jsonl")
    assert (name, created) == ("support", True)
    assert import_dataset(store, "support", samples("a", "b"), source="again") == \
        ("support", v1, False)
    _, v2, created = import_dataset(store, "support", samples("a", "b", "c"), source="b.jsonl")
    assert created and v2 != v1

    meta, latest = get_dataset(store, "support")
    assert meta["version"] == v2 and meta["sample_count"] == 3 and meta["source"] == "b.jsonl"
    assert [s.input[0]["content"] for s in latest] == ["a", "b", "c"]
    assert latest[2].metadata == {"n": 2} and latest[2].ideal == "C"
    assert dataset_version(latest) == v2  # what comes back is exactly what was hashed

    meta, older = get_dataset(store, "support", v1[:6])  # a prefix is enough
    assert meta["version"] == v1 and len(older) == 2
    assert [v["version"] for v in dataset_versions(store, "support")] == [v2, v1]

    import_dataset(store, "other", samples("z"))
    listed = {row["name"]: row for row in list_datasets(store)}
    assert listed["support"]["version"] == v2 and listed["support"]["versions"] == 2
    assert listed["other"]["sample_count"] == 1


def test_unknown_datasets_and_versions(store):  # noqa: F811
    with pytest.raises(NotFound) as caught:
        get_dataset(store, "nope")
    assert caught.value.code == "dataset_not_found"
    import_dataset(store, "d", samples("a"))
    with pytest.raises(NotFound, match="has no version"):
        get_dataset(store, "d", "ffffffff")
    with pytest.raises(NotFound):
        dataset_versions(store, "nope")
    with pytest.raises(InvalidRequest, match="no samples"):
        import_dataset(store, "d", [])


def test_registry_dataset_round_trips_through_the_store(store):  # noqa: F811
    path = REGISTRY / "test_fuzzy_match" / "samples.jsonl"
    loaded = load_samples(path)
    _, version, _ = import_dataset(store, "fuzzy", loaded, source=str(path))
    _, stored = get_dataset(store, "fuzzy", version)
    assert [s.to_dict() for s in stored] == [s.to_dict() for s in loaded]
    assert version == dataset_version(loaded)
