"""A loaded GGUF model with its chat template, tokenizer and decoder.

`Engine.load` runs on the worker thread. Besides the weights it reads every token's text once,
for decoding pieces and for the JSON closing bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keel.errors import ConfigError
from keel.providers.local import json_mode
from keel.providers.local.decode import Decoder
from keel.providers.local.request import Planner, SamplingDefaults


@dataclass
class LoadSettings:
    n_ctx: int
    n_batch: int
    n_threads: int | None
    chat_format: str | None
    verbose: bool


class Engine:
    def __init__(self, llama_cpp, llm, settings: LoadSettings, defaults: SamplingDefaults) -> None:
        self.llm = llm
        self.template, self._formatter = _chat_formatter(llama_cpp, llm, settings.chat_format)
        pieces = [_piece(llama_cpp, llm, t) for t in range(llm.n_vocab())]
        texts = [p.decode("utf-8", "replace") for p in pieces]
        self.decoder = Decoder(llama_cpp, llm, pieces, json_mode.closing_bias(texts))
        self.planner = Planner(
            n_ctx=llm.n_ctx(),
            n_vocab=llm.n_vocab(),
            defaults=defaults,
            format_prompt=self.format_prompt,
            tokenize=self.tokenize,
            count_tokens=lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=False)),
        )

    @classmethod
    def load(cls, llama_cpp, path: Path, settings: LoadSettings, defaults: SamplingDefaults) -> "Engine":
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_batch=settings.n_batch,
                n_threads=settings.n_threads,
                verbose=settings.verbose,
            )
        except ValueError as exc:
            raise ConfigError(f"local provider: cannot load {path}: {exc}") from exc
        return cls(llama_cpp, llm, settings, defaults)

    def format_prompt(self, messages: list[dict]) -> tuple[str, list[str]]:
        result = self._formatter(messages=messages)
        stop = result.stop
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return result.prompt, stops

    def tokenize(self, prompt: str) -> list[int]:
        # As llama-cpp-python's chat handlers do: the template writes special tokens as text.
        return self.llm.tokenize(prompt.encode(), add_bos=True, special=True)

    def close(self) -> None:
        self.llm.close()


def _piece(llama_cpp, llm, token: int) -> bytes:
    """A token's bytes (llama-cpp-python's own helper returns a NUL-padded 32-byte buffer)."""
    import ctypes

    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def _chat_formatter(llama_cpp, llm, chat_format: str | None):
    """(template identity for the fingerprint, formatter) for the GGUF template or a named one."""
    formats = llama_cpp.llama_chat_format
    if chat_format is None:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError("local provider: the model file has no chat template; set chat_format")
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = formats.Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        return template, formatter
    wanted = chat_format.replace("-", "").replace("_", "").lower()
    for name in dir(formats):
        if name.startswith("format_") and name[7:].replace("_", "").lower() == wanted:
            return f"format:{chat_format}", getattr(formats, name)
    known = sorted(n[7:] for n in dir(formats) if n.startswith("format_"))
    raise ConfigError(f"local provider: unknown chat_format {chat_format!r}; known: {', '.join(known)}")
