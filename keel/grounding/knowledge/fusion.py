"""Fusing the full-text and vector lists into one ranking: by score (default) or by rank.

Convex combination (`convex`, the default):

    score(d) = α · cosine(d) + (1 − α) · bm25'(d)

over the union of both candidate lists. Every candidate has its cosine (a dot product with its
stored vector, found by full text or not); bm25' is the full-text score min-max normalised over
this query's full-text list, so the list's best is 1 and its worst 0, and a candidate the
full-text list does not hold gets 0 — its real bm25 is no higher than the list's worst. Cosine
stays raw: it is already on a fixed scale, and normalising it per query would make a weak best
match look as good as a strong one. α = 0.8 was chosen on a tuning split of BoolQ questions
disjoint from the one reported (bench/retrieval.py).

Reciprocal rank fusion (`rrf`): score(d) = Σ_lists weight / (k + rank of d in that list),
ranks from 1 — ranks, not raw scores, so the scales never meet; k = 60 is the value from
Cormack, Clarke and Büttcher (2009). It throws away how far apart the scores are, which is
why it lost to vectors alone on BoolQ when the vector list was much the stronger.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

RRF_K = 60
CONVEX_ALPHA = 0.8
FUSIONS = ("convex", "rrf")


def reciprocal_rank_fusion(
    rankings: dict[str, Sequence[Hashable]],
    *,
    k: int = RRF_K,
    weights: dict[str, float] | None = None,
) -> list[tuple[Hashable, float]]:
    """(item, fused score) best first; ties keep the order items were first seen in."""
    scores: dict[Hashable, float] = {}
    for name, ranking in rankings.items():
        weight = 1.0 if weights is None else weights.get(name, 1.0)
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def min_max(scores: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """Scores rescaled to [0, 1] over this set (all 1 when they are all equal)."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high <= low:
        return {item: 1.0 for item in scores}
    return {item: (s - low) / (high - low) for item, s in scores.items()}


def convex_fusion(
    fulltext: Mapping[Hashable, float],
    cosine: Mapping[Hashable, float],
    *,
    alpha: float = CONVEX_ALPHA,
) -> list[tuple[Hashable, float]]:
    """(item, α·cosine + (1−α)·min-max bm25) best first, over the items of `cosine`, which
    must hold every candidate (both lists); `fulltext` is the full-text list's raw scores."""
    lexical = min_max(fulltext)
    fused = {item: alpha * cos + (1 - alpha) * lexical.get(item, 0.0)
             for item, cos in cosine.items()}
    return sorted(fused.items(), key=lambda pair: -pair[1])
