"""Ingest on each store: incremental runs, prune, versions, rebuilds and API documents."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from keel.embeddings.fake import FakeEmbedder, FakeOptions
from keel.grounding.knowledge import CollectionNotFound, EmbedderMismatch, KnowledgeBase
from tests.grounding.knowledge.conftest import make_runtime
from keel.store.models import knowledge_documents as documents
from tests.grounding.knowledge.pdf import minimal_pdf


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "account.md").write_text("# Account\n\n## Delete\n\nOpen Settings, choose Delete.\n")
    (root / "billing.txt").write_text("Refunds take five days.")
    (root / "sub" / "page.html").write_text("<h1>Shipping</h1><p>Ships in two days.</p>")
    (root / "sub" / "rates.pdf").write_bytes(minimal_pdf(["Rates are 6 percent."]))
    (root / "faq.jsonl").write_text('{"id": "j1", "text": "Hours are nine to five."}\n'
                                    '{"id": "j2", "text": "Closed on Sundays."}\n')
    (root / ".hidden.md").write_text("secret")
    (root / "image.png").write_bytes(b"\x89PNG")
    return root


async def test_first_ingest_adds_every_supported_file(kb, docs):
    report = await kb.ingest("support", [docs])
    assert (report.added, report.updated, report.unchanged, report.removed) == (6, 0, 0, 0)
    assert report.chunks == 6
    (row,) = await kb.collections()
    assert row["name"] == "support" and row["documents"] == 6 and row["chunks"] == 6
    assert row["embedder"] == "minilm" and row["dim"] == 256


async def test_unchanged_files_are_skipped_and_the_version_stays(kb, docs):
    await kb.ingest("support", [docs])
    version = await kb.version("support")
    report = await kb.ingest("support", [docs])
    assert (report.added, report.updated, report.unchanged, report.chunks) == (0, 0, 6, 0)
    assert await kb.version("support") == version


async def test_a_changed_file_replaces_its_chunks(kb, docs):
    await kb.ingest("support", [docs])
    version = await kb.version("support")
    (docs / "billing.txt").write_text("Refunds take ten days.\n\nAsk support.")
    report = await kb.ingest("support", [docs])
    assert (report.added, report.updated, report.unchanged) == (0, 1, 5)
    assert await kb.version("support") != version
    hits = await kb.search("support", "refunds", mode="fulltext")
    assert [h.text for h in hits] == ["Refunds take ten days.\n\nAsk support."]


async def test_a_changed_jsonl_file_updates_only_the_changed_lines(kb, docs):
    await kb.ingest("support", [docs])
    (docs / "faq.jsonl").write_text('{"id": "j1", "text": "Hours are nine to five."}\n'
                                    '{"id": "j3", "text": "Open on holidays."}\n')
    report = await kb.ingest("support", [docs])
    assert (report.added, report.updated, report.unchanged, report.removed) == (1, 0, 5, 1)
    assert not await kb.search("support", "Sundays", mode="fulltext")


async def test_prune_removes_documents_whose_files_are_gone(kb, docs):
    await kb.ingest("support", [docs])
    (docs / "billing.txt").unlink()
    report = await kb.ingest("support", [docs])
    assert report.removed == 0  # without --prune a missing file is left alone
    assert await kb.search("support", "refunds", mode="fulltext")
    version = await kb.version("support")
    report = await kb.ingest("support", [docs], prune=True)
    assert report.removed == 1
    assert not await kb.search("support", "refunds", mode="fulltext")
    assert await kb.version("support") != version


async def test_prune_only_touches_files_under_the_given_paths(kb, docs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.md").write_text("Keep me around.")
    await kb.ingest("support", [docs, other])
    report = await kb.ingest("support", [docs / "sub"], prune=True)
    assert report.removed == 0
    assert (await kb.collections())[0]["documents"] == 7


async def test_versions_change_iff_content_changes(kb):
    await kb.add_documents("c", [{"id": "a", "text": "alpha"}])
    v1 = await kb.version("c")
    await kb.add_documents("c", [{"id": "a", "text": "alpha"}])
    assert await kb.version("c") == v1
    await kb.add_documents("c", [{"id": "a", "text": "alpha", "metadata": {"k": 1}}])
    v2 = await kb.version("c")
    assert v2 != v1
    await kb.add_documents("c", [{"id": "b", "text": "beta"}])
    v3 = await kb.version("c")
    assert v3 not in (v1, v2)
    assert await kb.remove_documents("c", ["b"]) == 1
    assert await kb.version("c") == v2  # same content, same version
    assert await kb.remove_documents("c", ["nope"]) == 0
    assert await kb.version("c") == v2


async def test_add_documents_default_ids_and_fields(kb):
    ids = await kb.add_documents("c", [
        {"text": "# Guide\n\n## Install\n\nRun pip.", "source": "https://x.test/guide",
         "metadata": {"lang": "en"}},
    ])
    assert len(ids) == 1 and len(ids[0]) == 16
    (hit,) = await kb.search("c", "pip install", top_k=1)
    assert hit.document_id == ids[0] and hit.chunk_id == f"{ids[0]}#0"
    assert hit.source == "https://x.test/guide" and hit.title == "Guide"
    assert hit.location == "Guide > Install" and hit.metadata == {"lang": "en"}


async def test_unknown_collection(kb):
    with pytest.raises(CollectionNotFound) as info:
        await kb.search("nope", "x")
    assert info.value.code == "collection_not_found" and info.value.status == 404
    with pytest.raises(CollectionNotFound):
        await kb.version("nope")


async def test_embedder_change_is_refused_until_rebuilt(db_url, docs):
    first = make_runtime(db_url)
    await KnowledgeBase(first).ingest("support", [docs])
    await first.aclose()

    def changed(name):
        embedder = FakeEmbedder(name, FakeOptions(dim=256))
        embedder.fingerprint = "fake:256:v2"
        return embedder

    second = make_runtime(db_url, changed)
    kb = KnowledgeBase(second)
    try:
        with pytest.raises(EmbedderMismatch, match="re-ingest.*--rebuild"):
            await kb.search("support", "refunds")
        assert await kb.search("support", "refunds", mode="fulltext")  # needs no embedder
        with pytest.raises(EmbedderMismatch, match="--rebuild"):
            await kb.ingest("support", [docs])
        report = await kb.ingest("support", [docs], rebuild=True)
        assert report.added == 6
        assert (await kb.collections())[0]["fingerprint"] == "fake:256:v2"
        assert await kb.search("support", "refunds")
    finally:
        await second.aclose()


async def test_progress_is_reported_per_file(kb, docs):
    seen = []
    await kb.ingest("support", [docs], progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 5) for i in range(1, 6)]  # five files, one of them JSONL


async def test_large_ingest_writes_in_batches(kb, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(30):
        (root / f"doc{i:02}.md").write_text(
            "\n\n".join(f"# Part {j}\n\n" + " ".join(f"w{i}x{j}y{k}" for k in range(150))
                        for j in range(4)))
    report = await kb.ingest("big", [root])
    assert report.added == 30 and report.chunks == 120
    (hit,) = await kb.search("big", "w7x2y10", top_k=1, mode="fulltext")
    assert hit.location == "Part 2"


async def test_document_ids_are_paths_relative_to_the_ingested_root(kb, docs, tmp_path):
    await kb.ingest("support", [docs, docs / "billing.txt"])
    with kb._engine.connect() as conn:
        ids = set(conn.execute(sa.select(documents.c.doc_id)).scalars())
    assert ids == {"account.md", "billing.txt", "sub/page.html", "sub/rates.pdf", "j1", "j2"}
    for hit in await kb.search("support", "refunds", top_k=20):
        assert str(tmp_path) not in hit.document_id + hit.chunk_id + (hit.source or "")


async def test_absolute_ids_of_an_existing_collection_become_relative_on_reingest(kb, docs):
    """Collections ingested before ids were relative had the file's absolute path as the id:
    they keep working, and the next ingest gives their documents relative ids."""
    await kb.ingest("support", [docs])
    with kb._engine.begin() as conn:  # the old form of the ids
        conn.execute(sa.update(documents).where(documents.c.doc_id == "billing.txt")
                     .values(doc_id=documents.c.path))
    (hit,) = await kb.search("support", "refunds", mode="fulltext")
    assert hit.document_id == (docs / "billing.txt").resolve().as_posix()
    report = await kb.ingest("support", [docs])
    assert (report.added, report.removed, report.unchanged) == (1, 1, 5)
    (hit,) = await kb.search("support", "refunds", mode="fulltext")
    assert hit.document_id == "billing.txt"
    assert (await kb.collections())[0]["documents"] == 6
