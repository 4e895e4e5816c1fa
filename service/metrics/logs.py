"""What the log guard (service.logs) held back and masked, read at scrape time: the
records the process did not write are counted, never lost silently."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from service.logs import LogGuard


class LogGuardCollector(Collector):
    def __init__(self, guard: LogGuard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "llm_gateway_log_records_suppressed",
            "Log records held back as repeats (libraries' warnings and masked records).",
            value=self._guard.suppressed,
        )
        yield CounterMetricFamily(
            "llm_gateway_log_records_redacted",
            "Log records written with a value withheld or a credential masked.",
            value=self._guard.redacted,
        )
