"""Metrics of several workers served as one exposition (pure).

Each worker's series get a `worker` label (its index) and families of the same name are
joined, so that `sum without (worker) (...)` adds the workers up and no two workers'
series collide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

WORKER_LABEL = "worker"


def labelled(text: str, labels: Mapping[str, str]) -> list[Metric]:
    """The families of one exposition text, every sample with `labels` added."""
    families = []
    for family in text_string_to_metric_families(text):
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [
            sample._replace(labels={**sample.labels, **labels}) for sample in family.samples
        ]
        families.append(copy)
    return families


def joined(groups: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name, holding the samples of every group's family of that name,
    in the order the names first appear."""
    by_name: dict[str, Metric] = {}
    for families in groups:
        for family in families:
            kept = by_name.get(family.name)
            if kept is None:
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                by_name[family.name] = kept
            kept.samples.extend(family.samples)
    return list(by_name.values())
