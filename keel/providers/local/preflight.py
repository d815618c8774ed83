"""Checking, once per build, that the installed llama.cpp can run on this CPU at all.

llama-cpp-python compiles llama.cpp with `-march=native` unless told otherwise. A wheel built on
another CPU, or on a virtual machine that advertises instructions it does not enable (Intel AMX),
dies with SIGSEGV or SIGILL on its first prompt and takes the whole server with it,
mid-request. So before the local provider loads its model in-process, a child process evaluates
a short prompt; a crash there becomes a start-up `ConfigError` that says how to rebuild. A
success is remembered per (llama.cpp build, model file): about a second once, not every start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from keel.errors import ConfigError

# A batch of several tokens on the default threads: a single token takes other code paths (the
# AMX kernels, for one, only run on batches), so it can pass where a real prompt crashes.
PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, verbose=False)
llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 3, add_bos=True))
"""

REBUILD_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir --no-deps '
    "llama-cpp-python"
)


def check_engine_runs(
    model_path: Path,
    *,
    probe: str = PROBE,
    engine_files: list[Path] | None = None,
    cache_dir: Path | None = None,
    timeout: float = 120,
) -> None:
    """Raise ConfigError if evaluating a short prompt of `model_path` crashes a child process."""
    files = engine_files if engine_files is not None else _llama_cpp_libraries()
    marker = (cache_dir or _cache_dir()) / _build_key([*files, model_path])
    if marker.exists():
        return
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe, str(model_path)],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return  # inconclusive (a very slow machine): the in-process load will tell
    if result.returncode < 0:
        raise ConfigError(
            f"local provider: llama.cpp crashed ({_signal_name(-result.returncode)}) evaluating "
            f"a short prompt of {model_path}: it was compiled for instructions this CPU cannot run "
            f"(see docs/local-engine.md). Rebuild it for any x86-64 CPU with AVX2: {REBUILD_HINT}"
        )
    if result.returncode == 0:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass  # a read-only home: the check runs again next start, nothing worse
    # A Python error in the child (a bad model file, say) is left to the in-process load, whose
    # message is the better one.


def _llama_cpp_libraries() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(next(iter(spec.submodule_search_locations)))
    return sorted(p for p in package.rglob("*.so*") if p.is_file())


def _build_key(files: list[Path]) -> str:
    digest = hashlib.sha256(sys.executable.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "keel" / "engine-checks"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
