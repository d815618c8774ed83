"""Console pages: eval datasets and knowledge collections.

    GET /console/datasets                       each dataset, its versions and sample counts
    GET /console/datasets/{name}?version=&page= its versions and one version's samples
    GET /console/knowledge                      collections: documents, chunks, embedder, version
    GET /console/knowledge/{collection}?q=&mode=&top_k=&page=
                                                its documents, and the hybrid search's results

Datasets read through keel.evals.dataset_store (as `keel eval dataset` does), collections
through the runtime's KnowledgeBase (as `keel collections` and POST /v1/knowledge/.../search
do), so the page shows what the CLI and the API would. A search from the page's form is an
htmx GET that swaps only the results; the same URL loaded whole renders the full page.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from markupsafe import Markup, escape
from yarl import URL

from keel.api.appkeys import GATEWAY
from keel.console.render import error_page as render_error
from keel.console.render import render, render_fragment
from keel.errors import InvalidRequest, KeelError
from keel.evals import dataset_store
from keel.grounding.knowledge import knowledge_base
from keel.grounding.knowledge.search import MAX_TOP_K, MODES

SAMPLES_PER_PAGE = 25
DOCUMENTS_PER_PAGE = 50
DEFAULT_TOP_K = 5
# Words too common to be worth marking in a passage.
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from",
    "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or",
    "our", "so", "that", "the", "their", "then", "there", "these", "this", "to", "was", "we",
    "what", "when", "where", "which", "who", "why", "will", "with", "you", "your",
})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/datasets", dataset_list, name="console-datasets")
    router.add_get("/console/datasets/{name:.+}", dataset_page, name="console-dataset")
    router.add_get("/console/knowledge", collection_list, name="console-knowledge")
    router.add_get("/console/knowledge/{collection}", collection_page,
                   name="console-collection")


# -- datasets --------------------------------------------------------------------------------


async def dataset_list(request: web.Request) -> web.Response:
    store = _store(request)
    datasets = await asyncio.to_thread(dataset_store.list_datasets, store)
    versions = {}
    for row in datasets:
        versions[row["name"]] = await asyncio.to_thread(
            dataset_store.dataset_versions, store, row["name"])
    return render(request, "datasets.html", title="Datasets", datasets=datasets,
                  versions=versions)


async def dataset_page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    version = request.query.get("version") or None
    store = _store(request)
    try:
        page = _page_number(request)
        versions = await asyncio.to_thread(dataset_store.dataset_versions, store, name)
        meta, samples = await asyncio.to_thread(dataset_store.get_dataset, store, name, version)
    except KeelError as exc:
        return error_page(request, exc, back=("/console/datasets", "All datasets"))
    pages = max(1, -(-len(samples) // SAMPLES_PER_PAGE))
    if page > pages:
        return error_page(request, InvalidRequest(
            f"page {page}: this version has {pages} page{'s' if pages > 1 else ''} of samples",
            param="page"), back=(_dataset_url(name, meta["version"]), name))
    shown = samples[(page - 1) * SAMPLES_PER_PAGE: page * SAMPLES_PER_PAGE]
    context = {"name": name, "meta": meta, "versions": versions,
               "latest": versions[0]["version"], "samples": shown,
               "first": (page - 1) * SAMPLES_PER_PAGE, "page": page, "pages": pages,
               "url": _dataset_url(name, meta["version"])}
    if _is_fragment(request):
        return _fragment("datasets_samples.html", **context)
    return render(request, "datasets_detail.html", title=f"Dataset {name}", **context)


def _dataset_url(name: str, version: str) -> str:
    return str(URL.build(path=f"/console/datasets/{name}", query={"version": version}))


# -- knowledge -------------------------------------------------------------------------------


async def collection_list(request: web.Request) -> web.Response:
    rows = await _kb(request).collections()
    return render(request, "knowledge.html", title="Knowledge", collections=rows)


async def collection_page(request: web.Request) -> web.Response:
    name = request.match_info["collection"]
    kb = _kb(request)
    back = ("/console/knowledge", "All collections")
    try:
        search = _search_params(request)
        page = _page_number(request)
        documents, total = await kb.documents(
            name, offset=(page - 1) * DOCUMENTS_PER_PAGE, limit=DOCUMENTS_PER_PAGE)
    except KeelError as exc:
        return error_page(request, exc, back=back)
    (info,) = [c for c in await kb.collections() if c["name"] == name] or [None]
    if info is None:  # dropped between the two reads
        raise web.HTTPFound("/console/knowledge")
    results, search_error = None, None
    if search["q"]:
        try:
            hits = await kb.search(name, search["q"], top_k=search["top_k"],
                                   mode=search["mode"])
            results = [_result(hit, search["q"]) for hit in hits]
        except KeelError as exc:  # e.g. the embedder changed since the collection was built
            if not _is_fragment(request) and exc.status != 409:
                return error_page(request, exc, back=back)
            search_error = exc.message
    context = {"collection": info, "search": search, "results": results,
               "search_error": search_error, "modes": MODES, "max_top_k": MAX_TOP_K}
    if _is_fragment(request):
        return _fragment("knowledge_results.html", **context)
    pages = max(1, -(-total // DOCUMENTS_PER_PAGE))
    return render(request, "knowledge_detail.html", title=f"Knowledge: {name}",
                  documents=documents, total=total, page=page, pages=pages,
                  first=(page - 1) * DOCUMENTS_PER_PAGE, **context)


def _search_params(request: web.Request) -> dict[str, Any]:
    q = request.query.get("q", "").strip()
    mode = request.query.get("mode") or "hybrid"
    if mode not in MODES:
        raise InvalidRequest(f"mode: expected one of {', '.join(MODES)}, not {mode!r}",
                             param="mode")
    raw = request.query.get("top_k") or str(DEFAULT_TOP_K)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_TOP_K:
        raise InvalidRequest(f"top_k: expected a whole number from 1 to {MAX_TOP_K}, "
                             f"not {raw!r}", param="top_k")
    return {"q": q, "mode": mode, "top_k": int(raw)}


def _result(hit, query: str) -> dict[str, Any]:
    return {"hit": hit, "html": highlight(hit.text, query)}


def highlight(text: str, query: str) -> Markup:
    """`text` as escaped HTML with the query's words (and words they begin) in <mark>."""
    terms = sorted({w for w in re.findall(r"\w+", query.lower())
                    if len(w) > 1 and w not in _STOPWORDS}, key=len, reverse=True)
    if not terms:
        return escape(text)
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, terms)) + r")\w*", re.IGNORECASE)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(escape(text[last:match.start()]))
        out.append(Markup("<mark>%s</mark>") % match.group(0))
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


# -- shared ----------------------------------------------------------------------------------


def error_page(request: web.Request, exc: KeelError,
               back: tuple[str, str] = ("/console", "Console home")) -> web.Response:
    """A KeelError as an HTML page with its status: what was wrong, and a way back."""
    title = {400: "Bad request", 404: "Not found", 409: "Conflict"}.get(exc.status, "Error")
    return render_error(request, exc.status, title, exc.message, [back])


def _page_number(request: web.Request) -> int:
    raw = request.query.get("page") or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidRequest(f"page: expected a whole number from 1, not {raw!r}", param="page")
    return int(raw)


def _is_fragment(request: web.Request) -> bool:
    """An htmx swap of one section (not a boosted link, not a history restore: those want the
    whole page)."""
    headers = request.headers
    return ("HX-Request" in headers and "HX-Boosted" not in headers
            and "HX-History-Restore-Request" not in headers)


def _fragment(template: str, **context: Any) -> web.Response:
    return web.Response(text=render_fragment(template, **context), content_type="text/html",
                        charset="utf-8")


def _store(request: web.Request):
    return request.app[GATEWAY].runtime.store


def _kb(request: web.Request):
    return knowledge_base(request.app[GATEWAY].runtime)
