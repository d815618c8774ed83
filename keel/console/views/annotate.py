"""Console pages: annotation queues, graded in the browser as `keel eval annotate` grades them.

    GET  /console/annotate                      the queues: eval runs, datasets, traces
    GET  /console/annotate/run/{run_id}         a run's outputs (?variant=), one item a page
    GET  /console/annotate/dataset/{name}       a dataset's samples (?version=)
    GET  /console/annotate/traces               traces with feedback (?feedback=any|down|up)
    POST (each of the three)                    save one answer: grade, ideal, comment

An item is named by `s` (sample id), `v` (variant) and `r` (repeat) in the query; without
them the page shows the first item this annotator has not done. Saving goes through
keel.evals.annotate.save_annotation, the same rows the CLI writes, so `keel eval annotate`,
`keel eval calibrate` and these pages read each other's work. The annotator is the signed-in
key's name (with auth off, `default_annotator()`, as in the CLI). An htmx POST answers with the
next item's panel; a plain form POST redirects to it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.auth import principal_of
from keel.console.render import render, render_fragment
from keel.console.views.evals import error_page
from keel.errors import InvalidRequest, KeelError, NotFound

FEEDBACK = ("any", "down", "up")
GRADES = (("pass", "p"), ("fail", "f"), ("1", "1"), ("2", "2"), ("3", "3"), ("4", "4"),
          ("5", "5"))
MAX_TEXT = 20_000


class ItemNotFound(NotFound):
    code = "item_not_found"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/annotate", queues, name="console-annotate")
    router.add_get("/console/annotate/traces", item_page, name="console-annotate-traces")
    router.add_post("/console/annotate/traces", save)
    router.add_get("/console/annotate/run/{run_id}", item_page, name="console-annotate-run")
    router.add_post("/console/annotate/run/{run_id}", save)
    router.add_get("/console/annotate/dataset/{name}", item_page,
                   name="console-annotate-dataset")
    router.add_post("/console/annotate/dataset/{name}", save)


def annotator_of(request: web.Request) -> str:
    from keel.evals.annotate import default_annotator

    principal = principal_of(request)
    if principal.key_id is None and principal.name == "anonymous":
        return default_annotator()
    return principal.name


def _store(request: web.Request):
    return request.app[GATEWAY].runtime.store


# -- choosing a queue --------------------------------------------------------------------------


async def queues(request: web.Request) -> web.Response:
    from keel.evals.dataset_store import list_datasets
    from keel.evals.runs import list_runs

    store = _store(request)
    runs = await asyncio.to_thread(list_runs, store, 50)
    datasets = await asyncio.to_thread(list_datasets, store)
    return render(request, "annotate/queues.html", title="Annotate", runs=runs,
                  datasets=datasets, annotator=annotator_of(request), feedback=FEEDBACK)


# -- one queue ---------------------------------------------------------------------------------


@dataclass
class Queue:
    kind: str  # run | dataset | traces
    title: str
    path: str  # the queue's page, with its own filters in `params`
    params: dict[str, str]
    items: list  # every item, done or not
    answers: dict[tuple, dict]  # this annotator's latest answer per item key
    rubric: list[dict]
    run: dict | None = None
    meta: dict | None = None

    def url(self, item=None, **extra: str) -> str:
        query = dict(self.params)
        if item is not None:
            query.update(key_params(item))
        query.update({k: v for k, v in extra.items() if v})
        return self.path + ("?" + urlencode(query) if query else "")

    def pending(self) -> list[int]:
        return [n for n, item in enumerate(self.items) if key(item) not in self.answers]


def key(item) -> tuple:
    return (item.variant, item.sample_id, item.repeat)


def key_params(item) -> dict[str, str]:
    found = {"s": item.sample_id}
    if item.variant is not None:
        found["v"] = item.variant
    if item.repeat is not None:
        found["r"] = str(item.repeat)
    return found


def load_queue(store, request: web.Request, annotator: str) -> Queue:
    """The queue the URL names, with every item (done ones too) and this annotator's answers."""
    from keel.evals.annotate import (
        dataset_queue,
        latest_answers,
        run_queue,
        trace_queue,
    )

    query = request.query
    if "run_id" in request.match_info:
        variant = query.get("variant", "").strip() or None
        run, items = run_queue(store, request.match_info["run_id"], annotator, variant,
                               include_done=True)
        if variant is not None and not items:
            raise InvalidRequest(f"run {run['id']} has no outputs of variant {variant!r}",
                                 param="variant")
        from keel.evals.runs import get_run

        full = get_run(store, run["id"])
        return Queue(
            kind="run", title=f"run {run['id']} ({run['suite']})",
            path=f"/console/annotate/run/{run['id']}",
            params={"variant": variant} if variant else {}, items=items,
            answers=latest_answers(store, annotator, run_id=run["id"]),
            rubric=rubric_of(full.get("config") or {}), run=full)
    if "name" in request.match_info:
        version = query.get("version", "").strip() or None
        meta, items = dataset_queue(store, request.match_info["name"], version, annotator,
                                    include_done=True)
        return Queue(
            kind="dataset", title=f"dataset {meta['name']} {meta['version'][:12]}",
            path=f"/console/annotate/dataset/{meta['name']}",
            params={"version": version} if version else {}, items=items,
            answers=latest_answers(store, annotator, dataset_name=meta["name"]),
            rubric=[], meta=meta)
    feedback = query.get("feedback", "any").strip() or "any"
    items = trace_queue(store, annotator, feedback, include_done=True)
    return Queue(
        kind="traces", title=f"traces with {'any' if feedback == 'any' else feedback} feedback",
        path="/console/annotate/traces",
        params={"feedback": feedback} if feedback != "any" else {}, items=items,
        answers=latest_answers(store, annotator, traces=True), rubric=[])


def rubric_of(config: dict) -> list[dict]:
    """What each grader of a run judged by, as text a person can read beside the output."""
    import json

    found = []
    for name, grader in (config.get("graders") or {}).items():
        grader = grader or {}
        text = grader.get("scorecard") or grader.get("prompt")
        if text is None:
            options = grader.get("options") or {}
            text = json.dumps(options, indent=2, ensure_ascii=False, default=str) if options else ""
        elif not isinstance(text, str):
            text = json.dumps(text, indent=2, ensure_ascii=False, default=str)
        found.append({"name": name, "kind": grader.get("kind"), "text": text})
    return found


def find_item(queue: Queue, query) -> int | None:
    """The index of the item the query names, the first pending one without a name, or None
    when every item is done. An unknown name is a 404."""
    sample = query.get("s")
    if sample is None:
        pending = queue.pending()
        return pending[0] if pending else None
    variant = query.get("v") or None
    repeat = query.get("r")
    for n, item in enumerate(queue.items):
        if item.sample_id == sample and item.variant == variant and \
                (item.repeat is None or str(item.repeat) == repeat):
            return n
    raise ItemNotFound(f"no item {sample!r}" + (f" of variant {variant!r}" if variant else "")
                       + f" in {queue.title}")


def item_context(queue: Queue, index: int | None, annotator: str, saved: str | None = None,
                 error: str | None = None) -> dict[str, Any]:
    total, done = len(queue.items), len(queue.items) - len(queue.pending())
    context: dict[str, Any] = {
        "queue": queue, "annotator": annotator, "total": total, "done": done, "saved": saved,
        "error": error, "grades": GRADES, "item": None, "index": index,
    }
    if index is None:
        context["review_url"] = queue.url(queue.items[0]) if queue.items else None
        return context
    item = queue.items[index]
    previous = queue.items[index - 1] if index > 0 else None
    following = queue.items[index + 1] if index + 1 < len(queue.items) else None
    ideal = item.sample.ideal if item.sample is not None else None
    context.update(
        item=item, position=index + 1,
        answer=queue.answers.get(key(item)),
        prev_url=queue.url(previous) if previous else None,
        next_url=queue.url(following) if following else None,
        action=queue.url(item),
        ideal_text=ideal if isinstance(ideal, str) or ideal is None else "\n".join(map(str, ideal)),
        output=item.output_text if item.output_text is not None else (
            None if item.output is None else item.output),
    )
    return context


async def item_page(request: web.Request) -> web.Response:
    store = _store(request)
    annotator = annotator_of(request)
    try:
        queue = await asyncio.to_thread(load_queue, store, request, annotator)
        index = find_item(queue, request.query)
    except KeelError as exc:
        return error_page(request, exc, "Annotate")
    context = item_context(queue, index, annotator)
    return render(request, "annotate/item.html", title=f"Annotate {queue.title}", **context)


# -- saving ------------------------------------------------------------------------------------


def read_answer(form, sample_ideal: str | None):
    """The Answer a form gives: a grade (as parse_grade reads `keel eval annotate`'s), an ideal
    answer when it differs from the sample's, a comment. Nothing at all is a 400."""
    from keel.evals.annotate import Answer, parse_grade

    grade = str(form.get("grade", "")).strip()
    ideal = str(form.get("ideal", "")).replace("\r\n", "\n").strip()
    comment = str(form.get("comment", "")).strip()
    if len(ideal) > MAX_TEXT or len(comment) > MAX_TEXT:
        raise InvalidRequest(f"an ideal answer or comment has at most {MAX_TEXT:,} characters")
    answer = parse_grade(grade) if grade else Answer()
    if ideal and ideal != (sample_ideal or "").strip():
        answer.ideal = ideal
    answer.comment = comment or None
    if answer.label is None and answer.ideal is None:
        raise InvalidRequest("give a grade (pass/fail, 1-5 or a label) or write an ideal answer",
                             param="grade")
    return answer


async def save(request: web.Request) -> web.Response:
    from keel.evals.annotate import save_annotation

    store = _store(request)
    annotator = annotator_of(request)
    htmx = "HX-Request" in request.headers
    form = await request.post()
    try:
        queue = await asyncio.to_thread(load_queue, store, request, annotator)
        index = find_item(queue, form)
        if index is None:
            raise InvalidRequest("name the item to annotate (s, v, r)")
    except KeelError as exc:
        return error_page(request, exc, "Annotate")
    item = queue.items[index]
    try:
        answer = read_answer(form, item.sample.ideal if item.sample is not None and
                             isinstance(item.sample.ideal, str) else None)
    except KeelError as exc:
        if not htmx:
            return error_page(request, exc, "Annotate")
        context = item_context(queue, index, annotator, error=exc.message)
        return web.Response(text=render_fragment("annotate/_item.html", **context),
                            status=exc.status, content_type="text/html")
    await asyncio.to_thread(save_annotation, store, item, answer, annotator)
    queue.answers[key(item)] = {"label": answer.label, "score": answer.score,
                                "ideal": answer.ideal, "comment": answer.comment,
                                "annotator": annotator}
    following = next_pending(queue, index)
    saved = f"Saved {describe(answer)} for {item.sample_id}" + (
        f" · {item.variant}" if item.variant is not None else "")
    if not htmx:
        target = queue.url(queue.items[following]) if following is not None else queue.url(
            done="1")
        raise web.HTTPSeeOther(target)
    context = item_context(queue, following, annotator, saved=saved)
    url = queue.url(queue.items[following]) if following is not None else queue.url(done="1")
    return web.Response(text=render_fragment("annotate/_item.html", **context),
                        content_type="text/html", headers={"HX-Push-Url": url})


def next_pending(queue: Queue, index: int) -> int | None:
    """The next item not yet done after `index`, wrapping round; None when all are done."""
    pending = queue.pending()
    after = [n for n in pending if n > index]
    return (after or pending or [None])[0]


def describe(answer) -> str:
    parts = []
    if answer.label is not None:
        parts.append(f"grade {answer.label}")
    if answer.ideal is not None:
        parts.append("ideal answer")
    return " and ".join(parts)
