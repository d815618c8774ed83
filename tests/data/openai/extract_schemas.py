"""Write the OpenAI schemas Keel's tests validate against, taken from OpenAI's OpenAPI description.

The full description (openai/openai-openapi, 2.9 MB of YAML) is more than the tests need; this
script keeps the named component schemas and everything they reference, and writes them as one
JSON document with the same `components.schemas` layout, so `$ref`s resolve unchanged.

    python tests/data/openai/extract_schemas.py PATH/TO/openai-openapi.yaml

Source: https://github.com/openai/openai-openapi (MIT licence, see LICENSE beside this file),
the August 2026 description (info.version 2.3.0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateChatCompletionRequest",
    "CreateEmbeddingResponse",
    "CreateEmbeddingRequest",
    "CreateModerationRequest",
    "CreateModerationResponse",
    "ErrorResponse",
    "ListModelsResponse",
    "Model",
]
PREFIX = "#/components/schemas/"
OUT = Path(__file__).with_name("openai-schemas.json")


def _refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            found.add(ref[len(PREFIX):])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def closure(schemas: dict, roots: list[str]) -> dict:
    kept: dict = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept[name] = schemas[name]
        found: set[str] = set()
        _refs(kept[name], found)
        todo.extend(found - kept.keys())
    return dict(sorted(kept.items()))


def main(spec_path: str) -> None:
    document = yaml.safe_load(Path(spec_path).read_text())
    kept = closure(document["components"]["schemas"], ROOTS)
    out = {
        "info": {**document["info"], "x-extracted-by": "tests/data/openai/extract_schemas.py"},
        "components": {"schemas": kept},
    }
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"{len(kept)} schemas written to {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:])
