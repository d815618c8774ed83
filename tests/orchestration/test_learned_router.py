"""Learned cost-aware routing: training from eval runs, RouteLLM's metrics, choose(), the CLI.

The fixture is a run store with scripted grades: the cheap model is as good as the strong one
on cooking questions and fails on tax questions, so a router must learn the topic from the
MiniLM embedding of the question.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from keel.cli.main import cli
from keel.config import KeelConfig
from keel.errors import ConfigError, InvalidRequest
from keel.evals import runs
from keel.evals.base import Sample
from keel.evals.dataset_store import import_dataset
from keel.orchestration.router import learned
from keel.pipeline.runtime import Runtime
from keel.store import open_store

DISHES = ["pancakes", "risotto", "banana bread", "lasagna", "omelette", "sourdough", "curry",
          "brownies", "pizza dough", "tomato soup", "apple pie", "roast chicken", "pesto",
          "fried rice", "carrot cake", "meatballs", "hummus", "scones", "chili", "paella"]
COOKING = ["How long should I bake {}?", "What is a good recipe for {}?",
           "Which spices go well in {}?", "How do I keep {} moist when cooking it?"]
TAXES = ["Can I deduct {} from my income tax as a freelancer?",
         "How is {} taxed when I file my tax return?",
         "Do I owe capital gains tax on {}?", "Which tax form reports {}?"]
ASSETS = ["a home office", "stock options", "rental income", "crypto trades", "a company car",
          "dividends", "a pension payout", "an inheritance", "consulting fees", "a house sale",
          "bond interest", "a side business", "gambling winnings", "alimony", "royalties",
          "a startup exit", "student loan interest", "charity donations", "lottery prizes",
          "foreign wages"]


def fixture_samples() -> list[tuple[Sample, str]]:
    out = []
    for i, template in enumerate(COOKING):
        for j, dish in enumerate(DISHES):
            out.append((Sample(f"cook-{i}-{j}", [{"role": "user", "content":
                                                   template.format(dish)}]), "cooking"))
    for i, template in enumerate(TAXES):
        for j, asset in enumerate(ASSETS):
            out.append((Sample(f"tax-{i}-{j}", [{"role": "user", "content":
                                                  template.format(asset)}]), "tax"))
    return out


def cell(variant: str, sample_id: str, score: float, repeat: int = 0, grader: str = "fact"):
    return {"variant": variant, "sample_id": sample_id, "repeat": repeat, "output": {"text": "x"},
            "grades": {grader: {"score": score, "passed": score >= 0.5}},
            "created_at": time.time()}


def make_run(store, samples, grades) -> str:
    """A finished run of suite `topics` with the cells `grades` yields."""
    name, version, _ = import_dataset(store, "topics", [s for s, _ in samples])
    run_id = runs.create_run(store, suite="topics", dataset_name=name, dataset_version=version,
                             config={}, git_commit=None, keel_version="test")
    runs.write_results(store, run_id, grades)
    runs.finish_run(store, run_id, runs.FINISHED)
    return run_id


def topic_grades(samples):
    rows = []
    for sample, topic in samples:
        rows.append(cell("big", sample.id, 1.0))
        rows.append(cell("small", sample.id, 1.0 if topic == "cooking" else 0.0))
    return rows


@pytest.fixture(scope="module")
def store_with_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("router")
    url = f"sqlite:///{folder / 'keel.db'}"
    store = open_store(url)
    samples = fixture_samples()
    run_id = make_run(store, samples, topic_grades(samples))
    yield store, url, run_id, samples, folder
    store.close()


@pytest.fixture(scope="module")
def trained(store_with_run):
    store, _, run_id, _, folder = store_with_run
    examples = learned.examples_from_runs(store, [run_id], "big", "small")
    cache = folder / "embeddings.npz"
    model = learned.train(examples, embed=learned.default_embed(cache), threshold=0.5,
                          metadata={"strong": "big", "cheap": "small"})
    return model, examples, cache


# -- metrics on a case checkable by hand -----------------------------------------------------


def test_curve_apgr_and_cpt_by_hand():
    # Four samples. The strong model gains 1 on samples 0 and 1, nothing on 2 and 3.
    strong = np.array([1.0, 1.0, 1.0, 0.0])
    cheap = np.array([0.0, 0.0, 1.0, 0.0])
    # The router ranks sample 0 least likely cheap-good, then 2, then 1, then 3.
    p = np.array([0.1, 0.6, 0.3, 0.9])
    c = learned.curve(p, strong, cheap)
    assert c.strong_quality == 0.75 and c.cheap_quality == 0.25
    # 0 strong: 0.25; +sample0: 0.5; +sample2 (no gain): 0.5; +sample1: 0.75; +sample3: 0.75
    assert c.quality.tolist() == [0.25, 0.5, 0.5, 0.75, 0.75]
    assert c.pgr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    # Trapezoids of width 0.25: (0+.5)/2 + (.5+.5)/2 + (.5+1)/2 + (1+1)/2 = 2.5 -> 0.625
    assert c.apgr == pytest.approx(0.625)
    assert c.cpt(0.5) == 0.25
    assert c.cpt(0.8) == 0.75
    assert c.cpt(0.95) == 0.75
    # The thresholds that produce each point: cheap when P >= threshold.
    assert c.thresholds[:4].tolist() == [0.1, 0.3, 0.6, 0.9]
    oracle = learned.curve(learned.oracle_scores(strong, cheap), strong, cheap)
    assert oracle.apgr == pytest.approx((0.25 + 0.75 + 1 + 1) / 4)
    assert oracle.cpt(0.95) == 0.5


def test_scores_average_graders_then_repeats():
    cells = [cell("a", "s1", 1.0, 0), cell("a", "s1", 0.0, 1), cell("a", "s1", 1.0, 0, "other"),
             cell("b", "s1", 0.0)]
    assert learned.variant_scores(cells, "a") == {"s1": 0.75}  # mean(0.5, 1.0)
    assert learned.variant_scores(cells, "a", grader="fact") == {"s1": 0.5}
    examples = [learned.Example("x", "", 1.0, 0.8), learned.Example("y", "", 1.0, 0.5)]
    assert learned.labels(examples).tolist() == [0.0, 0.0]
    assert learned.labels(examples, margin=0.2).tolist() == [1.0, 0.0]


# -- training and evaluation on the topic fixture ------------------------------------------------


def test_router_learns_the_topic_and_beats_random(trained):
    model, examples, cache = trained
    report = learned.evaluate(model, examples, embed=learned.default_embed(cache))
    # Never scored on what it learned from.
    assert report["samples"] == len(learned.held_out(model, examples)) > 20
    assert not set(model.train_ids) & {e.sample_id for e in learned.held_out(model, examples)}
    # Half the samples gain from the strong model, so even an oracle only reaches ~0.75
    # (PGR climbs to 1 over the first half); random routing scores 0.5.
    assert report["random"]["apgr"] == 0.5
    assert report["learned"]["apgr"] > 0.68
    assert report["learned"]["apgr"] >= 0.93 * report["oracle"]["apgr"]
    assert report["learned"]["cpt"]["95%"] is not None
    assert report["learned"]["cpt"]["95%"] < 0.65  # random needs 95% strong calls
    assert report["learned"]["strong_quality"] == 1.0
    assert 0.0 < report["learned"]["cheap_quality"] < 1.0


def test_model_file_round_trip_and_refusals(trained, tmp_path):
    model, _, _ = trained
    path = model.save(tmp_path / "r.npz")
    again = learned.RouterModel.load(path)
    assert again.fingerprint == model.fingerprint and again.threshold == 0.5
    assert np.allclose(again.weights, model.weights) and again.bias == pytest.approx(model.bias)
    assert again.train_ids == model.train_ids and again.metadata["strong"] == "big"
    with pytest.raises(ConfigError, match="does not exist"):
        learned.RouterModel.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a learned router"):
        learned.RouterModel.load(tmp_path / "junk.npz")


def test_missing_variant_is_a_clear_error(store_with_run):
    store, _, run_id, _, _ = store_with_run
    with pytest.raises(InvalidRequest, match="no variant 'gpt'"):
        learned.examples_from_runs(store, [run_id], "gpt", "small")


# -- choose() at run time --------------------------------------------------------------------


class Ctx:
    def __init__(self, text: str) -> None:
        self.body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": text}]}
        self.state = {}


async def test_choose_routes_topics(trained, tmp_path):
    model, _, _ = trained
    path = model.save(tmp_path / "router.npz")
    runtime = Runtime(KeelConfig(state_dir=tmp_path))
    try:
        router = learned.LearnedRouter.from_options(
            {"model_file": str(path), "strong": "gpt-4o", "cheap": "smollm2", "threshold": 0.5},
            runtime)
        await router.start()
        assert (router.strong, router.cheap) == ("gpt-4o", "smollm2")
        cooking = ["How long do I bake cinnamon rolls?", "What is a good recipe for gnocchi?"]
        taxes = ["Can I deduct my internet bill from income tax?",
                 "How are stock dividends taxed on my tax return?"]
        for text in cooking:
            ctx = Ctx(text)
            assert await router.choose(ctx) == "cheap", (text, ctx.state)
            assert ctx.state["router.p_cheap"] >= 0.5
        for text in taxes:
            ctx = Ctx(text)
            assert await router.choose(ctx) == "strong", (text, ctx.state)
        # The threshold is the knob: at 0 everything is cheap, at 1 everything strong.
        for threshold, expected in ((0.0, "cheap"), (1.0, "strong")):
            knob = learned.LearnedRouter.from_options(
                {"model_file": str(path), "strong": "s", "cheap": "c", "threshold": threshold},
                runtime)
            assert await knob.choose(Ctx(taxes[0] if threshold == 0 else cooking[0])) == expected
    finally:
        await runtime.aclose()


async def test_model_for_another_embedder_is_refused(trained, tmp_path):
    model, _, _ = trained
    other = learned.RouterModel(model.weights, model.bias, "other-embedder:abc", 0.5)
    path = other.save(tmp_path / "other.npz")
    runtime = Runtime(KeelConfig(state_dir=tmp_path))
    try:
        router = learned.LearnedRouter.from_options(
            {"model_file": str(path)}, runtime)
        assert (router.strong, router.cheap) == ("strong", "cheap")  # the default group names
        router = learned.LearnedRouter.from_options(
            {"model_file": str(path), "strong": "s", "cheap": "c"}, runtime)
        assert (router.strong, router.cheap) == ("s", "c")
        with pytest.raises(ConfigError, match="other-embedder:abc"):
            await router.start()
        with pytest.raises(ConfigError, match="retrain"):
            await router.choose(Ctx("anything"))
    finally:
        await runtime.aclose()


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model_file"):
        learned.LearnedRouter.from_options({"strong": "s", "cheap": "c"}, None)
    with pytest.raises(ConfigError, match="threshold"):
        learned.LearnedRouter.from_options({"model_file": "x.npz", "threshold": 2}, None)
    with pytest.raises(ConfigError, match="does not exist"):
        learned.LearnedRouter.from_options(
            {"model_file": str(tmp_path / "none.npz"), "strong": "s", "cheap": "c"}, None)


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_train_and_evaluate(store_with_run, tmp_path):
    _, url, run_id, _, _ = store_with_run
    out = tmp_path / "cli-router.npz"
    runner = CliRunner()
    done = runner.invoke(cli, ["router", "train", "topics", "--strong", "big", "--cheap", "small",
                               "--out", str(out), "--threshold", "0.4", "--db", url])
    assert done.exit_code == 0, done.output
    assert "trained on" in done.output and out.is_file()
    assert learned.RouterModel.load(out).threshold == 0.4

    done = runner.invoke(cli, ["router", "evaluate", str(out), run_id[:12], "--db", url])
    assert done.exit_code == 0, done.output
    assert "APGR" in done.output and "CPT(95%)" in done.output and "random" in done.output

    done = runner.invoke(cli, ["router", "evaluate", str(out), run_id, "--db", url, "--json"])
    report = json.loads(done.output)
    assert report["learned"]["apgr"] > 0.68
    assert report["curve"][0]["strong_share"] == 0.0
    assert report["curve"][-1]["quality"] == 1.0

    done = runner.invoke(cli, ["router", "train", run_id, "--strong", "nope", "--cheap", "small",
                               "--out", str(out), "--db", url])
    assert done.exit_code == 2 and "no variant 'nope'" in done.output


def test_run_store_with_no_shared_samples_is_an_error(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        samples = fixture_samples()[:4]
        run_id = make_run(store, samples, [cell("big", s.id, 1.0) for s, _ in samples])
        with pytest.raises(InvalidRequest, match="no variant 'small'"):
            learned.examples_from_runs(store, [run_id], "big", "small")
    finally:
        store.close()


def test_choose_text_falls_back_to_conversation():
    body = {"messages": [{"role": "system", "content": "sys"},
                         {"role": "assistant", "content": "hello"}]}
    assert learned.request_text(body) == "hello"
    assert asyncio.iscoroutinefunction(learned.LearnedRouter.choose)


async def test_a_served_route_sends_each_request_to_the_group_the_trained_model_picks(
        trained, tmp_path):
    """End to end over a real socket: keel.yaml-shaped config, a trained model file, and the
    answer (and x-keel-model) coming from the deployment of the group the router chose."""
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from keel.api import create_app
    from keel.gateway import Gateway

    model, _, _ = trained
    path = model.save(tmp_path / "router.npz")
    config = KeelConfig.model_validate({
        "state_dir": str(tmp_path),
        "providers": {"fake": {"kind": "fake"}},
        "models": {"assistant": {"router": {
            "deployments": [{"provider": "fake", "model": "fixed:from the strong model",
                             "group": "strong"},
                            {"provider": "fake", "model": "fixed:from the cheap model",
                             "group": "cheap"}],
            "learned": {"model_file": str(path), "threshold": 0.5},
        }}},
    })
    gateway = Gateway(config)
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http:
            async def ask(text: str) -> tuple[str, str]:
                body = {"model": "assistant", "messages": [{"role": "user", "content": text}]}
                async with http.post(server.make_url("/v1/chat/completions"), json=body) as r:
                    assert r.status == 200, await r.text()
                    answer = (await r.json())["choices"][0]["message"]["content"]
                    return answer, r.headers["x-keel-model"]

            assert await ask("What is a good recipe for gnocchi?") == (
                "from the cheap model", "fixed:from the cheap model")
            assert await ask("Can I deduct my internet bill from income tax?") == (
                "from the strong model", "fixed:from the strong model")
    finally:
        await server.close()
