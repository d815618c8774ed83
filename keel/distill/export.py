"""OpenAI chat fine-tuning JSONL from a training set's split.

One line per example: `{"messages": [...], "tools": [...]}` — the prompt messages, then the
assistant answer (its `tool_calls` kept), and the request's tools when it had any (the key is
left out otherwise). This is the format OpenAI's fine-tuning API takes for chat models, and the
one `keel.distill.validate` checks.

    example_line(example)                       one line's object
    write_jsonl(examples, path)                 a file; returns the number of lines
    export_split(store, dataset, version, path) a stored split (`NAME-train`, ...) to a file
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from keel.distill.dataset import Example

if TYPE_CHECKING:
    from keel.store import Store


def example_line(example: Example) -> dict:
    line: dict = {"messages": example.messages}
    if example.tools:
        line["tools"] = example.tools
    return line


def write_jsonl(examples: Iterable[Example], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb") as handle:
        for example in examples:
            handle.write(orjson.dumps(example_line(example)) + b"\n")
            count += 1
    return count


def export_split(store: Store, dataset: str, version: str | None, path: str | Path) -> int:
    """Write a stored split (an eval dataset version made by `build_set`, or any eval dataset
    whose samples have an ideal answer) as fine-tuning JSONL."""
    from keel.evals.dataset_store import get_dataset

    _, samples = get_dataset(store, dataset, version)
    return write_jsonl((Example.from_sample(s) for s in samples), path)
