"""A scripted judge for grader tests, and small builders of samples and outputs."""

from __future__ import annotations

import numpy as np

from keel.embeddings import Embeddings
from keel.embeddings.fake import embed_words
from keel.evals.base import Output, Sample
from tests.data_paths import OPENAI_EVALS

SPECS = OPENAI_EVALS / "modelgraded"


class ScriptedJudge:
    """Answers each chat request with the next canned text (or raises it, if an exception);
    records every request. `vectors`, when set, are what embed() returns; otherwise the fake
    embedder's word-hash vectors."""

    def __init__(self, *replies, vectors=None) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.embedded: list[tuple[list[str], str]] = []
        self.vectors = vectors

    async def complete(self, body: dict) -> dict:
        self.requests.append(body)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, dict):  # a raw (possibly malformed) response
            return reply
        return {"object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply}}]}

    async def embed(self, texts: list[str], embedder: str = "minilm") -> Embeddings:
        self.embedded.append((texts, embedder))
        if self.vectors is not None:
            vectors = np.asarray(self.vectors, dtype=np.float32)
            return Embeddings(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), 0)
        return embed_words(texts, 64)

    @property
    def prompt(self) -> str:
        """The last request's messages as one text."""
        return "\n".join(m["content"] for m in self.requests[-1]["messages"])


def sample(question="What is the capital of France?", ideal="Paris", **fields) -> Sample:
    return Sample(id="s1", input=[{"role": "user", "content": question}], ideal=ideal, **fields)


def output(text: str | None, **fields) -> Output:
    return Output(text=text, **fields)
