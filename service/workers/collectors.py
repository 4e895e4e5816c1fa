"""Metrics about the replica and its workers: the replica's id as an info metric, the
siblings that did not answer a worker, and, in the supervisor, every worker's series
with a `worker` label plus the supervisor's own counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.workers.exposition import WORKER_LABEL, joined, labelled


class ReplicaInfoCollector(Collector):
    """llm_gateway_replica_info{replica="..."} 1: one series per process serving metrics."""

    def __init__(self, replica_id: str, workers: int) -> None:
        self._replica_id = replica_id
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "llm_gateway_replica_info",
            "Always 1: names the replica (server.replica_id) and its worker count.",
            labels=["replica", "workers"],
        )
        info.add_metric([self._replica_id, str(self._workers)], 1.0)
        yield info


class PeerFailuresCollector(Collector):
    def __init__(self, failures: Callable[[], int]) -> None:
        self._failures = failures

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "llm_gateway_worker_peer_failures",
            "Times a sibling worker did not answer this worker's stats question in time.",
            value=self._failures(),
        )


class WorkersCollector(Collector):
    """Every worker's metrics (asked over its socket at scrape time), labelled by worker,
    and the supervisor's restarts and unanswered scrapes."""

    def __init__(
        self,
        count: int,
        fetch: Callable[[int], str | None],
        restarts: Callable[[], Mapping[int, int]],
    ) -> None:
        self._count = count
        self._fetch = fetch
        self._restarts = restarts
        self.scrape_failures = dict.fromkeys(range(count), 0)

    def describe(self) -> Iterator[Metric]:
        """Nothing at registration: the workers are asked at scrape time only."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        groups = []
        for index in range(self._count):
            text = self._fetch(index)
            if text is None:
                self.scrape_failures[index] += 1
                continue
            groups.append(labelled(text, {WORKER_LABEL: str(index)}))
        yield from joined(groups)
        restarts = CounterMetricFamily(
            "llm_gateway_worker_restarts",
            "Worker processes that died unexpectedly and were started again.",
            labels=[WORKER_LABEL],
        )
        missed = CounterMetricFamily(
            "llm_gateway_worker_scrape_failures",
            "Scrapes in which a worker did not answer: its series were missing.",
            labels=[WORKER_LABEL],
        )
        counts = self._restarts()
        for index in range(self._count):
            restarts.add_metric([str(index)], counts.get(index, 0))
            missed.add_metric([str(index)], self.scrape_failures[index])
        yield restarts
        yield missed
