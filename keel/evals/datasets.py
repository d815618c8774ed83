"""Loading eval datasets from files, and the content hash that versions them.

    load_samples(path)        JSONL (the OpenAI evals registry format loads unchanged) or CSV
    dataset_version(samples)  a hash of exactly what would be stored, order included

A sample without an `id` gets one from its content (`s` + 12 hex digits of the hash of input,
ideal and context), so editing one line of a file, or inserting one, leaves every other sample's
id alone; runs, comparisons and human annotations keep pointing at the same samples. Identical
samples get `-2`, `-3`… after their id.

The store functions (`import_dataset`, `get_dataset`, `list_datasets`, `dataset_versions`) live
in `keel.evals.dataset_store` and can be imported from here too.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import orjson

from keel.errors import InvalidRequest
from keel.evals.base import Sample

VERSION_LENGTH = 16
_STORE_API = ("import_dataset", "list_datasets", "get_dataset", "dataset_versions")


def load_samples(
    path: str | Path, *, input_field: str = "input", ideal_field: str = "ideal"
) -> list[Sample]:
    """The samples of a `.jsonl` (or `.json` lines) or `.csv` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        records = _jsonl_records(path)
    elif suffix == ".csv":
        records = _csv_records(path)
    else:
        raise InvalidRequest(f"{path}: expected a .jsonl or .csv file, got {suffix or 'no suffix'!r}")
    samples = [_sample(rec, where, input_field, ideal_field) for where, rec in records]
    if not samples:
        raise InvalidRequest(f"{path}: no samples")
    return with_unique_ids(samples)


def dataset_version(samples: list[Sample]) -> str:
    """The content hash of a dataset: the same samples in the same order give the same version.

    Order counts because runs, reports and `show` follow it; reordering a file is a new version.
    """
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(_canonical(sample.to_dict()))
        digest.update(b"\n")
    return digest.hexdigest()[:VERSION_LENGTH]


def sample_id(sample: Sample) -> str:
    """The default id: a hash of what the model sees and what it should answer."""
    content = {"input": sample.input, "ideal": sample.ideal, "context": sample.context}
    return "s" + hashlib.sha256(_canonical(content)).hexdigest()[:12]


def with_unique_ids(samples: list[Sample]) -> list[Sample]:
    """Fill missing ids from content and number repeated content; a repeated given id is an
    error, since a run could not tell those samples apart."""
    seen: dict[str, int] = {}
    for sample in samples:
        if sample.id and sample.id in seen:
            raise InvalidRequest(f"sample id {sample.id!r} appears more than once", param="id")
        base = sample.id or sample_id(sample)
        count = seen.get(base, 0) + 1
        seen[base] = count
        sample.id = base if count == 1 else f"{base}-{count}"
    return samples


def sample_from_dict(record: dict, where: str = "sample") -> Sample:
    """A sample from a dict shaped like a JSONL line (the shape `Sample.to_dict` gives back)."""
    return _sample(record, where, "input", "ideal")


def sample_from_trace(trace: dict) -> Sample:
    """A sample from a recorded trace (as `keel.ops.feedback.traces_for_dataset` gives it):
    the request's messages as input, the latest correction as ideal, the rest as metadata."""
    latest = trace.get("feedback") or {}
    metadata = {
        "trace_id": trace["id"],
        "model": trace.get("model"),
        "feedback_score": latest.get("score"),
        "feedback_comment": latest.get("comment"),
        "output": _answer_text(trace.get("response")),
    }
    return Sample(
        id=trace["id"],
        input=list(trace["request"]["messages"]),
        ideal=trace.get("correction") or None,
        metadata={k: v for k, v in metadata.items() if v is not None},
    )


def _answer_text(response) -> str | None:
    # A non-streamed trace keeps the chat.completion; a streamed one the assembled content.
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None
    content = response.get("content")
    return content if isinstance(content, str) else None


# -- reading files ---------------------------------------------------------------------------


def _jsonl_records(path: Path):
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise InvalidRequest(f"{where}: expected a JSON object, got {_kind(record)}")
            yield where, record


def _csv_records(path: Path):
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            return
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:  # more cells than header columns
                raise InvalidRequest(f"{where}: more cells than the header has columns")
            yield where, _csv_record(row, where)


def _csv_record(row: dict[str, str | None], where: str) -> dict:
    # Cells are text; an input, ideal or context cell holding a JSON list is read as that list,
    # so chat messages and several acceptable answers fit in a spreadsheet too.
    record: dict[str, Any] = {}
    for column, cell in row.items():
        if cell is None or cell == "":
            continue
        if cell.lstrip().startswith("[") and column != "metadata":
            record[column] = _json_or_text(cell)
        elif column == "metadata":
            try:
                record[column] = orjson.loads(cell)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"{where}: metadata: not valid JSON ({exc})") from None
        else:
            record[column] = cell
    return record


def _json_or_text(cell: str):
    try:
        return orjson.loads(cell)
    except orjson.JSONDecodeError:
        return cell


# -- one record to a Sample ------------------------------------------------------------------


def _sample(record: dict, where: str, input_field: str, ideal_field: str) -> Sample:
    if input_field not in record:
        raise InvalidRequest(f"{where}: missing field {input_field!r}", param=input_field)
    known = {input_field, ideal_field, "id", "context", "metadata"}
    metadata = _metadata(record.get("metadata"), where)
    # Fields Keel does not know are kept, not dropped, so nothing of the source is lost.
    for key, value in record.items():
        if key not in known:
            metadata.setdefault(key, value)
    raw_id = record.get("id")
    if raw_id is not None and not isinstance(raw_id, (str, int)):
        raise InvalidRequest(f"{where}: id: expected a string or an integer", param="id")
    return Sample(
        id=str(raw_id) if raw_id is not None else "",
        input=_messages(record[input_field], where, input_field),
        ideal=_ideal(record.get(ideal_field), where, ideal_field),
        context=_context(record.get("context"), where),
        metadata=metadata,
    )


def _messages(value, where: str, field: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            f"{where}: {field}: expected a string or a non-empty list of chat messages, "
            f"got {_kind(value)}", param=field,
        )
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(
                f"{where}: {field}[{index}]: expected a chat message with a 'role'",
                param=f"{field}[{index}]",
            )
    return value


def _ideal(value, where: str, field: str) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):  # an expected JSON answer: compared as JSON text
        return orjson.dumps(value).decode()
    if isinstance(value, list) and all(_scalar(v) for v in value):
        return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value]
    raise InvalidRequest(
        f"{where}: {field}: expected a string or a list of strings, got {_kind(value)}",
        param=field,
    )


def _context(value, where: str) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest(
        f"{where}: context: expected a string or a list of strings, got {_kind(value)}",
        param="context",
    )


def _metadata(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: metadata: expected an object, got {_kind(value)}",
                             param="metadata")
    return dict(value)


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float, dict)) and not isinstance(value, bool)


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def _canonical(value) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def __getattr__(name: str):
    # The store API, importable from here without an import cycle (it imports this module).
    if name in _STORE_API:
        from keel.evals import dataset_store

        return getattr(dataset_store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
