"""Prometheus metrics: what each finished trace adds, the trace writer's health, and a small
registry on which the layers (guards, cache, router) define their own counters.

One process (`keel serve`): each `Metrics` has its own `CollectorRegistry`, so several gateways
(and tests) in one process never share a series. Several workers (`keel serve --workers N`):
the parent calls `prepare_multiprocess(dir)` before it starts them, which sets
`PROMETHEUS_MULTIPROC_DIR`; each worker's values then live in mmap files in that directory
(prometheus-client's multiprocess mode) and `render()`, whichever worker serves the scrape,
merges every worker's files. The parent calls `worker_exited(pid)` when a worker ends.

`observe(trace)` runs on the event loop for every request: it resolves each label set's child
series once (a dict lookup afterwards) and never raises. Labels stay bounded whatever clients
send: a model no route knows (`trace.provider is None`) is counted as `model="other"`, and
error type/code pairs beyond `MAX_ERROR_KINDS` as `other`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from keel.errors import KeelError

log = logging.getLogger("keel.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
NONE = "none"
MAX_ERROR_KINDS = 50  # distinct (type, code) pairs; upstreams may send codes of their own
MAX_LABEL = 64
# An LLM call takes from milliseconds (a cache hit, a refusal) to minutes (a long generation).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SYNC_INTERVAL_S = 1.0  # multiprocess: how often a worker copies its trace writer's counters

_ROUTE = ("endpoint", "model", "provider")
# The classic names every scraper and PromQL query takes unquoted (prometheus-client would
# accept any UTF-8, which older Prometheus servers cannot read).
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class MetricConflict(KeelError, ValueError):
    """A metric name defined again with another type, labels or buckets (a bug in a layer)."""

    code = "metric_conflict"


class Metrics:
    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        # `_created` series double the output and tell nothing a scrape's time does not.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        if self.multiprocess_dir:
            _use_mmap_values()
        else:
            ProcessCollector(registry=self.registry)
        self._defined: dict[str, tuple] = {}
        self._series: dict[tuple, _Series] = {}
        self._errors: dict[tuple, object] = {}
        self._observe_failed = False
        self._recorder_sync: _RecorderSync | None = None
        self._recorder_collector: _RecorderCollector | None = None

        self.requests = self.counter(
            "keel_requests_total", "Requests finished, by route and HTTP status",
            _ROUTE + ("status",))
        self.latency = self.histogram(
            "keel_request_duration_seconds", "Time from request to last byte (errors included)",
            _ROUTE, buckets=LATENCY_BUCKETS)
        self.ttft = self.histogram(
            "keel_time_to_first_token_seconds", "Streams: time from request to the first token",
            _ROUTE, buckets=TTFT_BUCKETS)
        self.tokens = self.counter(
            "keel_tokens_total", "Tokens reported by the provider (type: prompt or completion)",
            _ROUTE + ("type",))
        self.cost = self.counter(
            "keel_cost_usd_total", "Spend in US dollars, from the model's pricing", _ROUTE)
        self.errors = self.counter(
            "keel_errors_total", "Failed requests, by OpenAI error type and code",
            ("endpoint", "type", "code"))

    @property
    def multiprocess(self) -> bool:
        return self.multiprocess_dir is not None

    # -- what each request adds ---------------------------------------------------------------

    def observe(self, trace) -> None:
        """Count one finished trace. Never raises: a metric must not fail a request."""
        try:
            self._observe(trace)
        except Exception:
            if not self._observe_failed:  # once: a broken trace shape would flood the log
                self._observe_failed = True
                log.exception("metrics could not count trace %s", getattr(trace, "id", None))

    def _observe(self, trace) -> None:
        provider = trace.provider
        if provider is None:  # never reached a route: the model name is the client's word
            route = (_label(trace.endpoint), OTHER, NONE)
        else:
            route = (_label(trace.endpoint), _label(trace.model), _label(provider))
        status = trace.status
        key = (route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self, route, status)
        series.requests.inc()
        if _positive(trace.latency_ms):
            series.latency.observe(trace.latency_ms / 1000.0)
        if _positive(trace.ttft_ms):
            series.ttft.observe(trace.ttft_ms / 1000.0)
        if _positive(trace.prompt_tokens):
            series.prompt_tokens.inc(trace.prompt_tokens)
        if _positive(trace.completion_tokens):
            series.completion_tokens.inc(trace.completion_tokens)
        if _positive(trace.cost_usd):
            series.cost.inc(trace.cost_usd)
        if trace.error is not None:
            self._error_counter(route[0], trace.error).inc()

    def _error_counter(self, endpoint: str, error):
        if isinstance(error, dict):
            kind = (_label(error.get("type")), _label(error.get("code")))
        else:
            kind = (OTHER, OTHER)
        key = (endpoint, kind)
        child = self._errors.get(key)
        if child is None:
            if len(self._errors) >= MAX_ERROR_KINDS:
                key = (endpoint, (OTHER, OTHER))
                child = self._errors.get(key)
            if child is None:
                child = self._errors[key] = self.errors.labels(endpoint, *key[1])
        return child

    # -- the trace writer, read when scraped --------------------------------------------------

    def watch_recorder(self, get_recorder: Callable[[], object]) -> None:
        """Report the trace writer's `stats()` (queue depth, written, dropped, errors).

        One process: read at scrape time by a collector. Several workers: a scrape reaches one
        worker only, so each worker copies its own counters into the shared files every
        `SYNC_INTERVAL_S` (and when it serves a scrape)."""
        if self.multiprocess:
            if self._recorder_sync is None:
                self._recorder_sync = _RecorderSync(self, get_recorder)
            else:
                self._recorder_sync.get_recorder = get_recorder
        elif self._recorder_collector is None:
            self._recorder_collector = _RecorderCollector(get_recorder)
            self._register(self._recorder_collector, "keel_trace_writer_*")
        else:
            self._recorder_collector.get_recorder = get_recorder

    # -- the registry the layers use -----------------------------------------------------------

    def counter(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> Counter:
        """A counter named `name` (a `_total` suffix is added in the output); the same
        definition again returns the same counter."""
        return self._define(Counter, name, documentation, labelnames)

    def gauge(self, name: str, documentation: str, labelnames: Iterable[str] = (),
              multiprocess_mode: str = "livesum") -> Gauge:
        """A gauge; with several workers its value is the sum over the live workers (or what
        `multiprocess_mode` says: livemax, max, mostrecent, ... as in prometheus-client)."""
        return self._define(Gauge, name, documentation, labelnames,
                            multiprocess_mode=multiprocess_mode)

    def histogram(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                  buckets: Iterable[float] = Histogram.DEFAULT_BUCKETS) -> Histogram:
        return self._define(Histogram, name, documentation, labelnames,
                            buckets=tuple(float(b) for b in buckets))

    def _define(self, cls, name: str, documentation: str, labelnames, **options):
        labelnames = tuple(labelnames)
        for word in (name, *labelnames):
            if not isinstance(word, str) or not _NAME.fullmatch(word):
                raise MetricConflict(
                    f"metric {name!r}: {word!r} is not a Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*)")
        key = name[: -len("_total")] if cls is Counter and name.endswith("_total") else name
        spec = (cls, labelnames, options)
        known = self._defined.get(key)
        if known is not None:
            if known[0] != spec:
                raise MetricConflict(
                    f"metric {key!r} is already defined as {_describe(*known[0])}; it cannot "
                    f"be defined again as {_describe(*spec)}")
            return known[1]
        try:
            metric = cls(name, documentation, labelnames, registry=None, **options)
        except ValueError as exc:
            raise MetricConflict(f"metric {name!r}: {exc}") from None
        self._register(metric, key)
        self._defined[key] = (spec, metric)
        return metric

    def _register(self, collector, name: str) -> None:
        try:
            self.registry.register(collector)
        except ValueError as exc:  # a name that clashes with another's series
            raise MetricConflict(f"metric {name!r}: {exc}") from None

    # -- the scrape -----------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition text (OpenMetrics when `accept` asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        if not self.multiprocess:
            return encoder(self.registry), content_type
        if self._recorder_sync is not None:
            self._recorder_sync.sync()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return encoder(registry), content_type


class _Series:
    """The child series of one (endpoint, model, provider, status): each resolved on first
    use, so a route that never streams shows no empty time-to-first-token histogram."""

    __slots__ = ("_metrics", "_route", "completion_tokens", "cost", "latency", "prompt_tokens",
                 "requests", "ttft")

    def __init__(self, metrics: Metrics, route: tuple[str, str, str], status) -> None:
        self._metrics = metrics
        self._route = route
        self.requests = metrics.requests.labels(*route, str(status) if status else NONE)

    def __getattr__(self, name: str):  # only for a slot not set yet
        metrics, route = self._metrics, self._route
        if name == "latency":
            child = metrics.latency.labels(*route)
        elif name == "ttft":
            child = metrics.ttft.labels(*route)
        elif name == "prompt_tokens":
            child = metrics.tokens.labels(*route, "prompt")
        elif name == "completion_tokens":
            child = metrics.tokens.labels(*route, "completion")
        elif name == "cost":
            child = metrics.cost.labels(*route)
        else:
            raise AttributeError(name)
        setattr(self, name, child)
        return child


_WRITER = {
    "written": "Traces written to the store",
    "dropped": "Traces dropped because the writer's buffer was full",
    "errors": "Failed attempts to write a batch of traces",
}
_PENDING = ("keel_trace_writer_pending", "Traces waiting to be written (queue depth)")


class _RecorderCollector:
    """One process: the trace writer's counters as they are when scraped."""

    def __init__(self, get_recorder) -> None:
        self.get_recorder = get_recorder

    def describe(self):
        yield GaugeMetricFamily(*_PENDING)
        for name, doc in _WRITER.items():
            yield CounterMetricFamily(f"keel_trace_writer_{name}", doc)

    def collect(self):
        recorder = self.get_recorder()
        if recorder is None:  # tracing off, or not started yet
            return
        stats = recorder.stats()
        yield GaugeMetricFamily(*_PENDING, value=stats.get("pending", 0))
        for name, doc in _WRITER.items():
            yield CounterMetricFamily(f"keel_trace_writer_{name}", doc, value=stats.get(name, 0))


class _RecorderSync:
    """Several workers: copies this worker's trace writer counters into the shared files.

    The queue depth is a `livesum` gauge (the sum over live workers; a worker's share goes
    with it when `worker_exited` is called). Written, dropped and errors are counters grown
    by what changed since the last copy, so they keep adding up across worker restarts."""

    def __init__(self, metrics: Metrics, get_recorder) -> None:
        self.get_recorder = get_recorder
        self.pending = metrics.gauge(*_PENDING, multiprocess_mode="livesum")
        self.counters = {name: metrics.counter(f"keel_trace_writer_{name}", doc)
                         for name, doc in _WRITER.items()}
        self._seen: dict[str, int] = {}
        self._recorder = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="keel-metrics-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stop = threading.Event()  # never set: a daemon thread that ends with the process
        while not stop.wait(SYNC_INTERVAL_S):
            try:
                self.sync()
            except Exception:
                log.exception("copying the trace writer's metrics failed")

    def sync(self) -> None:
        with self._lock:
            recorder = self.get_recorder()
            if recorder is not self._recorder:  # a new writer starts from zero
                self._recorder, self._seen = recorder, {}
            if recorder is None:
                return
            stats = recorder.stats()
            self.pending.set(stats.get("pending", 0))
            for name, counter in self.counters.items():
                now = stats.get(name, 0)
                seen = self._seen.get(name, 0)
                grown = now - seen if now >= seen else now  # went back: counting anew
                if grown > 0:
                    counter.inc(grown)
                self._seen[name] = now


# -- several workers -----------------------------------------------------------------------------


def prepare_multiprocess(directory: str | os.PathLike) -> Path:
    """In the parent, before the workers start: an empty `directory` for their metric files
    (the files of a previous run would be added to this one's), named in
    `PROMETHEUS_MULTIPROC_DIR` so the workers inherit it."""
    path = Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def worker_exited(pid: int, directory: str | os.PathLike | None = None) -> None:
    """In the parent, when a worker ends: its live gauges (queue depth) stop counting; its
    counters and histograms stay in the totals."""
    directory = directory or os.environ.get(MULTIPROC_ENV)
    if directory:
        mark_process_dead(pid, str(directory))


def _use_mmap_values() -> None:
    # prometheus-client picks where values live when it is first imported. A worker forked
    # from a parent that imported it before PROMETHEUS_MULTIPROC_DIR was set would keep them
    # in memory, invisible to the other workers' scrapes.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


# -- labels ----------------------------------------------------------------------------------------


def _label(value) -> str:
    if value is None or value == "":
        return NONE
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_LABEL]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _describe(cls, labelnames: tuple, options: dict) -> str:
    extra = "".join(f", {k}={v}" for k, v in options.items())
    return f"a {cls.__name__.lower()} with labels {list(labelnames)}{extra}"
