"""Each file format: the text, the structure (heading paths, pages) and the metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.errors import InvalidRequest
from keel.grounding.knowledge.parsers import parse_file
from tests.grounding.knowledge.pdf import minimal_pdf


def parse(name: str, data: str | bytes, **kw):
    raw = data.encode() if isinstance(data, str) else data
    return parse_file(Path(name), raw, f"/docs/{name}", **kw)


def test_markdown_headings_become_paths_and_code_fences_are_not_headings():
    (doc,) = parse("faq.md", """---
title: Help centre
lang: en
---
Intro line.

# Account

## Delete your account

Open Settings.

```
# not a heading
```

## Password

New one.

# Billing

Refunds.
""")
    assert doc.title == "Help centre"
    assert doc.metadata == {"lang": "en"}
    assert [s.location for s in doc.sections] == [
        "", "Account > Delete your account", "Account > Password", "Billing",
    ]
    assert "# not a heading" in doc.sections[1].text


def test_markdown_title_falls_back_to_the_first_h1():
    (doc,) = parse("a.md", "# Guide\n\ntext")
    assert doc.title == "Guide"


def test_plain_text_is_one_flat_section():
    (doc,) = parse("notes.txt", "  para one\n\npara two  \n")
    assert [(s.location, s.text) for s in doc.sections] == [("", "para one\n\npara two")]


def test_html_drops_scripts_and_styles_and_keeps_heading_structure():
    (doc,) = parse("page.html", """<html><head><title>Help</title>
<style>body { color: red }</style><script>var secret = 1;</script></head>
<body><nav>Home</nav><h1>Account</h1><p>Manage it.</p>
<h2>Delete <em>your</em> account</h2><p>Open   Settings,</p><p>then Delete.</p>
<script>track()</script><h1>Billing</h1><ul><li>Refunds</li><li>Invoices</li></ul>
</body></html>""")
    assert doc.title == "Help"
    text = " ".join(s.text for s in doc.sections)
    assert "secret" not in text and "track" not in text and "color" not in text
    by_location = {s.location: s.text for s in doc.sections}
    assert by_location["Account"] == "Manage it."
    assert by_location["Account > Delete your account"] == "Open Settings,\n\nthen Delete."
    assert by_location["Billing"] == "Refunds\n\nInvoices"


def test_pdf_pages_become_locations():
    (doc,) = parse("rates.pdf", minimal_pdf(["Mortgage rates rose today.", "Fixed is 6.1%."]))
    assert [s.location for s in doc.sections] == ["page 1", "page 2"]
    assert "Mortgage rates rose today." in doc.sections[0].text
    assert not doc.sections[0].prefix_location


def test_jsonl_one_document_per_line_with_metadata():
    docs = parse("faq.jsonl", '{"id": "q1", "text": "Delete via Settings.", "lang": "en", '
                              '"title": "Delete"}\n\n{"body": "no id", "text": "Second."}\n')
    assert [d.id for d in docs] == ["q1", "/docs/faq.jsonl#L3"]
    assert docs[0].metadata == {"lang": "en"} and docs[0].title == "Delete"
    assert docs[1].metadata == {"body": "no id"}
    assert docs[1].sections[0].text == "Second."


def test_jsonl_text_field_option():
    (doc,) = parse("a.jsonl", '{"passage": "Hello.", "text": 3}', text_field="passage")
    assert doc.sections[0].text == "Hello." and doc.metadata == {"text": 3}


def test_jsonl_without_the_text_field_names_the_line_and_option():
    with pytest.raises(InvalidRequest, match=r"a.jsonl:1: .*'text'.*--text-field"):
        parse("a.jsonl", '{"passage": "x"}')


def test_unsupported_suffix():
    with pytest.raises(InvalidRequest, match="unsupported file type"):
        parse("a.docx", b"")


def test_a_nul_in_a_file_becomes_a_replacement_character(tmp_path):
    # PostgreSQL's text cannot hold NUL: a file with one must still ingest, on every backend.
    path = tmp_path / "binaryish.txt"
    data = b"before\x00after"
    (doc,) = parse_file(path, data, "binaryish.txt")
    assert "\x00" not in doc.sections[0].text and "before\ufffdafter" in doc.sections[0].text
    (row,) = parse_file(tmp_path / "r.jsonl", b'{"id": "a\\u0000b", "text": "x\\u0000y"}\n', "r")
    assert row.id == "a\ufffdb" and row.sections[0].text == "x\ufffdy"
