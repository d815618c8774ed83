"""`keel ingest`, `keel search` and `keel collections` through click's CliRunner."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from keel.cli.knowledge import collections, ingest, parse_filters, search
from keel.cli.main import KeelGroup
from keel.errors import InvalidRequest


@click.group(cls=KeelGroup)
def cli() -> None:
    pass


cli.add_command(ingest)
cli.add_command(search)
cli.add_command(collections)


@pytest.fixture
def setup(tmp_path, db_url):
    config = tmp_path / "keel.yaml"
    config.write_text(f"store:\n  url: '{db_url}'\nembedders:\n  minilm:\n    kind: fake\n"
                      "    dim: 128\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.md").write_text("# Account\n\n## Delete\n\nOpen Settings, choose Delete.\n\n"
                                 "## Password\n\nUse Security to change the password.\n")
    (docs / "extra.jsonl").write_text('{"id": "r", "body": "Refunds take five days.", '
                                      '"lang": "en"}\n')
    return CliRunner(), str(config), docs


def test_ingest_search_collections(setup):
    runner, config, docs = setup
    result = runner.invoke(cli, ["ingest", str(docs), "-c", "help", "--config", config,
                                 "--text-field", "body"])
    assert result.exit_code == 0, result.output
    assert "added" in result.output and "chunks" in result.output

    result = runner.invoke(cli, ["ingest", str(docs), "-c", "help", "--config", config,
                                 "--text-field", "body", "--json"])
    assert json.loads(result.output) == {"added": 0, "updated": 0, "unchanged": 2,
                                         "removed": 0, "chunks": 0}

    result = runner.invoke(cli, ["search", "delete account", "-c", "help", "--config", config])
    assert result.exit_code == 0, result.output
    assert "Account > Delete" in result.output and "faq.md" in result.output

    result = runner.invoke(cli, ["search", "refunds", "-c", "help", "--config", config,
                                 "--filter", "lang=en", "--json", "-k", "3"])
    hits = json.loads(result.output)
    assert [h["document_id"] for h in hits] == ["r"]

    result = runner.invoke(cli, ["search", "[bold]what's C++?", "-c", "help", "--config",
                                 config, "--mode", "fulltext"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(cli, ["collections", "--config", config, "--json"])
    (row,) = json.loads(result.output)
    assert (row["name"], row["documents"], row["chunks"], row["dim"]) == ("help", 2, 3, 128)
    result = runner.invoke(cli, ["collections", "--config", config])
    assert "help" in result.output and row["version"] in result.output


def test_unknown_collection_is_one_clean_line(setup):
    runner, config, _ = setup
    result = runner.invoke(cli, ["search", "x", "-c", "nope", "--config", config])
    assert result.exit_code == 2
    assert "no knowledge collection named 'nope'" in result.output
    assert "Traceback" not in result.output


def test_db_option_overrides_the_config(setup, tmp_path):
    runner, config, docs = setup
    other = f"sqlite:///{tmp_path / 'other.db'}"
    runner.invoke(cli, ["ingest", str(docs / "faq.md"), "-c", "x", "--config", config,
                        "--db", other])
    result = runner.invoke(cli, ["collections", "--db", other, "--config", config, "--json"])
    assert [r["name"] for r in json.loads(result.output)] == ["x"]


def test_parse_filters():
    assert parse_filters(("lang=en", "year=2024", "public=true", "v=1.5", "s=a=b")) == {
        "lang": "en", "year": 2024, "public": True, "v": 1.5, "s": "a=b"}
    with pytest.raises(InvalidRequest):
        parse_filters(("novalue",))
