"""Search on each store: full-text (with hostile punctuation), vectors, hybrid, filters."""

from __future__ import annotations

import numpy as np
import pytest

from keel.errors import InvalidRequest
from keel.grounding.knowledge import KnowledgeBase
from keel.grounding.knowledge.fulltext import fts5_match
from keel.grounding.knowledge.fusion import convex_fusion, reciprocal_rank_fusion

DOCS = [
    {"id": "delete", "text": "To delete your account open Settings and choose Delete account.",
     "metadata": {"lang": "en", "year": 2024, "public": True}},
    {"id": "password", "text": "To change your password open Settings then Security.",
     "metadata": {"lang": "en", "year": 2023, "public": False}},
    {"id": "cpp", "text": "What's new in C++ 23: modules, ranges and std::print.",
     "metadata": {"lang": "en", "year": 2024, "public": True}},
    {"id": "supprimer", "text": "Pour supprimer votre compte, ouvrez les Réglages.",
     "metadata": {"lang": "fr", "year": 2024, "public": True}},
    {"id": "refunds", "text": "Refunds are paid back within five working days.",
     "metadata": {"lang": "en", "year": 2022, "public": True}},
]


@pytest.fixture
async def loaded(kb):
    await kb.add_documents("help", DOCS)
    return kb


@pytest.mark.parametrize("query", [
    "what's C++?", 'he said "hi"', "AND OR NOT", "a*b^c:d", "(unbalanced", "NEAR(x y)",
    "-minus +plus", "col:umn", "' OR 1=1 --", "naïve café",
])
async def test_fulltext_survives_punctuation_and_operators(loaded, query):
    await loaded.search("help", query, mode="fulltext")  # no syntax error, whatever it finds


async def test_fulltext_finds_by_words_and_stems(loaded):
    hits = await loaded.search("help", "what's C++", mode="fulltext")
    assert hits[0].document_id == "cpp"
    assert set(hits[0].scores) == {"fulltext"} and hits[0].score > 0
    hits = await loaded.search("help", "deleting accounts", mode="fulltext")  # stemming
    assert hits[0].document_id == "delete"


async def test_a_query_of_only_punctuation_finds_nothing(loaded):
    assert await loaded.search("help", "?!", mode="fulltext") == []


def test_fts5_match_quotes_every_word():
    assert fts5_match('what\'s "C++" AND x') == '"c" OR "x"'  # stop words dropped
    assert fts5_match("what is it") == '"what" OR "is" OR "it"'  # unless nothing else is left
    assert fts5_match("...") is None


async def test_vector_search_ranks_by_cosine(loaded):
    hits = await loaded.search("help", "change your password Security", mode="vector")
    assert hits[0].document_id == "password"
    assert set(hits[0].scores) == {"vector"}
    assert hits[0].score == hits[0].scores["vector"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert 0 < hits[0].score <= 1.0001


async def test_hybrid_scores_are_the_rrf_of_both_lists_with_fusion_rrf(loaded, runtime):
    query = "delete account settings"
    fulltext = await loaded.search("help", query, mode="fulltext", top_k=50)
    vector = await loaded.search("help", query, mode="vector", top_k=50)
    expected = reciprocal_rank_fusion({
        "fulltext": [h.chunk_id for h in fulltext], "vector": [h.chunk_id for h in vector],
    })[:3]
    hybrid = await KnowledgeBase(runtime, fusion="rrf").search("help", query, top_k=3)
    assert [(h.chunk_id, pytest.approx(h.score)) for h in hybrid] == [
        (cid, pytest.approx(score)) for cid, score in expected
    ]
    assert hybrid[0].document_id == "delete"
    assert set(hybrid[0].scores) == {"fulltext", "vector"}


async def test_hybrid_default_is_the_convex_fusion_of_both_scores(loaded):
    query = "delete account settings"
    fulltext = await loaded.search("help", query, mode="fulltext", top_k=50)
    vector = await loaded.search("help", query, mode="vector", top_k=50)  # every chunk
    expected = convex_fusion(
        {h.chunk_id: h.score for h in fulltext}, {h.chunk_id: h.score for h in vector},
        alpha=loaded.alpha,
    )[:3]
    assert loaded.fusion == "convex"
    hybrid = await loaded.search("help", query, top_k=3)
    assert [(h.chunk_id, pytest.approx(h.score)) for h in hybrid] == [
        (cid, pytest.approx(score)) for cid, score in expected
    ]
    assert hybrid[0].document_id == "delete"
    assert set(hybrid[0].scores) == {"fulltext", "vector"}


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
async def test_every_hybrid_hit_carries_its_cosine_even_if_only_full_text_found_it(
    loaded, runtime, fusion
):
    # One deep, full text only (alpha 0, vector weight 0): the hit is full text's best,
    # "delete" (a stem match), while the bag-of-words vectors rank "password" first.
    query = "deleting accounts settings"
    cosine = {h.chunk_id: h.score
              for h in await loaded.search("help", query, mode="vector", top_k=50)}
    kb = KnowledgeBase(runtime, candidates=1, fusion=fusion, alpha=0.0,
                       weights={"vector": 0.0})
    hits = await kb.search("help", query, top_k=1)
    assert [h.document_id for h in hits] == ["delete"]
    assert next(iter(cosine)) != hits[0].chunk_id  # not in the one-deep vector list
    assert hits[0].scores["vector"] == pytest.approx(cosine[hits[0].chunk_id], abs=1e-5)
    # And with the defaults, every hit carries its cosine.
    hits = await KnowledgeBase(runtime, fusion=fusion).search("help", query, top_k=5)
    assert len(hits) == len(cosine)
    for hit in hits:
        assert hit.scores["vector"] == pytest.approx(cosine[hit.chunk_id], abs=1e-5)


def test_an_unknown_fusion_is_refused(runtime):
    with pytest.raises(ValueError, match="fusion"):
        KnowledgeBase(runtime, fusion="max")
    with pytest.raises(ValueError, match="alpha"):
        KnowledgeBase(runtime, alpha=1.5)


async def test_filters_apply_to_both_methods_before_top_k(loaded):
    for mode in ("hybrid", "fulltext", "vector"):
        hits = await loaded.search("help", "account settings", mode=mode, top_k=5,
                                   filters={"lang": "fr"})
        assert [h.document_id for h in hits] == ["supprimer"] or (
            mode == "fulltext" and hits == []
        )
        hits = await loaded.search("help", "open settings", mode=mode, top_k=1,
                                   filters={"year": 2023})
        assert [h.document_id for h in hits] == ["password"]
        hits = await loaded.search("help", "open settings", mode=mode, top_k=5,
                                   filters={"public": False, "lang": "en"})
        assert [h.document_id for h in hits] == ["password"]
        assert await loaded.search("help", "settings", mode=mode,
                                   filters={"lang": "de"}) == []


@pytest.mark.parametrize("kwargs, param", [
    ({"mode": "semantic"}, "mode"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"filters": {"bad key'": 1}}, "filters"),
    ({"filters": {"k": [1]}}, "filters"),
    ({"filters": ["k"]}, "filters"),
])
async def test_bad_arguments_name_the_field(loaded, kwargs, param):
    with pytest.raises(InvalidRequest) as info:
        await loaded.search("help", "x", **kwargs)
    assert info.value.param == param


async def test_vector_cache_follows_the_collection_version(loaded):
    await loaded.search("help", "refunds", mode="vector")
    cache = loaded._indexes
    info_before = dict(cache._indexes)
    await loaded.search("help", "refunds", mode="vector")
    assert dict(cache._indexes) == info_before  # same version: same loaded index
    await loaded.add_documents("help", [{"id": "new", "text": "Gift cards never expire."}])
    hits = await loaded.search("help", "gift cards expire", mode="vector", top_k=1)
    assert hits[0].document_id == "new"
    (version, index), = cache._indexes.values()
    assert version == await loaded.version("help") and len(index) == len(DOCS) + 1


def test_exact_index_topk_and_allowed():
    from keel.store.vectors import ExactIndex

    matrix = np.eye(4, dtype=np.float32)
    index = ExactIndex(np.array([10, 11, 12, 13]), matrix)
    query = np.array([0.1, 0.9, 0.5, 0], dtype=np.float32)
    assert [cid for cid, _ in index.search(query, 2)] == [11, 12]
    assert [cid for cid, _ in index.search(query, 2, allowed=np.array([10, 13]))] == [10, 13]
    assert index.search(query, 5, allowed=np.array([], dtype=np.int64)) == []


def test_exact_index_similarities_of_given_ids():
    from keel.store.vectors import ExactIndex

    index = ExactIndex(np.array([13, 10, 12, 11]), np.eye(4, dtype=np.float32))  # any order
    query = np.array([0.1, 0.9, 0.5, 0.3], dtype=np.float32)
    assert index.similarities(query, [10, 13, 99]) == pytest.approx({10: 0.9, 13: 0.1})
    assert index.similarities(query, []) == {}
    assert ExactIndex(np.array([], dtype=np.int64), np.zeros((0, 4))).similarities(
        query, [1]) == {}
