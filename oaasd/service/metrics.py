"""Prometheus metrics of one daemon, on a registry it owns (never the global one).

Counters and histograms are fed by one-line hooks in the scheduler, the
runner, the store and the callbacks; gauges are computed at scrape time:
tasks by state with one ``GROUP BY`` over the ``tasks_state_id`` index, the
queue, nodes and resources from memory.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from oaasd.service.cluster import NODE_STATES, Cluster, resources
from oaasd.states import State

FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
NOT_FAILURES = (State.COMPLETED, State.CANCELLED)
CPU_BUCKETS = (0.01, 0.1, 1, 10, 60, 600, 3600, 36000, 360000)
RSS_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
MAX_USER_LABELS = 64  # users beyond these share the label "other": cardinality stays bounded


class Metrics:
    """Every metric of the daemon, and the scrape that renders them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.tasks = Gauge("oaasd_tasks", "Tasks by state", ["state"], registry=r)
        self.queue_length = Gauge("oaasd_queue_length", "Tasks waiting in the scheduler's queue", registry=r)
        self.oldest_pending = Gauge("oaasd_oldest_pending_age_seconds",
                                    "Age of the oldest task in the queue (0 when empty)", registry=r)
        self.nodes = Gauge("oaasd_nodes", "Nodes by state", ["state"], registry=r)
        self.capacity = Gauge("oaasd_resource_capacity", "Total resources of all nodes", ["resource"], registry=r)
        self.free = Gauge("oaasd_resource_free", "Free resources of schedulable nodes", ["resource"], registry=r)
        self.subscribers = Gauge("oaasd_event_subscribers", "Open event streams", registry=r)
        self.pass_seconds = Histogram("oaasd_scheduling_pass_seconds", "Duration of one scheduling pass",
                                      buckets=FAST_BUCKETS, registry=r)
        self.start_latency = Histogram("oaasd_submit_to_start_seconds",
                                       "From submission to the start of an attempt", buckets=WAIT_BUCKETS, registry=r)
        self.commit_seconds = Histogram("oaasd_sqlite_commit_seconds", "Duration of the writer's COMMIT",
                                        buckets=FAST_BUCKETS, registry=r)
        self.launches = Counter("oaasd_launches", "Attempts launched", registry=r)
        self.failures = Counter("oaasd_failures", "Attempts that ended in failure, by state and reason",
                                ["state", "reason"], registry=r)
        self.cpu_seconds = Counter("oaasd_attempt_cpu_seconds", "User + system CPU seconds of ended attempts, "
                                   f"by user (the first {MAX_USER_LABELS} users; later ones as 'other')",
                                   ["user"], registry=r)
        self.attempt_cpu = Histogram("oaasd_attempt_cpu_seconds_per_attempt", "CPU seconds of one ended attempt",
                                     buckets=CPU_BUCKETS, registry=r)
        self.attempt_rss = Histogram("oaasd_attempt_max_rss_mb", "Peak memory (MB) of one ended attempt",
                                     buckets=RSS_BUCKETS, registry=r)
        self._users: set[str] = set()
        self.callbacks = Counter("oaasd_callback_posts", "Callback POSTs by outcome (delivered, error)",
                                 ["outcome"], registry=r)

    # ---- hooks --------------------------------------------------------
    def started(self, submitted_at: float) -> None:
        """An attempt was committed RUNNING for a task submitted at ``submitted_at``."""
        self.launches.inc()
        self.start_latency.observe(max(0.0, time.time() - submitted_at))

    def attempt_ended(self, state: State, reason: str) -> None:
        """An attempt ended; failures (not COMPLETED, not CANCELLED) are counted by reason."""
        if state not in NOT_FAILURES:
            self.failures.labels(state.value, str(reason)).inc()

    def accounted(self, user: str, max_rss_mb: float | None, cpu_s: float | None) -> None:
        """An attempt ended with this accounting (None: not measured)."""
        if cpu_s is not None:
            if user not in self._users and len(self._users) < MAX_USER_LABELS:
                self._users.add(user)
            self.cpu_seconds.labels(user if user in self._users else "other").inc(cpu_s)
            self.attempt_cpu.observe(cpu_s)
        if max_rss_mb is not None:
            self.attempt_rss.observe(max_rss_mb)

    # ---- scrape -------------------------------------------------------
    def refresh(self, counts: dict[str, int], queue: Sequence[Any], cluster: Cluster, subscribers: int) -> None:
        """Set the gauges: tasks by state (``counts``, one GROUP BY), the queue, nodes, resources, streams."""
        for state in State:
            self.tasks.labels(state.value).set(counts.get(state.value, 0))
        self.queue_length.set(len(queue))
        oldest = min((e.submitted_at for e in queue), default=None)
        self.oldest_pending.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        self._cluster(cluster)
        self.subscribers.set(subscribers)

    def _cluster(self, cluster: Cluster) -> None:
        states = Tally(cluster.states().values())
        for state in NODE_STATES:
            self.nodes.labels(state).set(states.get(state, 0))
        table = cluster.table
        for name, value in resources(table.total.sum(axis=0)).items():
            self.capacity.labels(name).set(value)
        for name, value in resources(table.free[table.schedulable].sum(axis=0)).items():
            self.free.labels(name).set(value)
