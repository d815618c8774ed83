"""keel.ops.metrics: what traces add, the trace writer's figures, the layers' registry, and
several worker processes sharing one directory (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

from keel.ops.metrics import (
    MAX_ERROR_KINDS,
    MULTIPROC_ENV,
    MetricConflict,
    Metrics,
    prepare_multiprocess,
    worker_exited,
)
from keel.pipeline.trace import Trace


def samples(text: str | bytes) -> dict[tuple, float]:
    """{(sample name, frozenset of labels): value} of an exposition, read by the client's parser."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels) -> float | None:
    return found.get((name, frozenset(labels.items())))


def finished(status=200, **fields) -> Trace:
    trace = Trace(**fields)
    trace.finish(status)
    return trace


ECHO = {"endpoint": "chat.completions", "model": "fake/echo", "provider": "fake"}


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def test_a_trace_adds_its_request_latency_tokens_and_cost():
    metrics = Metrics()
    for _ in range(3):
        metrics.observe(finished(model="fake/echo", provider="fake", prompt_tokens=5,
                                 completion_tokens=7, cost_usd=0.25))
    stream = Trace(model="fake/echo", provider="fake", stream=True, prompt_tokens=1,
                   completion_tokens=2)
    stream.mark_first_token()
    stream.finish(200)
    metrics.observe(stream)
    metrics.observe(finished(model="fake/emb", provider="fake", endpoint="embeddings",
                             prompt_tokens=9))

    found = samples(metrics.render()[0])
    assert value(found, "keel_requests_total", **ECHO, status="200") == 4
    assert value(found, "keel_request_duration_seconds_count", **ECHO) == 4
    assert value(found, "keel_time_to_first_token_seconds_count", **ECHO) == 1
    assert value(found, "keel_tokens_total", **ECHO, type="prompt") == 16
    assert value(found, "keel_tokens_total", **ECHO, type="completion") == 23
    assert value(found, "keel_cost_usd_total", **ECHO) == pytest.approx(0.75)
    embeddings = {"endpoint": "embeddings", "model": "fake/emb", "provider": "fake"}
    assert value(found, "keel_requests_total", **embeddings, status="200") == 1
    assert value(found, "keel_tokens_total", **embeddings, type="prompt") == 9
    # A route that never streamed, or never had a price, shows no empty series for it.
    assert value(found, "keel_time_to_first_token_seconds_count", **embeddings) is None
    assert value(found, "keel_cost_usd_total", **embeddings) is None


def test_unknown_models_share_one_series_whatever_their_names():
    metrics = Metrics()
    for i in range(200):
        trace = Trace(model=f"made-up-{i}")  # never routed: provider stays None
        trace.error = {"type": "invalid_request_error", "code": "model_not_found",
                       "message": "...", "param": "model"}
        trace.finish(404)
        metrics.observe(trace)
    found = samples(metrics.render()[0])
    other = {"endpoint": "chat.completions", "model": "other", "provider": "none"}
    assert value(found, "keel_requests_total", **other, status="404") == 200
    assert value(found, "keel_errors_total", endpoint="chat.completions",
                 type="invalid_request_error", code="model_not_found") == 200
    assert not any("made-up" in str(labels) for _, labels in found)


def test_error_kinds_are_bounded():
    metrics = Metrics()
    for i in range(MAX_ERROR_KINDS + 30):
        metrics.observe(finished(502, model="fake/x", provider="fake",
                                 error={"type": "upstream_error", "code": f"vendor_{i}"}))
    found = samples(metrics.render()[0])
    errors = {labels: v for (name, labels), v in found.items() if name == "keel_errors_total"}
    assert len(errors) == MAX_ERROR_KINDS + 1
    assert value(found, "keel_errors_total", endpoint="chat.completions", type="other",
                 code="other") == 30
    assert sum(errors.values()) == MAX_ERROR_KINDS + 30


@pytest.mark.parametrize("trace", [
    Trace(),  # never finished: no status, no latency
    Trace(provider="fake"),  # routed, model missing
    Trace(model="m", provider="fake", status=200, prompt_tokens="5", completion_tokens=-1,
          cost_usd=float("nan"), ttft_ms=True, latency_ms="slow"),
    Trace(model="m", provider="fake", status=500, error="boom"),
    Trace(model="m" * 10_000, provider="p" * 10_000, status=200, error={"type": None}),
    Trace(endpoint=None, status=418, error={"type": ["a"], "code": {"b": 1}}),
    object(),  # not a trace at all
    None,
])
def test_observe_never_raises_on_a_half_filled_trace(trace):
    metrics = Metrics()
    assert metrics.observe(trace) is None
    found = samples(metrics.render()[0])  # and the output still parses
    if isinstance(trace, Trace):
        counted = [v for (name, _), v in found.items() if name == "keel_requests_total"]
        assert counted == [1.0]
        assert all(len(v) <= 64 for _, labels in found for _, v in labels)


def test_a_finished_traces_is_counted_after_a_broken_one():
    metrics = Metrics()
    metrics.observe(object())
    metrics.observe(finished(**{k: v for k, v in ECHO.items() if k != "endpoint"}))
    assert value(samples(metrics.render()[0]), "keel_requests_total", **ECHO,
                 status="200") == 1


class StubRecorder:
    def __init__(self, **stats):
        self.figures = {"written": 0, "dropped": 0, "pending": 0, "errors": 0, **stats}

    def stats(self):
        return dict(self.figures)


def test_trace_writer_figures_are_read_when_scraped():
    metrics = Metrics()
    holder = {"recorder": None}
    metrics.watch_recorder(lambda: holder["recorder"])
    assert value(samples(metrics.render()[0]), "keel_trace_writer_pending") is None  # tracing off

    recorder = holder["recorder"] = StubRecorder(written=10, dropped=2, pending=5, errors=1)
    found = samples(metrics.render()[0])
    assert value(found, "keel_trace_writer_pending") == 5
    assert value(found, "keel_trace_writer_written_total") == 10
    assert value(found, "keel_trace_writer_dropped_total") == 2
    assert value(found, "keel_trace_writer_errors_total") == 1

    recorder.figures.update(written=15, pending=0)
    found = samples(metrics.render()[0])
    assert value(found, "keel_trace_writer_written_total") == 15
    assert value(found, "keel_trace_writer_pending") == 0


def test_the_layers_registry_is_idempotent():
    metrics = Metrics()
    hits = metrics.counter("keel_cache_hits_total", "Cache hits", ["model"])
    assert metrics.counter("keel_cache_hits_total", "Cache hits", ("model",)) is hits
    assert metrics.counter("keel_cache_hits", "Cache hits", ("model",)) is hits
    size = metrics.gauge("keel_cache_entries", "Entries held")
    assert metrics.gauge("keel_cache_entries", "Entries held") is size
    wait = metrics.histogram("keel_router_wait_seconds", "Wait", ["route"], buckets=[0.1, 1])
    assert metrics.histogram("keel_router_wait_seconds", "Wait", ["route"],
                             buckets=(0.1, 1.0)) is wait

    hits.labels("fake/echo").inc(3)
    size.set(42)
    wait.labels("a").observe(0.5)
    found = samples(metrics.render()[0])
    assert value(found, "keel_cache_hits_total", model="fake/echo") == 3
    assert value(found, "keel_cache_entries") == 42
    assert value(found, "keel_router_wait_seconds_bucket", route="a", le="1.0") == 1
    assert value(found, "keel_router_wait_seconds_bucket", route="a", le="0.1") == 0


@pytest.mark.parametrize("redefine, says", [
    (lambda m: m.gauge("keel_cache_hits", "Cache hits", ("model",)), "already defined as a counter"),
    (lambda m: m.counter("keel_cache_hits_total", "Cache hits", ("route",)), "labels ['route']"),
    (lambda m: m.histogram("keel_wait_seconds", "Wait", buckets=(1, 2)), "buckets"),
    (lambda m: m.gauge("keel_requests_total", "clashes with a built-in series"), "keel_requests"),
    (lambda m: m.counter("keel_trace_writer_written", "the writer's"), "keel_trace_writer_written"),
    (lambda m: m.counter("bad name", "not a metric name"), "bad name"),
])
def test_a_conflicting_definition_is_refused_clearly(redefine, says):
    metrics = Metrics()
    metrics.watch_recorder(lambda: None)
    metrics.counter("keel_cache_hits_total", "Cache hits", ("model",))
    metrics.histogram("keel_wait_seconds", "Wait")
    with pytest.raises(MetricConflict, match="metric") as refused:
        redefine(metrics)
    assert says in str(refused.value)
    assert refused.value.status == 500


def test_two_gateways_in_one_process_count_apart():
    first, second = Metrics(), Metrics()
    first.observe(finished(model="fake/echo", provider="fake"))
    first.counter("keel_layer_things_total", "things").inc()
    second.counter("keel_layer_things_total", "things")  # no clash with the first's
    assert value(samples(first.render()[0]), "keel_requests_total", **ECHO, status="200") == 1
    found = samples(second.render()[0])
    assert value(found, "keel_requests_total", **ECHO, status="200") is None
    assert value(found, "keel_layer_things_total") == 0


def test_openmetrics_when_the_scraper_asks_for_it():
    metrics = Metrics()
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


# -- several worker processes -----------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys
    from keel.ops.metrics import Metrics
    from keel.pipeline.trace import Trace

    traces, pending, written = (int(a) for a in sys.argv[1:4])
    metrics = Metrics()
    assert metrics.multiprocess

    class Recorder:
        figures = {"written": written, "dropped": 0, "pending": pending, "errors": 0}

        def stats(self):
            return dict(self.figures)

    recorder = Recorder()
    metrics.watch_recorder(lambda: recorder)
    layer = metrics.counter("keel_layer_hits_total", "a layer's counter")
    for _ in range(traces):
        trace = Trace(model="fake/echo", provider="fake", prompt_tokens=3, completion_tokens=4,
                      cost_usd=0.5)
        trace.finish(200)
        metrics.observe(trace)
        layer.inc()
    metrics.render()  # copies the recorder's figures now
    print("ready", flush=True)
    for line in sys.stdin:
        if line == "write 5\\n":  # the writer catches up: 5 more written, none pending
            recorder.figures.update(written=recorder.figures["written"] + 5, pending=0)
        sys.stdout.write(metrics.render()[0].decode() + "<end>\\n")
        sys.stdout.flush()
""")


def _worker(*args: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", WORKER, *map(str, args)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout.readline() == "ready\n"
    return process


def _scrape(process: subprocess.Popen, command: str = "render") -> dict:
    process.stdin.write(command + "\n")
    process.stdin.flush()
    lines = []
    while (line := process.stdout.readline()) != "<end>\n":
        assert line, "the worker died"
        lines.append(line)
    return samples("".join(lines))


def test_several_workers_are_added_up_in_one_scrape(tmp_path, monkeypatch):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"a previous run's file")
    monkeypatch.setenv(MULTIPROC_ENV, "restored after the test")
    prepare_multiprocess(directory)
    assert not list(directory.iterdir())  # emptied: a previous run's counts are not added
    a = _worker(3, 2, 10)
    b = _worker(5, 1, 20)
    try:
        found = _scrape(a)
        assert value(found, "keel_requests_total", **ECHO, status="200") == 8
        assert value(found, "keel_request_duration_seconds_count", **ECHO) == 8
        assert value(found, "keel_tokens_total", **ECHO, type="prompt") == 24
        assert value(found, "keel_cost_usd_total", **ECHO) == pytest.approx(4.0)
        assert value(found, "keel_layer_hits_total") == 8
        assert value(found, "keel_trace_writer_pending") == 3  # livesum: both workers' queues
        assert value(found, "keel_trace_writer_written_total") == 30

        b.stdin.close()
        assert b.wait(timeout=30) == 0
        worker_exited(b.pid)
        found = _scrape(a)
        assert value(found, "keel_trace_writer_pending") == 2  # b's queue went with it
        assert value(found, "keel_requests_total", **ECHO, status="200") == 8  # its counts stay
        assert value(found, "keel_trace_writer_written_total") == 30

        found = _scrape(a, "write 5")  # what changed since the last copy is added
        assert value(found, "keel_trace_writer_written_total") == 35
        assert value(found, "keel_trace_writer_pending") == 0
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.stdin.close()
                process.wait(timeout=30)
