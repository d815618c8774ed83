"""Find Keel's pluggable parts by name: providers, layers, embedders, tool kinds and graders.

Each is an entry point group: `keel.providers`, `keel.layers`, `keel.embedders`, `keel.tools`,
`keel.graders`.

Third-party packages add their own through these entry point groups. The built-ins are listed
here too, so a source checkout works before `pip install -e`.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from keel.errors import ConfigError

_BUILTIN = {
    "keel.providers": {
        "openai": "keel.providers.openai:OpenAIProvider",
        "local": "keel.providers.local:LocalProvider",
        "fake": "keel.providers.fake:FakeProvider",
    },
    "keel.layers": {
        "json_mode": "keel.consistency.json_mode:JSONModeLayer",
        "knowledge": "keel.grounding.knowledge_layer:KnowledgeLayer",
        "tools": "keel.grounding.tools.layer:ToolsLayer",
    },
    "keel.embedders": {
        "local": "keel.embeddings.local:LocalEmbedder",
        "openai": "keel.embeddings.openai:OpenAIEmbedder",
        "fake": "keel.embeddings.fake:FakeEmbedder",
    },
    "keel.graders": {
        "exact": "keel.evals.graders.match:ExactGrader",
        "includes": "keel.evals.graders.match:IncludesGrader",
        "fuzzy_match": "keel.evals.graders.match:FuzzyMatchGrader",
        "regex": "keel.evals.graders.match:RegexGrader",
        "json_valid": "keel.evals.graders.structured:JSONValidGrader",
        "json_schema": "keel.evals.graders.structured:JSONSchemaGrader",
        "numeric": "keel.evals.graders.numeric:NumericGrader",
        "similarity": "keel.evals.graders.similarity:SimilarityGrader",
        "fact": "keel.evals.graders.fact:FactGrader",
        "classify": "keel.evals.graders.classify:ClassifyGrader",
        "rubric": "keel.evals.graders.rubric:RubricGrader",
        "rag": "keel.evals.graders.rag:RAGGrader",
        "python": "keel.evals.graders.python:PythonGrader",
    },
    "keel.tools": {
        "http": "keel.grounding.tools.http:HTTPTool",
        "python": "keel.grounding.tools.python:PythonTool",
        "mcp": "keel.grounding.tools.mcp:MCPTool",
    },
}


@cache
def available(group: str) -> dict[str, str]:
    """name -> "module:attribute" for every plug-in of `group`."""
    found = dict(_BUILTIN.get(group, {}))
    for ep in entry_points(group=group):
        found[ep.name] = ep.value
    return found


def load(group: str, name: str, what: str) -> type:
    target = available(group).get(name)
    if target is None:
        known = ", ".join(sorted(available(group)))
        raise ConfigError(f"unknown {what} {name!r}; expected one of: {known}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def import_callable(target: str, where: str):
    """The function named "package.module:function" (dots after the colon reach attributes);
    `where` names the config field, for the error."""
    module_name, _, attribute = target.partition(":")
    try:
        found = importlib.import_module(module_name)
        for part in filter(None, attribute.split(".")):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot import {target!r}: {exc}") from None
    if not callable(found):
        raise ConfigError(f"{where}: {target!r} is not callable")
    return found
