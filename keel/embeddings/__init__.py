"""Embeddings: text to vectors, for the knowledge store, the semantic cache and /v1/embeddings.

Every embedder implements the `Embedder` protocol in `base.py` and is found by `kind` through
the `keel.embedders` entry point group. Built in: `local` (all-MiniLM-L6-v2 as int8 ONNX on
onnxruntime, shipped in a PyPI package: offline, no PyTorch), `openai` (any OpenAI-compatible
embeddings endpoint: OpenAI, vLLM, Ollama, TEI) and `fake` (deterministic, for tests).
Embedders are named in keel.yaml under `embedders:`; `minilm` (the local one) always exists.
"""

from keel.embeddings.base import Embedder, EmbedderOptions, Embeddings
from keel.embeddings.registry import make_embedder

__all__ = ["Embedder", "EmbedderOptions", "Embeddings", "make_embedder"]
