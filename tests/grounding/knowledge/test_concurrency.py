"""Concurrent writers on each store (defect 3 of issue 7): two writers creating one collection,
or writing one document id, take turns — never an IntegrityError, never a duplicated chunk,
and the collection's version covers everything that was written.

Two runtimes stand for two server processes sharing a database; each writes from worker
threads, so the database sees real concurrent transactions.
"""

from __future__ import annotations

import asyncio

import pytest

from keel.grounding.knowledge import KnowledgeBase
from tests.grounding.knowledge.conftest import make_runtime

WRITERS = 6
ROUNDS = 4


@pytest.fixture
async def kbs(db_url):
    runtimes = [make_runtime(db_url) for _ in range(2)]
    for runtime in runtimes:
        runtime.store  # opened (and migrated) one after the other, before the race
    yield [KnowledgeBase(r) for r in runtimes]
    for runtime in runtimes:
        await runtime.aclose()


async def test_concurrent_adds_to_a_new_collection_and_one_document_id(kbs):
    for round in range(ROUNDS):
        name = f"race{round}"
        results = await asyncio.gather(*(
            kbs[i % 2].add_documents(name, [
                {"id": "shared", "text": f"Shared answer, version {i}."},
                {"id": f"own{i}", "text": f"Writer {i} has its own passage."},
            ])
            for i in range(WRITERS)
        ), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []

        (row,) = [c for c in await kbs[0].collections() if c["name"] == name]
        assert row["documents"] == WRITERS + 1
        assert row["chunks"] == WRITERS + 1  # the shared id was replaced, never duplicated
        hits = await kbs[1].search(name, "shared answer", mode="fulltext", top_k=10)
        assert [h.document_id for h in hits].count("shared") == 1
        # The version the writers left is the one their combined content gives.
        version = await kbs[0].version(name)
        await kbs[0].remove_documents(name, ["no such document"])  # recomputes the version
        assert await kbs[0].version(name) == version


async def test_concurrent_ingests_of_one_folder_into_a_new_collection(kbs, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"page{i}.md").write_text(f"# Page {i}\n\nPassage number {i}.\n")
    results = await asyncio.gather(*(kbs[i % 2].ingest("folder", [docs]) for i in range(4)),
                                   return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    (row,) = await kbs[0].collections()
    assert (row["documents"], row["chunks"]) == (5, 5)


async def test_concurrent_writes_of_one_new_document_id_to_an_existing_collection(kbs):
    await kbs[0].add_documents("existing", [{"id": "first", "text": "Already here."}])
    for round in range(ROUNDS):
        results = await asyncio.gather(*(
            kbs[i % 2].add_documents("existing", [
                {"id": f"new{round}", "text": f"Written by writer {i} in round {round}."}])
            for i in range(WRITERS)
        ), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
    (row,) = await kbs[0].collections()
    assert (row["documents"], row["chunks"]) == (ROUNDS + 1, ROUNDS + 1)
