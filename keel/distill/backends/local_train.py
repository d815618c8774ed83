"""The local training worker: full fine-tuning of a GGUF model with llama.cpp's own optimiser.

    python -m keel.distill.backends.local_train --train train.jsonl --base model.gguf \
        --out student.gguf --work-dir DIR [--epochs 1 --learning-rate 1e-5 --context 256 ...]

Runs in its own process (keel.distill.backends.local starts it), so a cancel is a plain
terminate and a crash inside llama.cpp cannot take the gateway down. Every line on stdout is one
JSON object, the protocol the backend parses:

    {"event": "stage", "stage": "dequantise" | "load" | "tokenise" | "train" | "save" | "quantise"}
    {"event": "dataset", "examples": 8, "windows": 3, "tokens": 612, "context": 256}
    {"event": "step", "epoch": 1, "epochs": 2, "step": 3, "steps": 6, "loss": 2.31}
    {"event": "epoch", "epoch": 1, "loss": 2.31, "val_loss": 2.5, "seconds": 41.2}
    {"event": "done", "model": "student.gguf", "seconds": 95.0}
    {"event": "error", "message": "..."}                     (and exit status 1)

How: the shipped Q4_1 GGUF is dequantised to F32 (gguf_convert), loaded writable (no mmap, F32
KV cache, no flash attention: what llama.cpp's examples/training/finetune.cpp forces), and
trained with `llama_opt_init` / `llama_opt_epoch` (AdamW, every tensor trainable). Each example
is the chat template's prompt followed by the target answer and the end-of-turn token; whole
examples are packed into windows of `context` tokens and the rest padded with end-of-turn.
llama.cpp's loss covers every position of a window (its dataset has no mask), so the prompt
tokens are trained too. The trained weights are saved, quantised back for serving, and given
back the metadata llama_model_save_to_file leaves out (the chat template among it).

llama-cpp-python binds `llama_opt_init` with an older struct (no `optimizer_type`) and none of
ggml-opt's dataset functions, so this module binds them itself from the shared libraries that
llama-cpp-python ships.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import sys
import time
from pathlib import Path

GGML_TYPE_F32 = 0
GGML_TYPE_I32 = 26
ADAMW = 0


class InputError(Exception):
    """The training file is not usable; the message says where."""


# ---- examples -------------------------------------------------------------------------------

def read_examples(path: str | Path, max_examples: int | None = None) -> list[list[dict]]:
    """Chat fine-tuning JSONL → message lists whose last message is the assistant's target."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"training file {str(path)!r} does not exist")
    examples: list[list[dict]] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path.name} line {n}: not a JSON object with `messages`") from None
            examples.append(_check_messages(messages, f"{path.name} line {n}"))
            if max_examples and len(examples) >= max_examples:
                break
    if not examples:
        raise InputError(f"training file {path.name} has no examples")
    return examples


def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or len(messages) < 2:
        raise InputError(f"{where}: `messages` needs a prompt and an assistant answer")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: message {i} needs string `content` "
                             "(tool calls are not trained locally)")
    if messages[-1].get("role") != "assistant":
        raise InputError(f"{where}: the last message must be the assistant's answer")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def tokenise(llm, formatter, examples: list[list[dict]], eot: str) -> list[list[int]]:
    """Prompt as the local provider formats it, then the answer and the end-of-turn token."""
    out = []
    for messages in examples:
        prompt = formatter(messages=messages[:-1]).prompt
        text = prompt + messages[-1]["content"] + eot
        out.append(llm.tokenize(text.encode(), add_bos=True, special=True))
    return out


def pack(sequences: list[list[int]], context: int, pad: int) -> list[list[int]]:
    """Whole sequences into windows of context+1 tokens (input = w[:-1], labels = w[1:])."""
    windows: list[list[int]] = []
    current: list[int] = []
    for seq in sequences:
        seq = seq[-(context + 1):]          # an over-long example keeps its answer end
        if current and len(current) + len(seq) > context + 1:
            windows.append(current)
            current = []
        current = current + seq
    if current:
        windows.append(current)
    return [w + [pad] * (context + 1 - len(w)) for w in windows]


# ---- llama.cpp / ggml bindings ---------------------------------------------------------------

class OptimizerParams(ctypes.Structure):      # ggml-opt.h struct ggml_opt_optimizer_params
    _fields_ = [("adamw_alpha", ctypes.c_float), ("adamw_beta1", ctypes.c_float),
                ("adamw_beta2", ctypes.c_float), ("adamw_eps", ctypes.c_float),
                ("adamw_wd", ctypes.c_float), ("sgd_alpha", ctypes.c_float),
                ("sgd_wd", ctypes.c_float)]


class OptParams(ctypes.Structure):            # llama.h struct llama_opt_params (current layout)
    _fields_ = [("n_ctx_train", ctypes.c_uint32), ("param_filter", ctypes.c_void_p),
                ("param_filter_ud", ctypes.c_void_p), ("get_opt_pars", ctypes.c_void_p),
                ("get_opt_pars_ud", ctypes.c_void_p), ("optimizer_type", ctypes.c_int)]


EpochCallback = ctypes.CFUNCTYPE(None, ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


class Libs:
    def __init__(self) -> None:
        from llama_cpp import llama_cpp as binding

        lib_dir = Path(binding.__file__).parent / "lib"
        # fresh handles: their function objects are ours to declare
        self.llama = ctypes.CDLL(binding._lib._name)
        self.ggml = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
        vp, i64, c = ctypes.c_void_p, ctypes.c_int64, ctypes
        self._decl(self.llama, "llama_opt_init", None, [vp, vp, OptParams])
        self._decl(self.llama, "llama_opt_epoch", None, [vp, vp, vp, vp, i64, vp, vp])
        self._decl(self.llama, "llama_model_save_to_file", None, [vp, c.c_char_p])
        self._decl(self.ggml, "ggml_opt_dataset_init", vp, [c.c_int, c.c_int, i64, i64, i64, i64])
        self._decl(self.ggml, "ggml_opt_dataset_data", vp, [vp])
        self._decl(self.ggml, "ggml_opt_dataset_labels", vp, [vp])
        self._decl(self.ggml, "ggml_opt_dataset_free", None, [vp])
        self._decl(self.ggml, "ggml_backend_tensor_set", None, [vp, vp, c.c_size_t, c.c_size_t])
        self._decl(self.ggml, "ggml_opt_result_init", vp, [])
        self._decl(self.ggml, "ggml_opt_result_reset", None, [vp])
        self._decl(self.ggml, "ggml_opt_result_free", None, [vp])
        self._decl(self.ggml, "ggml_opt_result_loss", None,
                   [vp, c.POINTER(c.c_double), c.POINTER(c.c_double)])
        self.param_filter_all = ctypes.cast(self.llama.llama_opt_param_filter_all, vp).value
        self.constant_opt_pars = ctypes.cast(self.ggml.ggml_opt_get_constant_optimizer_params, vp).value

    @staticmethod
    def _decl(lib, name, restype, argtypes) -> None:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes

    def loss(self, result) -> float:
        loss, unc = ctypes.c_double(), ctypes.c_double()
        self.ggml.ggml_opt_result_loss(result, ctypes.byref(loss), ctypes.byref(unc))
        return loss.value


class Dataset:
    """A ggml_opt_dataset of `n` windows; `fill` rewrites its tokens (a new shuffle per epoch)."""

    def __init__(self, libs: Libs, windows: list[list[int]], context: int) -> None:
        self.libs, self.context, self.n = libs, context, len(windows)
        self.handle = libs.ggml.ggml_opt_dataset_init(GGML_TYPE_I32, GGML_TYPE_I32,
                                                      context, context, self.n, 1)
        self.fill(windows)

    def fill(self, windows: list[list[int]]) -> None:
        ctx = self.context
        data = (ctypes.c_int32 * (ctx * self.n))(*[t for w in windows for t in w[:-1]])
        labels = (ctypes.c_int32 * (ctx * self.n))(*[t for w in windows for t in w[1:]])
        g = self.libs.ggml
        g.ggml_backend_tensor_set(g.ggml_opt_dataset_data(self.handle), data, 0, ctypes.sizeof(data))
        g.ggml_backend_tensor_set(g.ggml_opt_dataset_labels(self.handle), labels, 0, ctypes.sizeof(labels))

    def free(self) -> None:
        self.libs.ggml.ggml_opt_dataset_free(self.handle)


# ---- the run ---------------------------------------------------------------------------------

def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def train(args: argparse.Namespace) -> Path:
    import llama_cpp

    from keel.distill.backends import gguf_convert
    from keel.providers.local.engine import _chat_formatter

    started = time.monotonic()
    examples = read_examples(args.train, args.max_examples)
    validation = read_examples(args.validation) if args.validation else []
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    emit("stage", stage="dequantise")
    f32 = gguf_convert.to_float(args.base, work / "base-f32.gguf", threads=args.threads)

    emit("stage", stage="load")
    # llama.cpp pads the context to a multiple of 256, and its trainer needs batch == context
    size = -(-max(args.context, 1) // 256) * 256
    llm = llama_cpp.Llama(
        model_path=str(f32), n_ctx=size, n_batch=size, n_ubatch=size,
        n_threads=args.threads or None, n_threads_batch=args.threads or None, use_mmap=False,
        type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False, verbose=False,
    )
    f32.unlink(missing_ok=True)          # read into memory (no mmap): the copy is not needed
    context = llama_cpp.llama_n_ctx(llm.ctx)
    if context != size:
        raise RuntimeError(f"llama.cpp made a context of {context} tokens for {size} asked")
    _, formatter = _chat_formatter(llama_cpp, llm, None)
    eot_id = llm.token_eos()
    eot = llm._model.token_get_text(eot_id)

    emit("stage", stage="tokenise")
    rng = random.Random(args.seed)
    sequences = tokenise(llm, formatter, examples, eot)
    val_windows = pack(tokenise(llm, formatter, validation, eot), context, eot_id) if validation else []
    # Packed once: llama_opt_epoch takes the number of training windows (idata_split) and the
    # dataset's size is fixed, so every epoch must have the same windows, only in a new order.
    # (Re-packing shuffled examples each epoch changed the count, and a window left over from
    # the previous epoch, or a validation window, was trained on.)
    rng.shuffle(sequences)  # windows mix examples of every topic, not the file's runs of one
    windows = pack(sequences, context, eot_id)
    n_train = len(windows)
    emit("dataset", examples=len(examples), windows=n_train, tokens=sum(map(len, sequences)),
         context=context, validation_windows=len(val_windows))

    libs = Libs()
    lr = args.learning_rate
    opt_pars = OptimizerParams(lr, 0.9, 0.999, 1e-8, args.weight_decay, lr, 0.0)
    # n_ctx_train: keep the model's own context length in the saved file (0 would write ours)
    n_ctx_train = llama_cpp.llama_model_n_ctx_train(llm.model)
    params = OptParams(n_ctx_train, libs.param_filter_all, None, libs.constant_opt_pars,
                       ctypes.addressof(opt_pars), ADAMW)
    libs.llama.llama_opt_init(llm.ctx, llm.model, params)

    dataset = Dataset(libs, windows + val_windows, context)
    result_train, result_eval = libs.ggml.ggml_opt_result_init(), libs.ggml.ggml_opt_result_init()
    state = {"epoch": 0}

    def on_train(train_flag, _opt, _ds, result, ibatch, ibatch_max, _t0):
        if train_flag:
            emit("step", epoch=state["epoch"], epochs=args.epochs, step=int(ibatch), steps=int(ibatch_max),
                 loss=round(libs.loss(result), 5))

    callback, nothing = EpochCallback(on_train), ctypes.c_void_p()
    emit("stage", stage="train")
    for epoch in range(1, args.epochs + 1):
        state["epoch"] = epoch
        # linear decay to 10 % over the run, set before each epoch through the constant callback
        opt_pars.adamw_alpha = args.learning_rate * (1 - 0.9 * (epoch - 1) / max(args.epochs, 1))
        rng.shuffle(windows)
        dataset.fill(windows + val_windows)
        t0 = time.monotonic()
        libs.llama.llama_opt_epoch(llm.ctx, dataset.handle, result_train, result_eval, n_train,
                                   ctypes.cast(callback, ctypes.c_void_p), nothing)
        fields = {"loss": round(libs.loss(result_train), 5)}
        if val_windows:
            fields["val_loss"] = round(libs.loss(result_eval), 5)
        emit("epoch", epoch=epoch, seconds=round(time.monotonic() - t0, 2), **fields)
        libs.ggml.ggml_opt_result_reset(result_train)
        libs.ggml.ggml_opt_result_reset(result_eval)

    emit("stage", stage="save")
    trained = work / "trained-f32.gguf"
    libs.llama.llama_model_save_to_file(llm.model, str(trained).encode())
    libs.ggml.ggml_opt_result_free(result_train)
    libs.ggml.ggml_opt_result_free(result_eval)
    dataset.free()
    llm.close()

    out = Path(args.out)
    if args.quant == "f32":
        trained.replace(out)
    else:
        emit("stage", stage="quantise")
        gguf_convert.quantize(trained, out, args.quant, threads=args.threads)
        trained.unlink(missing_ok=True)
    gguf_convert.restore_metadata(args.base, out)     # the chat template, names, license
    emit("done", model=str(out), seconds=round(time.monotonic() - started, 2))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m keel.distill.backends.local_train")
    p.add_argument("--train", required=True)
    p.add_argument("--validation")
    p.add_argument("--base", required=True, help="the student GGUF (any type; it is dequantised)")
    p.add_argument("--out", required=True)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-examples", type=int, default=0)
    p.add_argument("--quant", default="q8_0")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except InputError as exc:
        emit("error", message=str(exc), kind="input")
        return 2
    except Exception as exc:  # noqa: BLE001 - the backend reports it as the job's failure
        for partial in Path(args.work_dir).glob("*.gguf"):
            partial.unlink(missing_ok=True)
        emit("error", message=f"{type(exc).__name__}: {exc}", kind="internal")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
