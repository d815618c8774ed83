"""GGUF type conversion with llama.cpp's own quantiser: no extra package, no PyTorch.

llama.cpp's trainer needs float weights; the shipped SmolLM2 is Q4_1. `llama_model_quantize`
with `allow_requantize` dequantises every tensor on the way to another type, so the same call
makes the F32 training copy (`to_float`) and the servable student afterwards (`quantize`).
SmolLM2-135M: about 1.5 s and 515 MiB for F32, 145 MiB for Q8_0 on two cores.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from keel.errors import ConfigError

# llama.h `enum llama_ftype`: the output types worth offering for a student
FTYPES = {"f32": 0, "f16": 1, "q4_1": 3, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def convert(src: str | Path, dst: str | Path, ftype: str, *, threads: int = 0) -> Path:
    """Write `src` as `dst` with every tensor in `ftype` (llama.cpp keeps its usual exceptions)."""
    from llama_cpp import llama_cpp as lib

    if ftype not in FTYPES:
        raise ConfigError(f"unknown GGUF type {ftype!r} (known: {', '.join(FTYPES)})")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConfigError(f"model file {str(src)!r} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = lib.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.allow_requantize = True
    params.nthread = threads
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ConfigError(f"converting {src} to {ftype} failed (llama_model_quantize returned {rc})")
    return dst


def to_float(src: str | Path, dst: str | Path, *, threads: int = 0) -> Path:
    """The F32 copy llama.cpp's optimiser can train (it has no backward pass for quantised types)."""
    return convert(src, dst, "f32", threads=threads)


def quantize(src: str | Path, dst: str | Path, ftype: str = "q8_0", *, threads: int = 0) -> Path:
    return convert(src, dst, ftype, threads=threads)


class _InitParams(ctypes.Structure):          # gguf.h struct gguf_init_params
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def _gguf_lib():
    from llama_cpp import llama_cpp as binding

    lib = ctypes.CDLL(str(Path(binding.__file__).parent / "lib" / "libggml-base.so"))
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    for name, res, args in [
        ("gguf_init_from_file", vp, [ctypes.c_char_p, _InitParams]),
        ("gguf_init_empty", vp, []), ("gguf_free", None, [vp]),
        ("gguf_get_n_kv", i64, [vp]), ("gguf_get_key", ctypes.c_char_p, [vp, i64]),
        ("gguf_find_key", i64, [vp, ctypes.c_char_p]),
        ("gguf_remove_key", i64, [vp, ctypes.c_char_p]), ("gguf_set_kv", None, [vp, vp]),
        ("gguf_get_data_offset", ctypes.c_size_t, [vp]),
        ("gguf_get_meta_size", ctypes.c_size_t, [vp]), ("gguf_get_meta_data", None, [vp, vp]),
    ]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def _keys(lib, ctx) -> list[bytes]:
    return [lib.gguf_get_key(ctx, i) for i in range(lib.gguf_get_n_kv(ctx))]


def restore_metadata(base: str | Path, target: str | Path) -> list[str]:
    """Copy into `target` the metadata keys of `base` it lacks (llama_model_save_to_file writes
    the weights and the tokenizer but not, e.g., the chat template). The tensor data is copied
    byte for byte behind the new header. Returns the keys added."""
    lib = _gguf_lib()
    base_ctx = lib.gguf_init_from_file(str(base).encode(), _InitParams(True, None))
    out_ctx = lib.gguf_init_from_file(str(target).encode(), _InitParams(True, None))
    extra = lib.gguf_init_empty()
    try:
        if not base_ctx or not out_ctx:
            raise ConfigError(f"cannot read the GGUF metadata of {base if not base_ctx else target}")
        have = set(_keys(lib, out_ctx))
        lib.gguf_set_kv(extra, base_ctx)
        for key in have:
            lib.gguf_remove_key(extra, key)
        added = [k.decode() for k in _keys(lib, extra)]
        if not added:
            return []
        old_offset = lib.gguf_get_data_offset(out_ctx)
        lib.gguf_set_kv(out_ctx, extra)
        meta = ctypes.create_string_buffer(lib.gguf_get_meta_size(out_ctx))
        lib.gguf_get_meta_data(out_ctx, meta)
    finally:
        for ctx in (base_ctx, out_ctx, extra):
            if ctx:
                lib.gguf_free(ctx)
    target = Path(target)
    tmp = target.with_suffix(target.suffix + ".tmp")
    with target.open("rb") as src, tmp.open("wb") as dst:
        dst.write(meta.raw)
        src.seek(old_offset)
        while block := src.read(1 << 22):
            dst.write(block)
    tmp.replace(target)
    return added
