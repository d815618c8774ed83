"""File formats → documents: Markdown, plain text, HTML, PDF and JSONL.

Each parser keeps the structure the chunker needs: Markdown and HTML headings become heading
paths ("Account > Delete your account"), PDF pages become "page N". A JSONL file holds one
document per line: a text field (default `text`), an optional `id`, `title` and `source`, and
every other field as metadata.
"""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

import orjson
import yaml

from keel.errors import InvalidRequest
from keel.grounding.knowledge.base import Document, Section

PATH_SEPARATOR = " > "

_ATX_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)


def parse_markdown(text: str, doc_id: str) -> Document:
    metadata, text = _front_matter(text)
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []  # (level, heading) of the headings we are under
    lines: list[str] = []
    in_fence = False
    title = metadata.pop("title", None)

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(PATH_SEPARATOR.join(h for _, h in stack), body))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _ATX_HEADING.match(line)
        if heading is None:
            lines.append(line)
            continue
        flush()
        level, name = len(heading.group(1)), heading.group(2).strip()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, name))
        if title is None and level == 1:
            title = name
    flush()
    return Document(id=doc_id, sections=sections, title=title, metadata=metadata)


def _front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}, text
    if not isinstance(data, dict):
        return {}, text
    # Metadata must survive JSON: dates and other YAML types become strings.
    return {str(k): v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
            for k, v in data.items()}, text[match.end():]


def parse_text(text: str, doc_id: str) -> Document:
    body = text.strip()
    return Document(id=doc_id, sections=[Section("", body)] if body else [])


class _HTMLSections(HTMLParser):
    """Collects visible text by heading; script, style and similar content is dropped."""

    _SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    _BLOCK = {"p", "div", "li", "ul", "ol", "br", "tr", "table", "section", "article", "pre",
              "blockquote", "dd", "dt", "main", "header", "footer", "nav", "aside", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.stack: list[tuple[int, str]] = []
        self.parts: list[str] = []
        self.heading: tuple[int, list[str]] | None = None
        self.skip_depth = 0
        self.title: str | None = None
        self.in_title = False
        self.first_h1: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.in_title = True
        if tag in self._SKIP:
            self.skip_depth += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading = (int(tag[1]), [])
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in self._SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading is not None:
            level, words = self.heading
            name = " ".join(" ".join(words).split())
            self.heading = None
            if not name:
                return
            while self.stack and self.stack[-1][0] >= level:
                self.stack.pop()
            self.stack.append((level, name))
            if level == 1 and self.first_h1 is None:
                self.first_h1 = name
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.in_title:
            self.title = (self.title or "") + data.strip()
        if self.skip_depth:
            return
        if self.heading is not None:
            self.heading[1].append(data)
        else:
            self.parts.append(data)

    def flush(self) -> None:
        raw = "".join(self.parts)
        self.parts.clear()
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw)]
        body = "\n\n".join(p for p in paragraphs if p)
        if body:
            self.sections.append(Section(PATH_SEPARATOR.join(h for _, h in self.stack), body))


def parse_html(text: str, doc_id: str) -> Document:
    parser = _HTMLSections()
    parser.feed(text)
    parser.close()
    parser.flush()
    return Document(id=doc_id, sections=parser.sections, title=parser.title or parser.first_h1)


def parse_pdf(data: bytes, doc_id: str) -> Document:
    try:
        from pypdf import PdfReader
    except ImportError:  # pragma: no cover - pypdf is a default dependency
        raise InvalidRequest("reading PDF needs pypdf: pip install pypdf") from None
    reader = PdfReader(io.BytesIO(data))
    sections = []
    for number, page in enumerate(reader.pages, start=1):
        text = (page.extract_text() or "").strip()
        if text:
            sections.append(Section(f"page {number}", text, prefix_location=False))
    info = reader.metadata
    title = str(info.title) if info is not None and info.title else None
    return Document(id=doc_id, sections=sections, title=title)


def parse_jsonl(text: str, doc_id: str, text_field: str = "text") -> list[Document]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"{doc_id}:{number}: not a JSON object ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise InvalidRequest(
                f"{doc_id}:{number}: expected an object with a string field {text_field!r} "
                "(choose the field with --text-field)"
            )
        body = record.pop(text_field).strip()
        line_id = record.pop("id", None)
        title, source = record.pop("title", None), record.pop("source", None)
        documents.append(Document(
            id=str(line_id) if line_id is not None else f"{doc_id}#L{number}",
            sections=[Section("", body)] if body else [],
            title=str(title) if title is not None else None,
            source=str(source) if source is not None else None,
            metadata=record,
        ))
    return documents


Parser = Callable[[bytes, str], list[Document]]


def _decoded(fn: Callable[[str, str], Document]) -> Parser:
    return lambda data, doc_id: [fn(data.decode("utf-8", "replace"), doc_id)]


PARSERS: dict[str, Parser] = {
    ".md": _decoded(parse_markdown),
    ".markdown": _decoded(parse_markdown),
    ".txt": _decoded(parse_text),
    ".text": _decoded(parse_text),
    ".html": _decoded(parse_html),
    ".htm": _decoded(parse_html),
    ".pdf": lambda data, doc_id: [parse_pdf(data, doc_id)],
}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
SUFFIXES = set(PARSERS) | JSONL_SUFFIXES


def parse_file(path: Path, data: bytes, doc_id: str, *, text_field: str = "text") -> list[Document]:
    """The documents in one file (one, except for JSONL)."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        documents = parse_jsonl(data.decode("utf-8", "replace"), doc_id, text_field)
        return [_without_nul(document) for document in documents]
    parser = PARSERS.get(suffix)
    if parser is None:
        supported = ", ".join(sorted(SUFFIXES))
        raise InvalidRequest(f"{path}: unsupported file type (supported: {supported})")
    return [_without_nul(document) for document in parser(data, doc_id)]


def _without_nul(document: Document) -> Document:
    # A NUL in a file's text is noise (a binary fragment), and PostgreSQL's text cannot hold
    # one: it becomes U+FFFD, as undecodable bytes already do, on every backend alike.
    def clean(text: str | None) -> str | None:
        return text.replace("\x00", "\ufffd") if text and "\x00" in text else text

    document.sections = [Section(clean(s.location), clean(s.text), s.prefix_location)
                         for s in document.sections]
    document.id, document.title = clean(document.id), clean(document.title)
    document.source = clean(document.source)
    return document
