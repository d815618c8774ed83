"""The token loop of the embedded engine; runs on the worker thread only.

Written on llama-cpp-python's building blocks (`Llama.eval`, llama.cpp sampler chains) rather
than `create_chat_completion`, because Keel needs three things inside the loop: a cancellation
check per token, a switch to JSON closing mode when the budget runs low (local_json), and pieces
handed out as they are decoded. The sampler chain is built exactly as llama-cpp-python builds
it, so the same seed and settings give the same text as calling llama-cpp-python directly.
"""

from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass
from typing import Callable

from keel.errors import UnsupportedParameter
from keel.providers.local_json import JsonBudget
from keel.providers.local_request import Plan, json_budget_error

# llama-cpp-python's window for repetition penalties (Llama.last_n_tokens_size).
_PENALTY_LAST_N = 64


@dataclass
class Outcome:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int


class StopFilter:
    """Cuts text at the first stop string, holding back what may be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""

    def push(self, text: str) -> tuple[str, bool]:
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[: min(hits)], True
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:k]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class Decoder:
    """Generates for one loaded `Llama`; not thread-safe, like llama.cpp itself."""

    def __init__(
        self, llama_cpp, llm, pieces: list[bytes], closing_bias: tuple[dict[int, float], dict[int, float]]
    ) -> None:
        self._lib = llama_cpp
        self._llm = llm
        self._vocab = llm._model.vocab
        self._n_vocab = llm.n_vocab()
        self._pieces = pieces
        self._closing_bias = closing_bias

    def run(
        self, plan: Plan, cancel: threading.Event, emit: Callable[[str], None] | None = None
    ) -> Outcome:
        if cancel.is_set():  # the caller left while this request waited in the queue
            return Outcome("", "cancelled", 0)
        llm = self._llm
        sampler = self._sampler(plan)
        # Always evaluate the whole prompt: reusing a cached prefix evaluates it in other batch
        # shapes, which may change logits in the last bits and break same seed -> same text.
        llm.reset()
        llm.eval(plan.prompt_tokens)

        budget = None
        if plan.json_reserve is not None:
            budget = JsonBudget(plan.max_tokens, plan.json_reserve, plan.tool_mode == "auto")
        stopper = StopFilter(plan.stop) if plan.stop and plan.grammar is None else None
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        tokens: list[int] = []
        parts: list[str] = []
        finish = "length"
        closing_in_string: bool | None = None  # None: not closing; else the state the bias fits

        def out(text: str) -> None:
            if text:
                parts.append(text)
                if emit is not None:
                    emit(text)

        while len(tokens) < plan.max_tokens:
            if cancel.is_set():
                return Outcome("".join(parts), "cancelled", len(tokens))
            if budget is not None and (closing_in_string is not None or budget.must_close(len(tokens))):
                if closing_in_string != budget.in_string:
                    closing_in_string = budget.in_string
                    sampler = self._closing_sampler(plan.grammar, tokens, closing_in_string)
            token = sampler.sample(llm._ctx, -1)
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            tokens.append(token)
            text = utf8.decode(self._pieces[token])
            if budget is not None:
                budget.feed(text)
            if stopper is not None:
                text, hit = stopper.push(text)
                if hit:
                    out(text)
                    finish = "stop"
                    break
            out(text)
            llm.eval([token])
        out((stopper.flush() if stopper else "") + utf8.decode(b"", final=True))

        if finish == "length" and budget is not None and budget.active:
            if budget.started and not budget.stack and not budget.in_string:
                finish = "stop"  # the top-level value closed exactly at the limit: complete
            else:
                raise json_budget_error(plan.max_tokens)
        return Outcome("".join(parts), finish, len(tokens))

    def _sampler(self, plan: Plan):
        """The chain llama-cpp-python's `Llama._init_sampler` builds, plus Keel's extras."""
        from llama_cpp._internals import LlamaSampler

        sampler = LlamaSampler()
        if plan.logit_bias:
            sampler.add_logit_bias(self._n_vocab, plan.logit_bias)
        sampler.add_penalties(
            self._n_vocab,
            _PENALTY_LAST_N,
            plan.repeat_penalty,
            plan.frequency_penalty,
            plan.presence_penalty,
        )
        if plan.grammar is not None:
            self._add_grammar(sampler, plan.grammar)
        if plan.temperature == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(plan.top_k)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(plan.top_p, 1)
            sampler.add_min_p(plan.min_p, 1)
            sampler.add_temp(plan.temperature)
            sampler.add_dist(plan.seed)
        return sampler

    def _closing_sampler(self, grammar: str, generated: list[int], in_string: bool):
        """Greedy towards closers, under a fresh copy of the grammar brought up to date."""
        from llama_cpp._internals import LlamaSampler

        sampler = LlamaSampler()
        sampler.add_logit_bias(self._n_vocab, self._closing_bias[in_string])
        self._add_grammar(sampler, grammar)
        sampler.add_greedy()
        for token in generated:
            sampler.accept(token)
        return sampler

    def _add_grammar(self, sampler, grammar: str) -> None:
        lib = self._lib
        grammar_sampler = lib.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not grammar_sampler:  # NULL: llama.cpp could not parse it
            raise UnsupportedParameter(
                "the local engine could not build a grammar for this response format",
                param="response_format",
            )
        lib.llama_sampler_chain_add(sampler.sampler, grammar_sampler)
