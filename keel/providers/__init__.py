"""Providers: where a chat completion is actually produced.

Each provider implements the narrow `Provider` protocol in `base.py` (chat, stream, check) and
is found by its `kind` through the registry in `registry.py`, which reads the `keel.providers`
entry point group, so a third-party package can add one. Built in:

- `openai`: any OpenAI-compatible HTTP API (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server).
- `local`: the embedded engine, llama-cpp-python on a GGUF file (SmolLM2 by default).
- `fake`: scripted and deterministic, for tests and benchmarks; also served over HTTP by
  `keel fake-upstream`.
"""

from keel.providers.base import Provider
from keel.providers.registry import provider_class

__all__ = ["Provider", "provider_class"]
