"""Evals and annotation in a real Chromium: two runs made by `keel eval run` (the CLI, in the
console site's folder, so into the store the site serves), compared in the browser; three
outputs graded with the keyboard in the annotation queue, then read back by the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from tests.console.conftest import screenshot

pytestmark = pytest.mark.browser

# Variant `base` of run A echoes the input; run B's echoes metadata.b instead. `includes`
# passes when the ideal is in the answer: s0 and s4 regress, s1 improves, s2 and s3 stay.
SAMPLES = [
    ("s0", "tell me about answer0", "answer0", "nothing useful"),
    ("s1", "question one", "answer1", "it is answer1"),
    ("s2", "tell me about answer2", "answer2", "answer2 again"),
    ("s3", "question three", "answer3", "nope"),
    ("s4", "tell me about answer4", "answer4", "x"),
]



def keel(workdir: Path, *args: str, input: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "keel", *args], cwd=workdir, input=input,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def two_runs(console_site, console_site_dir) -> tuple[str, str]:
    """(run A, run B) of suite console-demo, made by `keel eval run` in the site's folder."""
    workdir = console_site_dir
    evals = workdir / "evals"
    evals.mkdir(exist_ok=True)
    (evals / "data.jsonl").write_text("".join(
        orjson.dumps({"id": sid, "input": text, "ideal": ideal, "metadata": {"b": b}}).decode()
        + "\n" for sid, text, ideal, b in SAMPLES))
    ids = []
    for name, variant in (("a", {"model": "fake/echo"}),
                          ("b", {"model": "fake/echo",
                                 "prompt": {"messages": [{"role": "user",
                                                          "content": "{metadata.b}"}]}})):
        suite = evals / f"suite-{name}.yaml"
        suite.write_text(yaml.safe_dump({
            "name": "console-demo", "dataset": "data.jsonl", "variants": {"base": variant},
            "graders": [{"kind": "includes"}], "retry_backoff_s": 0.0}))
        out = keel(workdir, "eval", "run", str(suite), "--config", "keel.yaml", "--json",
                   "--no-progress")
        ids.append(json.loads(out)["run_id"])
    return ids[0], ids[1]


def test_compare_two_cli_runs_in_the_browser(page, two_runs):
    a, b = two_runs
    page.goto("/console/evals?suite=console-demo")
    assert page.title() == "Eval runs · Keel console"
    page.get_by_role("link", name=a[:12]).wait_for()
    # The chart and its data table.
    page.wait_for_selector(".evals-chart canvas")
    screenshot(page, "evals")

    # Tick the two runs by keyboard-reachable checkboxes and press Compare (a GET form).
    page.get_by_label(f"Compare run {b}").check()
    page.get_by_label(f"Compare run {a}").check()
    page.get_by_role("button", name="Compare").click()
    page.wait_for_url(re.compile(r"/console/evals/compare\?"))
    assert page.get_by_role("heading", level=1).inner_text() == "Compare eval runs"
    means = page.locator("table.evals-means tbody tr").first.inner_text()
    assert means.startswith("includes") and "0.600" in means and "0.400" in means
    assert "-0.200" in means
    regressed = page.locator("tr.evals-regressed th").all_inner_texts()
    improved = page.locator("tr.evals-improved th").all_inner_texts()
    assert sorted(regressed) == ["s0", "s4"] and improved == ["s1"]
    assert page.get_by_role("heading", name="2 regressed").is_visible()
    assert page.get_by_role("heading", name="2 unchanged").is_visible()
    # The regressed come first on the page.
    body = page.locator("main").inner_text()
    assert body.index("2 regressed") < body.index("1 improved") < body.index("2 unchanged")
    assert "nothing useful" in page.locator("tr.evals-regressed").first.inner_text() or \
        "nothing useful" in page.locator("tr.evals-regressed").last.inner_text()
    screenshot(page, "compare")

    # The run page, filtered to failures.
    page.get_by_role("link", name=b).first.click()
    page.get_by_label("Failures only").check()
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r"failures=1"))
    failed = page.locator("table.evals-cells tbody th").all_inner_texts()
    assert [t.split()[0] for t in failed] == ["s0", "s3", "s4"]
    screenshot(page, "run")


def test_grade_three_outputs_by_keyboard_then_the_cli_sees_them(page, two_runs,
                                                                console_site_dir):
    _, b = two_runs
    workdir = console_site_dir
    page.goto("/console/annotate")
    page.get_by_role("link", name=re.compile(b[:12])).first.click()
    page.wait_for_url(re.compile(f"/console/annotate/run/{b}"))
    assert page.get_by_role("heading", name="Keyboard shortcuts").is_visible()
    progress = page.locator(".annotate-progress")
    assert "0 of 5 done" in progress.inner_text()
    # Nothing to save (no grade, the ideal unchanged) is refused in place, with the reason.
    page.get_by_role("button", name="Save ideal").click()
    assert "give a grade" in page.get_by_role("alert").inner_text()

    page.keyboard.press("p")  # s0: pass
    page.wait_for_function("document.querySelector('.annotate-progress').innerText"
                           ".includes('1 of 5 done')")
    page.keyboard.press("i")  # write an ideal for s1, then fail it
    assert page.evaluate("document.activeElement.id") == "ideal"
    page.keyboard.press("Control+a")
    page.keyboard.type("the one true answer1")
    page.keyboard.press("Escape")
    page.keyboard.press("f")
    page.wait_for_function("document.querySelector('.annotate-progress').innerText"
                           ".includes('2 of 5 done')")
    page.keyboard.press("4")  # s2: a 1-5 score
    page.wait_for_function("document.querySelector('.annotate-progress').innerText"
                           ".includes('3 of 5 done')")
    assert "Sample s3" in page.locator("#item-h").inner_text()
    assert re.search(r"\?s=s3&v=base&r=0$", page.url)  # pushed: reload stays on s3
    screenshot(page, "annotate")
    page.keyboard.press("k")  # back to s2, showing what was said
    page.wait_for_url(re.compile(r"s=s2"))
    assert "Your last answer: 4" in page.locator(".annotate-side").inner_text()
    page.keyboard.press("?")
    assert page.locator("#annotate-help").is_hidden()

    # The CLI reads the same rows: the run's human grades, and annotate's queue resumes at s3.
    found = json.loads(keel(workdir, "eval", "calibrate", b, "--config", "keel.yaml", "--json"))
    (agreement,) = found["agreements"]
    assert agreement["grader"] == "includes" and agreement["n"] == 3
    shown = keel(workdir, "eval", "annotate", "--run", b, "--config", "keel.yaml", input="q\n")
    assert "2 left for" in shown and "sample s3" in shown
    shown = json.loads(keel(workdir, "eval", "show", b, "--config", "keel.yaml", "--json"))
    assert sorted(n["sample_id"] for n in shown["annotations"]) == ["s0", "s1", "s2"]
    assert "3 human annotation(s)" in keel(workdir, "eval", "show", b, "--config", "keel.yaml")
