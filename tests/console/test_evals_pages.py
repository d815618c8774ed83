"""Console evals pages without a browser: the runs list, a run's cells, two runs compared.

Real runs: `keel.evals.runner.run_suite` on the fake provider, writing into the console's own
store (the one `keel_console` serves), as `keel eval run --config` would.
"""

from __future__ import annotations

import html
import re

import orjson
import pytest
import yaml

from keel.config import load_config
from keel.evals.compare import compare, pair_variants
from keel.evals.runner import run_suite
from keel.evals.runs import get_run, results, run_samples
from keel.evals.suite import load_suite

# s0..s5; the even ones' inputs contain their ideal, so `echo` passes `includes` on them.
# `answers-odd` always says "answer1 answer3": it passes s1 and s3 only. Run 1 (echo) to run 2
# (answers-odd): s0, s2, s4 regress, s1, s3 improve, s5 stays failed.
MODELS = {
    "echo": {"provider": "fake"},
    "answers-odd": {"provider": "fake", "model": "fixed:answer1 answer3"},
}


def write_dataset(path, n: int = 6):
    lines = []
    for i in range(n):
        text = f"question {i} about answer{i}" if i % 2 == 0 else f"question {i}"
        lines.append(orjson.dumps({"id": f"s{i}", "input": text, "ideal": f"answer{i}"}).decode())
    path.write_text("\n".join(lines) + "\n")


async def make_run(gateway, workdir, model: str = "echo", suite: str = "demo",
                   variants: dict | None = None) -> str:
    """One finished run of `suite` in the gateway's store; its id."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "keel.yaml"
    config_path.write_text(yaml.safe_dump({
        "state_dir": str(workdir / "state"),
        "store": {"url": gateway.config.database_url()},
        "providers": {"fake": {"kind": "fake", "slow_ms": 1}},
        "models": MODELS, "pipeline": [],
    }))
    write_dataset(workdir / "data.jsonl")
    suite_path = workdir / f"{suite}.yaml"
    suite_path.write_text(yaml.safe_dump({
        "name": suite, "dataset": "data.jsonl", "config": str(config_path),
        "variants": variants or {"base": {"model": model}},
        "graders": [{"kind": "includes"}], "retry_backoff_s": 0.0,
    }, sort_keys=False))
    outcome = await run_suite(load_suite(suite_path), load_config(config_path),
                              gateway.runtime.store, progress=False,
                              config_path=str(config_path))
    return outcome.run_id


async def two_runs(gateway, tmp_path) -> tuple[str, str]:
    a = await make_run(gateway, tmp_path / "a", "echo")
    b = await make_run(gateway, tmp_path / "b", "answers-odd")
    return a, b


async def get(http, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


def text_of(page: str) -> str:
    """The page's visible text, tags dropped and whitespace squeezed, for order checks."""
    page = re.sub(r"<script.*?</script>", " ", page, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


async def test_runs_list_shows_each_run_with_its_means_and_filters_by_suite(
        keel_console, http, tmp_path):
    base, gateway = keel_console
    a, b = await two_runs(gateway, tmp_path)
    other = await make_run(gateway, tmp_path / "c", "echo", suite="other")
    status, page = await get(http, f"{base}/console/evals")
    assert status == 200
    assert page.count("<h1>") == 1 and "<title>Eval runs · Keel console</title>" in page
    for run_id in (a, b, other):
        assert f'href="/console/evals/{run_id}"' in page
        assert f'name="run" value="{run_id}"' in page  # a checkbox to compare it
    body = text_of(page)
    # Newest first; echo passes half (0.500), answers-odd two of six (0.333).
    assert body.index(other[:12]) < body.index(b[:12]) < body.index(a[:12])
    assert "base · includes 0.500 pass 50%" in body
    assert "base · includes 0.333 pass 33%" in body
    assert re.search(r"data(\.jsonl)?<span class=\"muted mono\">@", page) and "finished" in body
    # A chart per suite, with its data table: one row per run.
    assert page.count('class="chart evals-chart"') == 2
    assert "Suite demo" in body and "Suite other" in body

    status, page = await get(http, f"{base}/console/evals?suite=demo")
    assert status == 200
    assert a in page and b in page and f'href="/console/evals/{other}"' not in page
    assert '<option value="demo" selected>' in page

    status, page = await get(http, f"{base}/console/evals?suite=nosuch")
    assert status == 400 and "no eval runs of suite &#39;nosuch&#39;" in page
    assert "Traceback" not in page


async def test_an_empty_store_says_how_to_make_a_run(keel_console, http):
    base, _ = keel_console
    status, page = await get(http, f"{base}/console/evals")
    assert status == 200 and "No eval runs yet." in page and "keel eval run" in page


async def test_run_page_lists_every_cell_and_filters_to_failures(keel_console, http, tmp_path):
    base, gateway = keel_console
    run_id = await make_run(gateway, tmp_path / "a", "echo")
    status, page = await get(http, f"{base}/console/evals/{run_id}")
    assert status == 200 and page.count("<h1>") == 1
    body = text_of(page)
    assert "6 of 6 cell(s)" in body
    for i in range(6):
        assert f"question {i}" in body and f"answer{i}" in body
    assert body.count("failed") >= 3
    # The cells' grades and the audit.
    assert "Dataset data @" in body and "(6 samples)" in body
    assert "Variant base echo (fake → echo)" in body and "Grader includes" in body
    assert "s1 failed base user: question 1 answer1 question 1 trace includes 0.00 fail" in body

    status, page = await get(http, f"{base}/console/evals/{run_id[:10]}?failures=1")
    assert status == 200
    body = text_of(page)
    assert "3 of 6 cell(s), failures only" in body
    assert "question 1" in body and "question 3" in body and "question 5" in body
    assert "question 0 about" not in body and "question 2 about" not in body


async def test_run_page_errors_are_pages_with_their_status(keel_console, http, tmp_path):
    base, gateway = keel_console
    run_id = await make_run(gateway, tmp_path / "a", "echo")
    status, page = await get(http, f"{base}/console/evals/nosuchrun")
    assert status == 404 and "no eval run &#39;nosuchrun&#39;" in page and "<h1>" in page
    status, page = await get(http, f"{base}/console/evals/{run_id}?variant=zzz")
    assert status == 400 and "has no variant &#39;zzz&#39;" in page


async def test_compare_shows_the_clis_numbers_and_regressions_first(keel_console, http,
                                                                    tmp_path):
    base, gateway = keel_console
    a, b = await two_runs(gateway, tmp_path)
    status, page = await get(http, f"{base}/console/evals/compare?a={a}&b={b}")
    assert status == 200 and page.count("<h1>") == 1
    body = text_of(page)
    # The same computation `keel eval compare` prints.
    store = gateway.runtime.store
    cells_a, cells_b = results(store, a), results(store, b)
    samples = run_samples(store, get_run(store, a))
    (pair,) = compare(cells_a, cells_b, pair_variants(["base"], ["base"]), samples)
    s = pair["graders"]["includes"]
    assert s["mean_a"] == pytest.approx(0.5) and s["diff"] == pytest.approx(-1 / 6)
    expected = (f"includes 6 {s['mean_a']:.3f} [{s['ci_a'][0]:.3f}, {s['ci_a'][1]:.3f}] "
                f"{s['mean_b']:.3f} [{s['ci_b'][0]:.3f}, {s['ci_b'][1]:.3f}] "
                f"{s['diff']:+.3f} [{s['ci_diff'][0]:+.3f}, {s['ci_diff'][1]:+.3f}]")
    assert expected in body
    assert "3 regressed" in body and "2 improved" in body and "1 unchanged" in body
    # Regressed samples come first, then improved, then unchanged.
    order = [body.index(f"question {i}") for i in (0, 1, 5)]
    assert order == sorted(order)
    assert body.index("3 regressed") < body.index("question 0") < body.index("2 improved")
    assert body.index("2 improved") < body.index("question 1") < body.index("1 unchanged")
    # Output A and B side by side: echo's answer and the fixed one.
    assert "answer1 answer3" in body

    # The runs list's checkboxes: the older run becomes A whatever the order ticked.
    status, ticked = await get(http, f"{base}/console/evals/compare?run={b}&run={a}")
    assert status == 200 and expected in text_of(ticked)


async def test_compare_without_runs_is_a_picker_and_bad_picks_are_400(keel_console, http,
                                                                      tmp_path):
    base, gateway = keel_console
    a, b = await two_runs(gateway, tmp_path)
    status, page = await get(http, f"{base}/console/evals/compare")
    assert status == 200 and "Pick two runs to compare." in page and f'value="{a}"' in page
    status, page = await get(http, f"{base}/console/evals/compare?a={a}")
    assert status == 400 and "pick two runs" in page
    status, page = await get(http, f"{base}/console/evals/compare?run={a}")
    assert status == 400 and "tick exactly two runs" in page
    status, page = await get(http, f"{base}/console/evals/compare?a={a}&b=nosuchrun")
    assert status == 404 and "no eval run" in page
    status, page = await get(http, f"{base}/console/evals/compare?a={a}:zzz&b={b}")
    assert status == 400 and "no variant &#39;zzz&#39;" in page
