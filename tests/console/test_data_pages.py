"""The datasets and knowledge pages' data, without a browser: what they list, in what order,
the search's results and scores, and the HTML error pages."""

from __future__ import annotations

import re

import pytest

from keel.console.views.data import SAMPLES_PER_PAGE, highlight
from keel.evals.base import Sample
from keel.evals.dataset_store import import_dataset
from tests.grounding.knowledge.conftest import fake_factory

HTMX = {"HX-Request": "true"}


async def get(http, url, headers=None):
    async with http.get(url, headers=headers or {}, allow_redirects=False) as r:
        return r.status, await r.text()


def text_of(html: str) -> str:
    """The page's visible words, one space apart (tags dropped)."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def samples(n: int, prefix: str = "q") -> list[Sample]:
    return [Sample(id=f"{prefix}{i:03d}", input=[{"role": "user", "content": f"{prefix} question {i}"}],
                   ideal=f"answer {i}", metadata={"topic": "maths"} if i == 0 else {})
            for i in range(n)]


@pytest.fixture
def store(keel_console):
    return keel_console[1].runtime.store


# -- datasets --------------------------------------------------------------------------------


async def test_datasets_list_each_dataset_with_every_version(keel_console, http, store):
    base, _ = keel_console
    _, old, _ = import_dataset(store, "qa", samples(3), source="evals/qa-v1.jsonl")
    _, new, _ = import_dataset(store, "qa", samples(4), source="evals/qa.jsonl")
    _, other, _ = import_dataset(store, "arith", samples(2, "a"), source="evals/arith.jsonl")
    status, html = await get(http, f"{base}/console/datasets")
    assert status == 200
    assert "<title>Datasets · Keel console</title>" in html and html.count("<h1") == 1
    words = text_of(html)
    # Sorted by name; each dataset's versions newest first, with their sample counts and source.
    assert words.index("arith") < words.index("qa 2 versions")
    assert f"{new[:12]} latest 4" in words and f"{old[:12]} 3" in words
    assert words.index(new[:12]) < words.index(old[:12])
    assert "evals/qa-v1.jsonl" in words and f"{other[:12]} latest 2" in words
    assert f'href="/console/datasets/qa?version={old}"' in html


async def test_datasets_page_says_how_to_add_one_when_there_are_none(keel_console, http):
    status, html = await get(http, f"{keel_console[0]}/console/datasets")
    assert status == 200 and "No datasets yet" in html


async def test_a_dataset_page_shows_versions_and_the_latest_samples(keel_console, http, store):
    base, _ = keel_console
    _, old, _ = import_dataset(store, "qa", samples(2), source="evals/qa-v1.jsonl")
    _, new, _ = import_dataset(store, "qa", [
        Sample(id="s1", input=[{"role": "system", "content": "Be <brief>."},
                               {"role": "user", "content": "2+2?"}],
               ideal=["4", "four"], metadata={"topic": "arith"}),
    ])
    status, html = await get(http, f"{base}/console/datasets/qa")
    assert status == 200 and "<title>Dataset qa · Keel console</title>" in html
    words = text_of(html)
    assert words.index(new) < words.index(old)  # versions newest first
    assert f"Samples of {new[:12]}" in words and "1 sample." in words
    assert "system Be &lt;brief&gt;." in words and "user 2+2?" in words  # escaped
    assert "<li>4</li><li>four</li>" in html and "Metadata topic: arith" in words
    status, html = await get(http, f"{base}/console/datasets/qa?version={old[:6]}")
    assert status == 200 and f"Samples of {old[:12]}" in text_of(html)
    assert "q question 1" in html and "2+2?" not in html


async def test_a_dataset_version_pages_its_samples(keel_console, http, store):
    base, _ = keel_console
    n = SAMPLES_PER_PAGE + 3
    _, version, _ = import_dataset(store, "big", samples(n))
    status, html = await get(http, f"{base}/console/datasets/big")
    assert status == 200 and "page 1 of 2" in html
    assert "q question 0<" in html and f"q question {SAMPLES_PER_PAGE - 1}<" in html
    assert f"q question {SAMPLES_PER_PAGE}<" not in html
    assert f'/console/datasets/big?version={version}&amp;page=2"' in html
    # htmx asks for the next page: only the samples section comes back, numbered on.
    status, html = await get(http, f"{base}/console/datasets/big?version={version}&page=2",
                             HTMX)
    assert status == 200
    assert '<section id="samples"' in html and "<h1" not in html and "<html" not in html
    assert f'start="{SAMPLES_PER_PAGE + 1}"' in html and f"q question {n - 1}<" in html
    status, html = await get(http, f"{base}/console/datasets/big?page=3")
    assert status == 400 and "2 pages" in html


@pytest.mark.parametrize("url, status, message", [
    ("/console/datasets/nope", 404, "no dataset &#39;nope&#39;"),
    ("/console/datasets/qa?version=ffffffff", 404, "has no version"),
    ("/console/datasets/qa?page=0", 400, "page: expected a whole number"),
    ("/console/datasets/qa?page=two", 400, "page: expected a whole number"),
])
async def test_dataset_errors_are_html_pages_with_their_status(keel_console, http, store, url,
                                                               status, message):
    import_dataset(store, "qa", samples(2))
    got, html = await get(http, keel_console[0] + url)
    assert got == status and message in html
    assert "<h1>" in html and "Traceback" not in html and 'href="/console/datasets"' in html


# -- knowledge -------------------------------------------------------------------------------


@pytest.fixture
async def help_collection(keel_console, http):
    base, gateway = keel_console
    gateway.runtime._embedder_factory = fake_factory  # hashed bag of words, no model download
    docs = [
        {"id": "reset", "title": "Reset your password", "source": "faq/reset-password.md",
         "text": "# Account\n\n## Reset your password\n\nOpen Settings and choose Reset password. "
                 "We email you a link <valid for 1 hour>."},
        {"id": "refund", "text": "Refunds take five days.", "source": "faq/refunds.md"},
        {"id": "export", "text": "Export your data from Settings > Privacy."},
    ]
    async with http.post(f"{base}/v1/knowledge/help/documents", json={"documents": docs}) as r:
        assert r.status == 200
        return (await r.json())["version"]


async def test_knowledge_lists_collections_with_counts_and_version(keel_console, http,
                                                                   help_collection):
    status, html = await get(http, f"{keel_console[0]}/console/knowledge")
    assert status == 200 and "<title>Knowledge · Keel console</title>" in html
    words = text_of(html)
    assert f"help 3 3 minilm 256 {help_collection}" in words
    assert 'href="/console/knowledge/help"' in html


async def test_knowledge_says_how_to_ingest_when_empty(keel_console, http):
    status, html = await get(http, f"{keel_console[0]}/console/knowledge")
    assert status == 200 and "No knowledge collections yet" in html


async def test_a_collection_page_lists_its_documents(keel_console, http, help_collection):
    status, html = await get(http, f"{keel_console[0]}/console/knowledge/help")
    assert status == 200 and "<title>Knowledge: help · Keel console</title>" in html
    words = text_of(html)
    assert help_collection in words and "3 documents." in words
    # In id order, with title, source and chunk count.
    assert words.index("export —") < words.index("refund —") < words.index("reset Reset")
    assert "reset Reset your password faq/reset-password.md 1" in words
    assert 'role="search"' in html and 'name="q"' in html and '<section id="results"' in html


async def test_a_search_shows_the_hybrid_results_with_scores(keel_console, http,
                                                             help_collection):
    base, _ = keel_console
    url = f"{base}/console/knowledge/help?q=reset+password&top_k=2"
    status, html = await get(http, url)
    assert status == 200
    async with http.post(f"{base}/v1/knowledge/help/search",
                         json={"query": "reset password", "top_k": 2}) as r:
        api = (await r.json())["data"]
    # The same hits as the API's search, in its order, with its fused and per-signal scores.
    shown = re.findall(r'<span class="muted mono">([^<]+)</span>', html)
    assert shown == [hit["chunk_id"] for hit in api] and shown[0] == "reset#0"
    top = api[0]
    assert f"{top['score']:.4f}" in html
    assert f"fulltext <span class=\"mono\">{top['scores']['fulltext']:.3f}" in html
    assert f"vector <span class=\"mono\">{top['scores']['vector']:.3f}" in html
    assert "faq/reset-password.md" in html and "Account &gt; Reset your password" in html
    # Query words marked, and the chunk's own markup escaped.
    assert "<mark>Reset</mark> your <mark>password</mark>" in html
    assert "&lt;valid for 1 hour&gt;" in html and "<valid" not in html
    assert "2 results for" in text_of(html)


async def test_an_htmx_search_returns_only_the_results(keel_console, http, help_collection):
    base, _ = keel_console
    status, html = await get(http, f"{base}/console/knowledge/help?q=refunds&mode=fulltext",
                             HTMX)
    assert status == 200 and "<html" not in html and "<h1" not in html
    assert html.strip().startswith('<section id="results"')
    assert "refund#0" in html and "reset#0" not in html and "(fulltext)" in html
    status, html = await get(http, f"{base}/console/knowledge/help?q=zebra&mode=fulltext",
                             HTMX)
    assert status == 200 and "No results for" in html


@pytest.mark.parametrize("url, status, message", [
    ("/console/knowledge/nope", 404, "no knowledge collection named &#39;nope&#39;"),
    ("/console/knowledge/help?q=x&mode=fuzzy", 400, "mode: expected one of"),
    ("/console/knowledge/help?q=x&top_k=0", 400, "top_k: expected a whole number"),
    ("/console/knowledge/help?q=x&top_k=lots", 400, "top_k: expected a whole number"),
    ("/console/knowledge/help?page=-1", 400, "page: expected"),
])
async def test_knowledge_errors_are_html_pages_with_their_status(keel_console, http,
                                                                 help_collection, url, status,
                                                                 message):
    got, html = await get(http, keel_console[0] + url)
    assert got == status and message in html
    assert "<h1>" in html and "Traceback" not in html and 'href="/console/knowledge"' in html


def test_highlight_marks_query_words_and_escapes_the_rest():
    html = str(highlight("Reset <b>passwords</b> & resets; press reset.", "How do I reset a Password?"))
    assert html == ("<mark>Reset</mark> &lt;b&gt;<mark>passwords</mark>&lt;/b&gt; &amp; "
                    "<mark>resets</mark>; press <mark>reset</mark>.")
    assert str(highlight("a <i>", "")) == "a &lt;i&gt;"
    assert str(highlight("x", "<script>")) == "x"
