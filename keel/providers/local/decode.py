"""The token loop of the embedded engine; runs on the worker thread only.

Written on llama-cpp-python's building blocks (`Llama.eval`, llama.cpp sampler chains) rather
than `create_chat_completion`, because Keel needs three things inside the loop: a cancellation
check per token, a switch to JSON closing mode when the budget runs low (json_mode), and pieces
handed out as they are decoded. The sampler chain is built exactly as llama-cpp-python builds
it, so the same seed and settings give the same text as calling llama-cpp-python directly.
"""

from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass
from typing import Callable

from keel.errors import UnsupportedParameter
from keel.providers.local.json_mode import JsonBudget
from keel.providers.local.request import Plan, json_budget_error

# llama-cpp-python's window for repetition penalties (Llama.last_n_tokens_size).
_PENALTY_LAST_N = 64


@dataclass
class Outcome:
    text: str
    # Only OpenAI's values: "stop", or "length" when max_tokens ended the answer, including
    # JSON that closing mode finished early (its values were cut short).
    finish_reason: str
    completion_tokens: int
    # The caller left (its client disconnected): nobody reads this outcome; the HTTP edge records
    # the request as 499 on its trace. Never a finish reason, so it cannot reach a client.
    cancelled: bool = False


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
            return Outcome("", "length", 0, cancelled=True)
        llm = self._llm
        sampler = self._sampler(plan)
        # Always evaluate the whole prompt: reusing a cached prefix evaluates it in other batch
        # shapes, which may change logits in the last bits and break same seed -> same text.
        llm.reset()
        llm.eval(plan.prompt_tokens)

        budget = None
        if plan.json_reserve is not None:
            budget = JsonBudget(plan.max_tokens, plan.json_reserve, plan.tool_mode == "auto")
        # Stops cut free text only: never grammar-bound JSON (the planner refuses stop with JSON
        # formats and forced calls; with tool_choice "auto" they apply once the answer is text).
        free_text = plan.grammar is None or plan.tool_mode == "auto"
        stopper = StopFilter(plan.stop) if plan.stop and free_text else None
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        tokens: list[int] = []
        parts: list[str] = []
        finish = "length"
        closing_in_string: bool | None = None  # None: not closing; else the state the bias fits
        closer = None
        # Whether closing mode wrote something other than what the model would have written
        # (same seed): only then was the answer cut short, and the finish reason says "length".
        cut = False
        shadow = sampler  # the model's own chain, in step with what was written; None: rebuild

        def out(text: str) -> None:
            if text:
                parts.append(text)
                if emit is not None:
                    emit(text)

        while len(tokens) < plan.max_tokens:
            if cancel.is_set():
                return Outcome("".join(parts), "length", len(tokens), cancelled=True)
            if budget is not None and (closing_in_string is not None or budget.must_close(len(tokens))):
                if closing_in_string != budget.in_string:
                    closing_in_string = budget.in_string
                    closer = self._closing_sampler(plan.grammar, tokens, closing_in_string)
            if closer is None:
                token = sampler.sample(llm._ctx, -1)
            else:
                token = closer.sample(llm._ctx, -1)
                if not cut:
                    if shadow is None:
                        shadow = self._sampler(plan)
                        for done in tokens:
                            shadow.accept(done)
                    natural = shadow.sample(llm._ctx, -1)
                    if natural != token:
                        # `":` where the model picks `":"`: the same text in another split,
                        # not a cut; the model's chain then has to catch up with the closer's.
                        cut = not self._prefix_of(token, natural)
                        shadow = None
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            tokens.append(token)
            text = utf8.decode(self._pieces[token])
            if budget is not None:
                budget.feed(text)
            if stopper is not None and (budget is None or not budget.active):
                text, hit = stopper.push(text)
                if hit:
                    out(text)
                    finish = "stop"
                    break
            out(text)
            llm.eval([token])
        out((stopper.flush() if stopper else "") + utf8.decode(b"", final=True))

        if finish == "length" and budget is not None and budget.active:
            if not (budget.started and not budget.stack and not budget.in_string):
                raise json_budget_error(plan.max_tokens)
            if not cut:
                finish = "stop"  # the model closed the value itself, exactly at the limit
        elif cut:
            finish = "length"  # closing mode ended the JSON early to fit max_tokens
        return Outcome("".join(parts), finish, len(tokens))

    def _prefix_of(self, written: int, natural: int) -> bool:
        """Whether the written token's text begins the text the model would have written."""
        eog = self._lib.llama_vocab_is_eog
        if eog(self._vocab, written) or eog(self._vocab, natural):
            return False
        piece = self._pieces[written]
        return bool(piece) and self._pieces[natural].startswith(piece)

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
