"""keel.yaml's `retrieval:` section sets how the shared knowledge base ranks."""

from __future__ import annotations

import pytest

from keel.config import load_config
from keel.errors import ConfigError
from keel.store import ann
from keel.grounding.knowledge.knowledge import knowledge_base
from keel.pipeline.runtime import Runtime


def runtime_for(tmp_path, text: str) -> Runtime:
    path = tmp_path / "keel.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + text)
    return Runtime(load_config(path))


def test_unset_keeps_the_search_defaults(tmp_path):
    kb = knowledge_base(runtime_for(tmp_path, ""))
    assert (kb.fusion, kb.index, kb.candidates, kb.weights) == ("convex", "exact", 50, None)


def test_the_section_reaches_the_shared_knowledge_base(tmp_path):
    runtime = runtime_for(tmp_path, (
        "retrieval: {fusion: rrf, rrf_k: 10, weights: {vector: 2.0}, candidates: 20,\n"
        "            index: auto, ann_threshold: 1000}\n"))
    kb = knowledge_base(runtime)
    assert (kb.fusion, kb.rrf_k, kb.weights, kb.candidates) == ("rrf", 10, {"vector": 2.0}, 20)
    assert (kb.index, kb.ann_threshold) == ("auto", 1000)
    assert knowledge_base(runtime) is kb


def test_ann_is_checked_for_usearch(tmp_path):
    runtime = runtime_for(tmp_path, "retrieval: {index: ann, alpha: 0.5}\n")
    if ann.available():
        assert (knowledge_base(runtime).index, knowledge_base(runtime).alpha) == ("ann", 0.5)
    else:
        with pytest.raises(ConfigError, match="keel-llm\\[ann\\]"):
            knowledge_base(runtime)


@pytest.mark.parametrize("text, expected", [
    ("retrieval: {fusion: bm25}\n", "retrieval.fusion"),
    ("retrieval: {alpha: 1.5}\n", "retrieval.alpha: Input should be less than or equal to 1"),
    ("retrieval: {index: faiss}\n", "retrieval.index"),
    ("retrieval: {weights: {vectors: 1}}\n", "retrieval.weights"),
    ("retrieval: {top_k: 3}\n", "retrieval.top_k"),
])
def test_mistakes_stop_start_up_naming_the_field(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        runtime_for(tmp_path, text)
    assert expected in info.value.message
