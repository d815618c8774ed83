"""Console annotation without a browser: the queues, an item page, saving through the same
rows `keel eval annotate` writes, and the traces-with-feedback queue (keel.evals.annotate)."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import make_mocked_request

from keel.api.auth import PRINCIPAL
from keel.console.views.annotate import annotator_of
from keel.evals.annotate import (
    default_annotator,
    latest_answers,
    run_annotations,
    run_queue,
    trace_annotations,
    trace_queue,
)
from keel.evals.base import Sample
from keel.evals.dataset_store import import_dataset
from keel.ops.principal import ANONYMOUS, Principal
from tests.console.test_evals_pages import get, make_run, text_of

HX = {"HX-Request": "true"}


async def post(http, url: str, data: dict, headers: dict | None = None):
    async with http.post(url, data=data, headers=headers or {}, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers


async def test_queues_page_lists_runs_datasets_and_the_traces_queue(keel_console, http, tmp_path):
    base, gateway = keel_console
    run_id = await make_run(gateway, tmp_path / "a")
    status, page = await get(http, f"{base}/console/annotate")
    assert status == 200 and page.count("<h1>") == 1
    assert f'href="/console/annotate/run/{run_id}"' in page
    assert 'href="/console/annotate/dataset/data"' in page  # the run's dataset, stored
    assert 'action="/console/annotate/traces"' in page
    assert f"You annotate as {default_annotator()}" in text_of(page)


async def test_grading_a_run_in_the_browser_writes_the_clis_rows(keel_console, http, tmp_path):
    base, gateway = keel_console
    store = gateway.runtime.store
    run_id = await make_run(gateway, tmp_path / "a")
    me = default_annotator()
    url = f"{base}/console/annotate/run/{run_id}"

    status, page = await get(http, url)
    assert status == 200
    body = text_of(page)
    assert "0 of 6 done" in body and "item 1 of 6" in body
    assert "Sample s0 · variant base" in body and "question 0 about answer0" in body
    assert "Graders' verdicts includes 1.0 pass" in body  # the rubric side shows the verdicts
    assert 'data-key="p"' in page and 'aria-keyshortcuts="5"' in page

    # htmx: the next item's panel comes back, and the URL to push.
    status, panel, headers = await post(http, url, {"s": "s0", "v": "base", "r": "0",
                                                    "grade": "p", "ideal": "answer0",
                                                    "comment": ""}, HX)
    assert status == 200 and "<html" not in panel
    assert "Saved grade pass for s0 · base" in panel and "Sample <span class=\"mono\">s1" in panel
    assert headers["HX-Push-Url"].endswith(f"/console/annotate/run/{run_id}?s=s1&v=base&r=0")
    # A 1-5 score with a comment and a new ideal answer, as a plain form (no JS): a redirect.
    status, _, headers = await post(http, url, {"s": "s1", "v": "base", "r": "0", "grade": "2",
                                                "ideal": "answer one", "comment": "half"})
    assert status == 303 and headers["Location"].endswith("?s=s2&v=base&r=0")
    # The ideal alone.
    status, panel, _ = await post(http, url, {"s": "s2", "v": "base", "r": "0", "grade": "",
                                              "ideal": "answer two"}, HX)
    assert status == 200 and "Saved ideal answer for s2" in panel

    rows = run_annotations(store, run_id)
    assert [(r["sample_id"], r["label"], r["score"], r["ideal"], r["comment"], r["annotator"],
             r["variant"], r["repeat"]) for r in rows] == [
        ("s0", "pass", 1.0, None, None, me, "base", 0),  # the unchanged ideal is not re-saved
        ("s1", "2", 2.0, "answer one", "half", me, "base", 0),
        ("s2", None, None, "answer two", None, me, "base", 0),
    ]
    # `keel eval annotate --run` for the same person now starts at s3.
    _, left = run_queue(store, run_id, me)
    assert [i.sample_id for i in left] == ["s3", "s4", "s5"]
    # The run page shows the human grades beside the graders'.
    status, page = await get(http, f"{base}/console/evals/{run_id}")
    assert "human 2 2.00 (" + me + ") half" in text_of(page)

    # Review: the first item, with the last answer shown; the next unannotated is s3.
    status, page = await get(http, url + "?s=s1&v=base&r=0")
    assert "Your last answer: 2 · ideal written · “half”" in text_of(page)
    status, page = await get(http, url)
    assert "Sample s3" in text_of(page) and "3 of 6 done" in text_of(page)


async def test_the_last_item_then_a_done_panel(keel_console, http, tmp_path):
    base, gateway = keel_console
    run_id = await make_run(gateway, tmp_path / "a")
    url = f"{base}/console/annotate/run/{run_id}"
    for i in range(6):
        status, panel, headers = await post(http, url, {"s": f"s{i}", "v": "base", "r": "0",
                                                        "grade": "f"}, HX)
        assert status == 200
    assert "All 6 item(s) annotated" in panel and headers["HX-Push-Url"].endswith("?done=1")
    assert f"keel eval show {run_id}" in panel
    status, page = await get(http, url)
    assert status == 200 and "All 6 item(s) annotated" in page


async def test_bad_answers_and_unknown_queues_are_error_pages(keel_console, http, tmp_path):
    base, gateway = keel_console
    run_id = await make_run(gateway, tmp_path / "a")
    url = f"{base}/console/annotate/run/{run_id}"
    item = {"s": "s0", "v": "base", "r": "0"}
    status, panel, _ = await post(http, url, {**item, "grade": "", "ideal": "answer0"}, HX)
    assert status == 400 and "give a grade" in panel and 'id="annotate-item"' in panel
    status, page, _ = await post(http, url, {**item, "grade": "x" * 201})
    assert status == 400 and "at most 200 characters" in page and "<h1>" in page
    status, page, _ = await post(http, url, {"s": "nosuch", "grade": "p"})
    assert status == 404 and "no item &#39;nosuch&#39;" in page
    status, page = await get(http, url + "?s=nosuch")
    assert status == 404
    status, page = await get(http, f"{base}/console/annotate/run/nosuchrun")
    assert status == 404 and "no eval run" in page
    status, page, _ = await post(http, f"{base}/console/annotate/run/nosuchrun", {"grade": "p"})
    assert status == 404
    status, page = await get(http, f"{base}/console/annotate/dataset/nosuch")
    assert status == 404
    status, page = await get(http, f"{base}/console/annotate/traces?feedback=sideways")
    assert status == 400 and "feedback: expected any, down or up" in page
    status, page = await get(http, url + "?variant=zzz")
    assert status == 400 and "no outputs of variant" in page
    assert run_annotations(gateway.runtime.store, run_id) == []


async def test_a_dataset_queue_writes_ideal_answers(keel_console, http):
    base, gateway = keel_console
    store = gateway.runtime.store
    samples = [Sample(id=f"q{i}", input=[{"role": "user", "content": f"question {i}"}])
               for i in range(2)]
    import_dataset(store, "faq", samples)
    url = f"{base}/console/annotate/dataset/faq"
    status, page = await get(http, url)
    assert status == 200 and "question 0" in page and "<h3>Output</h3>" not in page
    status, panel, _ = await post(http, url, {"s": "q0", "ideal": "the answer\r\nin two lines"},
                                  HX)
    assert status == 200 and "Sample <span class=\"mono\">q1" in panel
    (answer,) = latest_answers(store, default_annotator(), dataset_name="faq").values()
    assert answer["ideal"] == "the answer\nin two lines" and answer["dataset_id"] is not None


async def chat(http, base: str, text: str) -> str:
    body = {"model": "fake/echo", "messages": [{"role": "user", "content": text}]}
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        return response.headers["x-keel-trace-id"]


async def feedback(http, base: str, trace_id: str, score: int, correction: str | None = None):
    body = {"trace_id": trace_id, "score": score, "comment": "meh", "correction": correction}
    async with http.post(f"{base}/v1/feedback", json=body) as response:
        assert response.status == 201


async def test_traces_with_feedback_are_a_queue(keel_console, http):
    base, gateway = keel_console
    store = gateway.runtime.store
    down = await chat(http, base, "what is the capital of France")
    up = await chat(http, base, "say hello")
    await chat(http, base, "no feedback on this one")
    await feedback(http, base, down, -1, correction="Paris")
    await feedback(http, base, up, 1)
    me = default_annotator()

    # The module: newest first, the answer as output, the correction as ideal.
    items = trace_queue(store, me)
    assert [i.sample_id for i in items] == [up, down]
    assert items[1].output == "what is the capital of France" and items[1].sample.ideal == "Paris"
    assert items[1].grades["user feedback"]["label"] == "down"
    assert [i.sample_id for i in trace_queue(store, me, "down")] == [down]

    status, page = await get(http, f"{base}/console/annotate/traces?feedback=down")
    assert status == 200
    body = text_of(page)
    assert "Annotate traces with down feedback" in body and "Ideal (current) Paris" in body
    assert "User feedback user feedback -1 fail down meh" in body
    status, panel, _ = await post(http, f"{base}/console/annotate/traces?feedback=down",
                                  {"s": down, "grade": "fail", "comment": "wrong"}, HX)
    assert status == 200 and "All 1 item(s) annotated" in panel
    (note,) = trace_annotations(store, down)
    assert (note["label"], note["score"], note["comment"], note["run_id"], note["dataset_id"]) \
        == ("fail", 0.0, "wrong", None, None)
    assert trace_annotations(store, up) == []
    assert [i.sample_id for i in trace_queue(store, me)] == [up]
    assert len(trace_queue(store, me, include_done=True)) == 2
    assert [i.sample_id for i in trace_queue(store, "someone else")] == [up, down]


@pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")
def test_the_annotator_is_the_signed_in_keys_name():
    request = make_mocked_request("GET", "/console/annotate")
    assert annotator_of(request) == default_annotator()  # auth off: as the CLI names you
    request[PRINCIPAL] = ANONYMOUS
    assert annotator_of(request) == default_annotator()
    request[PRINCIPAL] = Principal(key_id="k1", name="alice", surfaces=frozenset({"console"}))
    assert annotator_of(request) == "alice"


def test_no_script_needed_the_form_posts_and_names_its_item():
    from keel.console.render import ENV

    source = ENV.loader.get_source(ENV, "annotate/_item.html")[0]
    assert re.search(r'<form class="annotate-form[^>]*method="post" action="\{\{ action \}\}"',
                     source)
    assert 'hx-post="{{ action }}"' in source
