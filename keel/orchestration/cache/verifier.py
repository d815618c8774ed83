"""The semantic cache's verifier: is a cached question really the same question as this one?

Cosine similarity of MiniLM embeddings ranks candidates well but cannot tell "How do I delete
my account?" from "How do I delete my post?" (cosine ~0.8, like many true paraphrases). The
cache therefore serves an entry only when (1) the cosine reaches `candidate_threshold` and (2)
this verifier accepts the pair. The verifier is a small model trained on labelled Quora
question pairs by `python -m keel.orchestration.cache.train_verifier` (see
docs/cache-verifier.md for the data, the features and the measured precision/recall):

- vetoes: a negation on one side only, or numbers on both sides that differ, refuse the pair
  outright (Quora's labels alone would let some through);
- inputs: the cosine and pair features embeddings miss: differing content words (count,
  share, a substitution), negation mismatch, numbers that differ, capitalised names that
  differ, a different question word (how/why/when…), word and bigram Jaccard, length ratio;
  and, for weights that carry an IDF table of their training questions (the shipped ones do),
  the same word differences weighted by how rare the words are (IDF_FEATURES);
- model: a logistic regression or a small MLP (chosen on validation), numpy only: ~0.1 ms a
  pair. By default it reads only these features (the embeddings' |u−v| and u∘v did not help
  on validation; `--vectors` tries them, and such weights need the vectors at lookup).

Its weights record the fingerprint of the embedder their vectors came from: vectors of any
other embedder mean nothing to them, so `check_embedder` refuses one (`ConfigError`).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keel.embeddings.heads import head_arrays, head_from, head_scores
from keel.errors import ConfigError

WEIGHTS = Path(__file__).parent / "data" / "verifier.npz"

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?|[^\sA-Za-z0-9]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
NEGATIONS = frozenset({
    'not', 'no', 'never', 'none', 'nobody', 'nothing', 'nowhere', 'neither', 'nor', 'without',
    'cannot', 'cant', "can't", "don't", 'dont', "doesn't", 'doesnt', "didn't", 'didnt', "isn't",
    'isnt', "aren't", 'arent', "wasn't", 'wasnt', "weren't", 'werent', "won't", 'wont',
    "wouldn't", 'wouldnt', "shouldn't", 'shouldnt', "couldn't", 'couldnt', "haven't", 'havent',
    "hasn't", 'hasnt', "hadn't", 'hadnt', "mustn't", "n't"
})
QUESTION_WORDS = ("what", "why", "how", "when", "where", "who", "which", "whom", "whose")
# Function words: their differences rarely change what is asked ("a" vs "the", "is" vs "are").
STOPWORDS = frozenset({
    'a', 'an', 'the', 'is', 'are', 'was', 'were', 'be', 'been', 'being', 'am', 'do', 'does',
    'did', 'to', 'of', 'in', 'on', 'at', 'for', 'from', 'by', 'with', 'and', 'or', 'as', 'it',
    'its', 'this', 'that', 'these', 'those', 'i', 'me', 'my', 'we', 'our', 'you', 'your', 'he',
    'she', 'they', 'them', 'their', 'his', 'her', 'what', 'which', 'who', 'whom', 'how', 'why',
    'when', 'where', 'whose', 'can', 'could', 'should', 'would', 'will', 'shall', 'may',
    'might', 'must', 'have', 'has', 'had', 'there', 'here', 'so', 'if', 'than', 'then', 'about',
    'into', 'onto', 'over', 'up', 'out', 'some', 'any', 'get', 'one', 'ones', 's', '?', '.',
    ',', '!', ':', ';', "'", '"', '(', ')', '-', '/', 'best', 'good', 'way', 'ways'
})
HAND_FEATURES = (
    "cosine",
    "jaccard",
    "bigram_jaccard",
    "length_ratio",
    "differing_words",
    "differing_share",
    "negation_mismatch",
    "numbers_differ",
    "names_differ",
    "question_word_differs",
    "one_side_only_words",
)
# Features weighted by how rare a word is in the training questions (inverse document
# frequency): a differing "the" matters less than a differing "Kubernetes". Only weights that
# carry an IDF table (`Verifier.idf`) read them; they follow HAND_FEATURES in the inputs.
IDF_FEATURES = (
    "idf_jaccard",
    "idf_rarest_differing",
    "idf_substitution",
    "idf_differing_sum",
)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _stem(word: str) -> str:
    """A crude suffix strip, so that "released" and "release", "what's" and "what" match."""
    word = word.casefold().replace("’", "'")
    word = word.removesuffix("'s")
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    return word[:-1] if len(word) > 4 and word.endswith("e") else word


# Question words that name what is asked for, as the noun a paraphrase uses instead
# ("When was X released?" / "X release date?").
ASKS_FOR = {"when": "date", "time": "date"}


def _lower(tokens: list[str]) -> set[str]:
    return {t.casefold().replace("’", "'") for t in tokens}


def _content(tokens: list[str]) -> set[str]:
    stems = {_stem(t) for t in tokens}
    return {ASKS_FOR.get(t, t) for t in stems} - STOPWORDS


def _names(tokens: list[str]) -> set[str]:
    """Names, roughly: capitalised tokens, except a sentence's first word unless it has
    capitals past its first letter ("GPT", "iPhone"); case-folded."""
    return {
        t.casefold()
        for i, t in enumerate(tokens)
        if any(c.isupper() for c in t[i == 0 :]) and t.casefold() not in STOPWORDS
    }


def _bigrams(tokens: list[str]) -> set[tuple[str, str]]:
    low = [t.casefold() for t in tokens if t.isalnum()]
    return set(itertools.pairwise(low))


def _question_word(tokens: list[str]) -> str:
    for t in tokens:
        if t.casefold() in QUESTION_WORDS:
            return t.casefold()
    return ""


def pair_features(a: str, b: str, cosine: float) -> np.ndarray:
    """The hand-made features of a pair (symmetric in a and b), in HAND_FEATURES order."""
    ta, tb = words(a), words(b)
    ca, cb = _content(ta), _content(tb)
    union = ca | cb
    differing = ca ^ cb
    la, lb = _lower(ta), _lower(tb)
    ba, bb = _bigrams(ta), _bigrams(tb)
    na, nb = set(_NUMBER.findall(a)), set(_NUMBER.findall(b))
    qa, qb = _question_word(ta), _question_word(tb)
    only = min(len(ca - cb), len(cb - ca))  # both sides add something: a substitution
    return np.array(
        [
            cosine,
            len(ca & cb) / len(union) if union else 1.0,
            len(ba & bb) / len(ba | bb) if ba | bb else 1.0,
            min(len(ta), len(tb)) / max(len(ta), len(tb), 1),
            min(len(differing), 10) / 10,
            len(differing) / len(union) if union else 0.0,
            float(bool(la & NEGATIONS) != bool(lb & NEGATIONS)),
            float(na != nb),
            float(_names(ta) != _names(tb)),
            float(bool(qa and qb and qa != qb)),
            min(only, 5) / 5,
        ],
        dtype=np.float32,
    )


def idf_table(questions, min_count: int = 2) -> tuple[dict[str, float], float]:
    """({content word: idf}, idf of any other word) over `questions` (training questions only):
    idf = ln((n + 1) / (df + 1)); words seen fewer than `min_count` times are left out (they
    get the default, the idf of a word seen once), which keeps the table small."""
    df: dict[str, int] = {}
    n = 0
    for q in questions:
        n += 1
        for w in _content(words(q)):
            df[w] = df.get(w, 0) + 1
    default = float(np.log((n + 1) / 2))
    return {w: float(np.log((n + 1) / (c + 1))) for w, c in df.items() if c >= min_count}, default


def idf_features(a: str, b: str, idf: dict[str, float], default: float) -> np.ndarray:
    """IDF_FEATURES of a pair (symmetric): IDF-weighted Jaccard of content words, the rarest
    differing word, the rarer side of a substitution, and the summed IDF of differing words."""
    ca, cb = _content(words(a)), _content(words(b))
    weight = lambda ws: [idf.get(w, default) for w in ws]
    union, common, differing = ca | cb, ca & cb, ca ^ cb
    rarest = lambda ws: max(weight(ws), default=0.0)
    return np.array(
        [
            sum(weight(common)) / sum(weight(union)) if union else 1.0,
            rarest(differing) / default,
            min(rarest(ca - cb), rarest(cb - ca)) / default,
            min(sum(weight(differing)), 30.0) / 30.0,
        ],
        dtype=np.float32,
    )


def text_features(a: str, b: str, cosine: float,
                  idf: tuple[dict[str, float], float] | None = None) -> np.ndarray:
    """HAND_FEATURES, then IDF_FEATURES when an IDF table (table, default) is given."""
    hand = pair_features(a, b, cosine)
    return hand if idf is None else np.concatenate([hand, idf_features(a, b, *idf)])


def veto(a: str, b: str) -> str | None:
    """A reason to refuse the pair whatever the model says: one question negated and the other
    not, or both naming numbers that differ ("in 2010" / "in 2020"). Quora's labels call some
    such pairs duplicates ("Why can't I sleep?" / "Why is it hard to sleep?"); a cache serving
    the answer to the opposite question is worse than a miss (docs/cache-verifier.md has the
    cost in recall)."""
    la, lb = _lower(words(a)), _lower(words(b))
    if bool(la & NEGATIONS) != bool(lb & NEGATIONS):
        return "negation"
    na, nb = set(_NUMBER.findall(a)), set(_NUMBER.findall(b))
    if na and nb and na != nb:
        return "numbers"
    return None


def model_inputs(u: np.ndarray, v: np.ndarray, hand: np.ndarray) -> np.ndarray:
    """Rows [|u−v|, u∘v, hand features] for vectors u, v (n, dim) and hand features (n, k)."""
    return np.hstack([np.abs(u - v), u * v, hand]).astype(np.float32)


@dataclass
class Verifier:
    """Scores a (query, cached query) pair; accepts it when the score reaches `threshold`."""

    w: np.ndarray  # (hidden,) or (inputs,) without a hidden layer
    b: float
    threshold: float  # chosen on the validation split for precision (see meta)
    candidate_threshold: float  # cosine below which a candidate is not even verified
    fingerprint: str  # the embedder the training vectors came from
    mean: np.ndarray  # input standardisation, fitted on train
    scale: np.ndarray
    w1: np.ndarray | None = None  # (inputs, hidden); None: a logistic regression
    b1: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    idf: tuple[dict[str, float], float] | None = None  # (word -> idf, default): IDF_FEATURES

    @classmethod
    def load(cls, path: Path | str = WEIGHTS) -> Verifier:
        try:
            with np.load(path, allow_pickle=False) as f:
                idf = None
                if "idf_words" in f:
                    idf = (dict(zip(f["idf_words"].tolist(),
                                    f["idf_values"].astype(np.float32).tolist())),
                           float(f["idf_default"]))
                return cls(
                    **head_from(f),
                    threshold=float(f["threshold"]),
                    candidate_threshold=float(f["candidate_threshold"]),
                    fingerprint=str(f["fingerprint"]),
                    mean=f["mean"].astype(np.float32),
                    scale=f["scale"].astype(np.float32),
                    meta=json.loads(str(f["meta"])),
                    idf=idf,
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cache verifier: cannot read weights {path}: {exc}") from None

    def save(self, path: Path | str) -> None:
        table = {}
        if self.idf is not None:
            words_ = sorted(self.idf[0])
            table = {
                "idf_words": np.array(words_, dtype=np.str_),
                "idf_values": np.array([self.idf[0][w] for w in words_], np.float16),
                "idf_default": np.float64(self.idf[1]),
            }
        np.savez_compressed(
            path,
            **head_arrays(self.w, self.b, self.w1, self.b1),
            threshold=np.float64(self.threshold),
            candidate_threshold=np.float64(self.candidate_threshold),
            fingerprint=np.str_(self.fingerprint),
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            meta=np.str_(json.dumps(self.meta)),
            **table,
        )

    def check_embedder(self, fingerprint: str) -> None:
        """Refuse vectors from an embedder other than the one the weights were trained on."""
        if fingerprint != self.fingerprint:
            raise ConfigError(
                f"cache verifier: its weights were trained on embeddings {self.fingerprint!r} "
                f"but the cache's embedder makes {fingerprint!r}; use the embedded minilm "
                "(default options) or retrain: python -m keel.orchestration.cache.train_verifier"
            )

    def scores(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities that pairs are duplicates, from `model_inputs` rows."""
        return head_scores((inputs - self.mean) / self.scale, self.w, self.b, self.w1, self.b1)

    @property
    def uses_vectors(self) -> bool:
        """Whether the model reads the two embeddings (trained with --vectors) or only the
        hand-made features."""
        return self.mean.shape[0] != self.text_feature_count

    @property
    def text_feature_count(self) -> int:
        return len(HAND_FEATURES) + (len(IDF_FEATURES) if self.idf is not None else 0)

    def text_features(self, query: str, cached_query: str, similarity: float) -> np.ndarray:
        """The features this model reads from the two texts (and the cosine)."""
        return text_features(query, cached_query, similarity, self.idf)

    def score(
        self, query: str, cached_query: str, similarity: float,
        query_vector: np.ndarray | None = None, cached_vector: np.ndarray | None = None,
    ) -> float:
        hand = self.text_features(query, cached_query, similarity)[None, :]
        if not self.uses_vectors:
            return float(self.scores(hand)[0])
        if query_vector is None or cached_vector is None:
            raise ValueError("these verifier weights need both questions' vectors")
        u = np.asarray(query_vector, np.float32)[None, :]
        v = np.asarray(cached_vector, np.float32)[None, :]
        return float(self.scores(model_inputs(u, v, hand))[0])

    def accept(
        self, query: str, cached_query: str, similarity: float, *,
        query_vector: np.ndarray | None = None, cached_vector: np.ndarray | None = None,
    ) -> tuple[bool, float]:
        """(serve the cached answer?, score). Never below `candidate_threshold` nor on a
        `veto`; identical questions (case and spacing aside) always pass. The vectors are needed only by
        weights trained with --vectors (`uses_vectors`)."""
        if " ".join(query.split()).casefold() == " ".join(cached_query.split()).casefold():
            return True, 1.0
        if similarity < self.candidate_threshold or veto(query, cached_query):
            return False, 0.0
        s = self.score(query, cached_query, similarity, query_vector, cached_vector)
        return s >= self.threshold, s


_shipped: Verifier | None = None


def load_verifier(path: Path | str | None = None) -> Verifier:
    """The verifier in `path`, or the shipped one (loaded once per process)."""
    global _shipped
    if path is not None:
        return Verifier.load(path)
    if _shipped is None:
        _shipped = Verifier.load(WEIGHTS)
    return _shipped
