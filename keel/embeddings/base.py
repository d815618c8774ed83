"""The one protocol every embedder implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict


class EmbedderOptions(BaseModel):
    """Base for an embedder's options in keel.yaml: unknown keys are a config error."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Embeddings:
    vectors: np.ndarray  # shape (n, dim), float32, each row L2-normalised
    tokens: int  # input tokens counted, for `usage.prompt_tokens`


class Embedder(Protocol):
    """Turns texts into unit vectors. `dim` and `fingerprint` are known once started; vectors
    made under different fingerprints must never be compared (stores key on it)."""

    kind: ClassVar[str]
    Options: ClassVar[type[EmbedderOptions]]
    name: str
    dim: int
    fingerprint: str

    def __init__(self, name: str, options: EmbedderOptions) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def embed(self, texts: list[str]) -> Embeddings: ...
