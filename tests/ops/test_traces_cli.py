"""`keel traces list` / `show` through the real `keel` command group."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from keel.cli.main import cli
from keel.ops.traces import TraceRecorder
from tests.ops.helpers import make_trace, tracing


@pytest.fixture
def recorded(store):
    traces = [make_trace(0, model="gpt-4o-mini"), make_trace(1, model="smollm2", status=502)]
    recorder = TraceRecorder(store, tracing())
    for trace in traces:
        recorder.submit(trace)
    recorder.close()
    return traces


def run(*args: str):
    return CliRunner().invoke(cli, ["traces", *args], catch_exceptions=False)


def test_list_prints_a_table(db_url, recorded):
    result = run("list", "--db", db_url)
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    for column in ("id", "time", "model", "provider → upstream", "status", "latency ms",
                   "ttft ms", "tokens in/out", "fingerprint"):
        assert column in header
    assert recorded[0].id in result.output and recorded[1].id in result.output
    assert "upstream → gpt-4o-mini-2024" in result.output and "10/5" in result.output
    assert "fp_test" in result.output


def test_list_json_and_filters(db_url, recorded):
    result = run("list", "--db", db_url, "--json", "--model", "smollm2")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["id"] for r in rows] == [recorded[1].id] and rows[0]["status"] == 502
    rows = json.loads(run("list", "--db", db_url, "--json", "--status", "ok").output)
    assert [r["id"] for r in rows] == [recorded[0].id]
    rows = json.loads(run("list", "--db", db_url, "--json", "--limit", "1", "--since", "1h").output)
    assert [r["id"] for r in rows] == [recorded[1].id]


def test_show_prints_summary_timeline_and_bodies(db_url, recorded):
    result = run("show", recorded[0].id[:-3], "--db", db_url)
    assert result.exit_code == 0, result.output
    out = result.output
    assert recorded[0].id in out and "upstream → gpt-4o-mini-2024" in out
    assert "\njson_mode " in out and "\n  provider " in out  # indented by depth
    assert '"hello 0"' in out and '"hi 0"' in out


def test_show_json(db_url, recorded):
    result = run("show", recorded[1].id, "--db", db_url, "--json")
    trace = json.loads(result.output)
    assert trace["status"] == 502 and trace["error"]["type"] == "upstream_error"
    assert [s["name"] for s in trace["spans"]] == ["json_mode", "provider"]


def test_unknown_id_is_a_clean_error(db_url, recorded):
    result = run("show", "ffffffffffff", "--db", db_url)
    assert result.exit_code == 2
    assert result.output.strip() == "error: no trace 'ffffffffffff'"


def test_bad_options_are_clean_errors(db_url, recorded):
    for args in (["--status", "teapot"], ["--since", "yesterday"]):
        result = run("list", "--db", db_url, *args)
        assert result.exit_code == 2 and result.output.startswith("error: ")
        assert "Traceback" not in result.output


def test_config_names_the_store(tmp_path):
    state = tmp_path / "state"
    (tmp_path / "keel.yaml").write_text(f"state_dir: {state}\npipeline: []\n")
    from keel.store import open_store

    store = open_store(f"sqlite:///{state / 'keel.db'}")
    recorder = TraceRecorder(store, tracing())
    trace = make_trace()
    recorder.submit(trace)
    recorder.close()
    store.close()
    result = run("list", "--config", str(tmp_path / "keel.yaml"), "--json")
    assert [r["id"] for r in json.loads(result.output)] == [trace.id]


def test_no_database_yet_is_a_clean_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("list")
    assert result.exit_code == 2 and "no database at .keel/keel.db" in result.output
    assert not (tmp_path / ".keel").exists()


def test_no_traces(db_url, store):
    result = run("list", "--db", db_url)
    assert result.exit_code == 0 and result.output.strip() == "no traces"
