"""Files and folders → documents, with the hashes that make re-ingesting incremental.

A file's documents carry the file's path and a hash of its bytes (and of the settings that
shape its chunks), so an unchanged file is skipped without being parsed. A document's own
content hash covers its text, title, source, metadata and the chunk settings: the collection's
version is built from these. Documents from a file have its absolute path as their id (a JSONL
line: its `id` field, or `path#L<line>`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson

from keel.errors import InvalidRequest
from keel.grounding.knowledge.base import Document
from keel.grounding.knowledge.parsers import SUFFIXES, parse_file


def find_files(paths: list[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(supported files under the paths, sorted; the resolved roots they were found under)."""
    files: dict[Path, None] = {}
    roots = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.exists():
            raise InvalidRequest(f"{raw}: no such file or folder")
        roots.append(path)
        if path.is_file():
            files[path] = None
            continue
        for found in sorted(path.rglob("*")):
            if found.is_file() and found.suffix.lower() in SUFFIXES and not _hidden(found, path):
                files[found] = None
    return sorted(files), roots


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def under_roots(path: str, roots: list[Path]) -> bool:
    candidate = Path(path)
    return any(candidate == root or root in candidate.parents for root in roots)


def file_hash(data: bytes, settings_key: str) -> str:
    return hashlib.sha256(settings_key.encode() + b"\0" + data).hexdigest()[:32]


def read_documents(path: Path, data: bytes, digest: str, text_field: str) -> list[Document]:
    doc_id = path.as_posix()
    documents = parse_file(path, data, doc_id, text_field=text_field)
    for doc in documents:
        doc.path = doc_id
        doc.file_hash = digest
        doc.source = doc.source or display_path(path)
    return documents


def display_path(path: Path) -> str:
    """Relative to the working directory when under it: shorter in citations."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


def content_hash(doc: Document, settings_key: str) -> str:
    body = orjson.dumps(
        [settings_key, doc.title, doc.source, doc.metadata,
         [[s.location, s.text, s.prefix_location] for s in doc.sections]],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(body).hexdigest()[:32]
