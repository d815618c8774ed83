"""Files and folders → documents, with the hashes that make re-ingesting incremental.

A file's documents carry the file's path and a hash of its bytes (and of the settings that
shape its chunks), so an unchanged file is skipped without being parsed. A document's own
content hash covers its text, title, source, metadata and the chunk settings: the collection's
version is built from these.

A document from a file has as its id the file's path relative to the root it was ingested
from (`keel ingest docs/` gives `faq/refunds.md`; a file named on its own gives its name), so
ids and citations never show where the server keeps its files. A JSONL line's id is its `id`
field, or `<relative path>#L<line>`. The absolute path is kept only in the store's `path`
column, for incremental runs and `--prune`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson

from keel.errors import InvalidRequest
from keel.grounding.knowledge.base import Document
from keel.grounding.knowledge.parsers import SUFFIXES, parse_file


def find_files(paths: list[str | os.PathLike]) -> tuple[dict[Path, Path], list[Path]]:
    """({supported file under the paths: the root it was found under}, sorted by file; the
    resolved roots)."""
    files: dict[Path, Path] = {}
    roots = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.exists():
            raise InvalidRequest(f"{raw}: no such file or folder")
        roots.append(path)
        if path.is_file():
            files.setdefault(path, path)
            continue
        for found in sorted(path.rglob("*")):
            if found.is_file() and found.suffix.lower() in SUFFIXES and not _hidden(found, path):
                files.setdefault(found, path)
    return dict(sorted(files.items())), roots


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def under_roots(path: str, roots: list[Path]) -> bool:
    candidate = Path(path)
    return any(candidate == root or root in candidate.parents for root in roots)


def relative_id(path: Path, root: Path) -> str:
    """The file's document id: its path under the root, or its name when it is the root."""
    if path == root:
        return path.name
    return path.relative_to(root).as_posix()


def legacy_ids(doc_ids: list[str], path: Path) -> bool:
    """Whether these stored ids are of the old form, the file's absolute path: such a file
    is re-read on the next ingest, so its documents get relative ids."""
    posix = path.as_posix()
    return any(i == posix or i.startswith(posix + "#") for i in doc_ids)


def file_hash(data: bytes, settings_key: str) -> str:
    return hashlib.sha256(settings_key.encode() + b"\0" + data).hexdigest()[:32]


def read_documents(path: Path, root: Path, data: bytes, digest: str,
                   text_field: str) -> list[Document]:
    doc_id = relative_id(path, root)
    documents = parse_file(path, data, doc_id, text_field=text_field)
    for doc in documents:
        doc.path = path.as_posix()
        doc.file_hash = digest
        doc.source = doc.source or display_path(path, doc_id)
    return documents


def display_path(path: Path, fallback: str) -> str:
    """Relative to the working directory when under it (shorter in citations), else the
    document id: never an absolute server path."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return fallback


def content_hash(doc: Document, settings_key: str) -> str:
    body = orjson.dumps(
        [settings_key, doc.title, doc.source, doc.metadata,
         [[s.location, s.text, s.prefix_location] for s in doc.sections]],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(body).hexdigest()[:32]
