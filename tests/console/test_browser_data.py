"""Datasets, knowledge and costs in a real Chromium against `keel serve` (tests/console/
conftest.py): search the support FAQ from the collection page, page through a dataset, read the
costs charts and their tables."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.console.conftest import ROOT, screenshot

pytestmark = pytest.mark.browser


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())



def test_search_a_collection(page):
    page.goto("/console/knowledge")
    row = page.locator("tr", has=page.locator("a", has_text="support"))
    assert "minilm" in row.inner_text()
    row.get_by_role("link", name="support").click()
    page.wait_for_url("**/console/knowledge/support")
    assert page.locator("h1").inner_text() == "Collection support"
    assert page.locator("table.documents").get_by_text("reset-password").count() >= 1

    # Keyboard only: type the query and press Enter; htmx swaps in the results.
    page.get_by_label("Query").fill("reset password")
    page.get_by_label("Query").press("Enter")
    first = page.locator("#results li.hit").first
    first.wait_for(timeout=20_000)
    assert "q=reset%20password" in page.url  # the search is a link you can share
    assert "reset-password" in first.locator(".hit-where").inner_text()
    assert "How do I reset my password?" in first.locator(".hit-where").inner_text()
    assert float(first.locator(".score").inner_text().split()[-1]) > 0
    assert "fulltext" in first.inner_text() and "vector" in first.inner_text()
    marked = [m.lower() for m in first.locator(".passage mark").all_inner_texts()]
    assert "reset" in marked and "password" in marked
    assert page.locator("h1").count() == 1  # the page around the results stayed
    screenshot(page, "knowledge")

    # The same URL opened directly renders the whole page with the same results, and on a
    # phone nothing but the tables' own boxes scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(page.url)
    assert "reset-password" in page.locator("#results li.hit").first.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_datasets_and_a_dataset_version(page, console_site, console_site_dir):
    workdir = console_site_dir
    data = ROOT / "examples" / "evals" / "data" / "support.jsonl"
    subprocess.run([sys.executable, "-m", "keel", "eval", "dataset", "import", str(data),
                    "--name", "support-faq", "--config", "keel.yaml"],
                   cwd=workdir, check=True, capture_output=True, timeout=120)
    page.goto("/console/datasets")
    assert page.locator("h1").inner_text() == "Datasets"
    page.get_by_role("link", name="support-faq", exact=True).click()
    page.wait_for_url("**/console/datasets/support-faq")
    assert page.get_by_role("heading", level=1).inner_text() == "Dataset support-faq"
    assert page.locator("li.sample").count() >= 1
    assert page.locator("li.sample .msg").first.inner_text().strip() != ""
    screenshot(page, "datasets")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/console/datasets")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_costs_charts_and_tables(page, console_site):
    for text in ("What does this cost?", "And this one?"):
        post(f"{console_site}/v1/chat/completions",
             {"model": "fake/echo", "messages": [{"role": "user", "content": text}]})
    page.goto("/console/costs?days=7")
    # The trace writer counts requests a moment after they finish: reload until they show.
    for _ in range(40):
        if page.locator("#by-model + .table-wrap").get_by_text("fake/echo").count():
            break
        page.wait_for_timeout(250)
        page.reload()
    model_row = page.locator("#by-model + .table-wrap tr", has_text="fake/echo")
    assert int(model_row.locator("td").first.inner_text().replace(",", "")) >= 2
    # Two uPlot charts drawn, with a legend naming the model.
    page.locator("#chart-cost canvas").wait_for()
    assert page.locator("#chart-tokens canvas").count() == 1
    assert "fake/echo" in page.locator("#chart-tokens .u-legend").inner_text()
    assert page.get_by_role("link", name="7 days").get_attribute("aria-current") == "page"
    screenshot(page, "costs")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.locator("#chart-cost canvas").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # The period selector by keyboard.
    page.get_by_role("link", name="30 days").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/costs?days=30")
    assert page.get_by_role("link", name="30 days").get_attribute("aria-current") == "page"
