"""STUB (issue 8, helper "metrics" replaces this): Prometheus metrics."""

from __future__ import annotations


class Metrics:
    def watch_recorder(self, get_recorder) -> None:
        pass

    def observe(self, trace) -> None:
        pass
