"""Prometheus metrics (docs/operations.md): the per-process ones, and the exposition.

Two kinds. What must be cluster-wide (tasks by model, engine and status; queue depth; the
oldest PENDING task's age; running tasks) is read from the database at scrape time by
``GET /metrics`` and exposed through :class:`ClusterCollector`, so every process answers the
same figures. What one process sees (a task its worker finished, a relay call it made, a
webhook it delivered) is an ordinary ``prometheus_client`` metric in :data:`REGISTRY`, with
the process metrics; recording costs about a microsecond and never raises.

Imports nothing of stillmotion: every layer that records (engines, tasks, worker, api) may
import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "ClusterCollector",
    "TaskCounts",
    "exposition",
    "observe_task_finished",
    "record_relay_call",
    "record_webhook_delivery",
]

#: The text exposition format, as every Prometheus version reads it (prometheus_client 0.22+
#: says ``version=1.0.0`` in its CONTENT_TYPE_LATEST for the same text with our ASCII names).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: This process's metrics: ours and the process/platform/GC collectors (our own registry, so
#: a library registering in prometheus_client's global one changes nothing here).
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

#: Seconds: from sub-second (a relay submit, a tiny render) to the relay's hour deadline.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, math.inf)

QUEUE_WAIT = Histogram(
    "stillmotion_task_queue_wait_seconds",
    "From submit to the first claim, of tasks this process's worker finished.",
    ["engine", "status"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
RENDER_TIME = Histogram(
    "stillmotion_task_render_seconds",
    "From the claim to the final write, of the last attempt of tasks this process's worker "
    "finished (media fetch, engine, storing the video).",
    ["engine", "status"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
END_TO_END = Histogram(
    "stillmotion_task_end_to_end_seconds",
    "From submit to the final status, of tasks this process's worker finished.",
    ["engine", "status"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
RELAY_CALLS = Counter(
    "stillmotion_relay_upstream_requests",
    "DashScope upstream API calls made by this process's relay, by channel and HTTP status "
    "(`error`: no answer: connect error, timeout, dropped reply).",
    ["channel", "status"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "stillmotion_webhook_deliveries",
    "Webhook delivery attempts made by this process, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)


def observe_task_finished(
    *,
    engine: str,
    status: str,
    created_at: float,
    scheduled_at: float | None,
    started_at: float,
    ended_at: float,
) -> None:
    """A task this process's worker ended (``status``: SUCCEEDED, FAILED or CANCELED).

    ``scheduled_at``: its first claim; ``started_at``: this (its last) claim; all times are
    the store's clock (epoch seconds). Negative spans (clock skew between machines) count
    as 0.
    """
    QUEUE_WAIT.labels(engine, status).observe(max(0.0, (scheduled_at or started_at) - created_at))
    RENDER_TIME.labels(engine, status).observe(max(0.0, ended_at - started_at))
    END_TO_END.labels(engine, status).observe(max(0.0, ended_at - created_at))


def record_relay_call(channel: str, status: int | str) -> None:
    """One upstream call answered with HTTP ``status`` (or ``"error"``: no answer)."""
    RELAY_CALLS.labels(channel, str(status)).inc()


def record_webhook_delivery(outcome: str) -> None:
    """One webhook delivery attempt ended with ``outcome``.

    For the webhook sender: call it once per attempt with a short, fixed word (a label
    value: keep the set small), e.g. ``delivered`` (2xx), ``failed`` (an answer other than
    2xx, or no answer; it will be retried), ``gave_up`` (the last attempt failed),
    ``refused`` (the URL was refused by the SSRF guard). Never a URL or a secret.
    """
    WEBHOOK_DELIVERIES.labels(outcome).inc()


@dataclass(frozen=True)
class TaskCounts:
    """The cluster's tasks as the database saw them at ``taken_at`` (store clock)."""

    #: ``(model, engine, status) -> tasks``
    by_group: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    #: ``created_at`` of the oldest PENDING task; None when none is PENDING
    oldest_pending: float | None = None
    taken_at: float = 0.0
    #: False when the database did not answer (the other fields are then empty)
    up: bool = True


class ClusterCollector(Collector):
    """The database-wide figures of one :class:`TaskCounts` (the scrape's snapshot)."""

    def __init__(self, counts: TaskCounts):
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        up = GaugeMetricFamily(
            "stillmotion_database_up", "1 when the task database answered this scrape, else 0."
        )
        up.add_metric([], 1.0 if counts.up else 0.0)
        yield up
        if not counts.up:
            return
        tasks = GaugeMetricFamily(
            "stillmotion_tasks",
            "Tasks in the database by model, engine and status (every process, every machine).",
            labels=["model", "engine", "status"],
        )
        pending = running = 0
        for (model, engine, status), n in sorted(counts.by_group.items()):
            tasks.add_metric([model, engine, status], float(n))
            if status == "PENDING":
                pending += n
            elif status == "RUNNING":
                running += n
        yield tasks
        depth = GaugeMetricFamily("stillmotion_queue_depth", "PENDING tasks, all engines.")
        depth.add_metric([], float(pending))
        yield depth
        oldest = GaugeMetricFamily(
            "stillmotion_queue_oldest_pending_age_seconds",
            "Age of the oldest PENDING task (0 when none is PENDING).",
        )
        age = 0.0 if counts.oldest_pending is None else counts.taken_at - counts.oldest_pending
        oldest.add_metric([], max(0.0, age))
        yield oldest
        busy = GaugeMetricFamily("stillmotion_tasks_running", "RUNNING tasks, all workers.")
        busy.add_metric([], float(running))
        yield busy


def exposition(counts: TaskCounts | None) -> bytes:
    """The text format of this process's metrics, after ``counts``'s when given."""
    out = generate_latest(REGISTRY)
    if counts is not None:
        cluster = CollectorRegistry(auto_describe=False)
        cluster.register(ClusterCollector(counts))
        out = generate_latest(cluster) + out
    return out
