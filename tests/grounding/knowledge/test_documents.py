"""Listing a collection's documents (the console's collection page reads this)."""

from __future__ import annotations

import pytest

from keel.grounding.knowledge import CollectionNotFound


async def test_documents_are_listed_in_id_order_with_their_chunk_counts(kb):
    await kb.add_documents("help", [
        {"id": "b-refund", "text": "Refunds take five days.", "source": "faq/refunds.md",
         "title": "Refunds", "metadata": {"lang": "en"}},
        {"id": "a-delete", "text": "# Delete\n\nOpen Settings.\n\n# Export\n\nUse Export."},
    ])
    await kb.add_documents("other", [{"id": "c", "text": "Not in help."}])
    rows, total = await kb.documents("help")
    assert total == 2
    assert [r["doc_id"] for r in rows] == ["a-delete", "b-refund"]
    delete, refund = rows
    assert delete["chunks"] >= 1 and refund["chunks"] == 1
    assert refund["source"] == "faq/refunds.md" and refund["title"] == "Refunds"
    assert refund["metadata"] == {"lang": "en"} and delete["metadata"] == {}
    assert refund["path"] is None and refund["updated_at"] > 0
    (listed,) = [c for c in await kb.collections() if c["name"] == "help"]
    assert sum(r["chunks"] for r in rows) == listed["chunks"]


async def test_documents_page_with_offset_and_limit(kb):
    await kb.add_documents("help", [{"id": f"d{n}", "text": f"Text {n}."} for n in range(5)])
    rows, total = await kb.documents("help", offset=1, limit=2)
    assert total == 5 and [r["doc_id"] for r in rows] == ["d1", "d2"]
    rows, total = await kb.documents("help", offset=10)
    assert rows == [] and total == 5


async def test_documents_of_an_unknown_collection_is_not_found(kb):
    with pytest.raises(CollectionNotFound):
        await kb.documents("nope")
