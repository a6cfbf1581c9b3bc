"""The hooks registry: "a task ended" and "an attempt reported metrics", fanned out.

The reporter and the intake call ``task_ended`` / ``metrics_reported`` after
the commit; tunings and callbacks subscribe at wiring time. Subscribers run
one after the other in subscription order, so a failure of one (a full
state disk) is seen by the caller, as when the calls were direct.
"""

from __future__ import annotations

from oaasd.ports import MetricsReport, MetricsReported, TaskEnd, TaskEnded


class Hooks:
    """Subscribers of the two events the runner and intake announce."""

    def __init__(self) -> None:
        self._ended: list[TaskEnded] = []
        self._metrics: list[MetricsReported] = []

    def on_task_ended(self, hook: TaskEnded) -> None:
        """Subscribe ``hook`` to every committed final state."""
        self._ended.append(hook)

    def on_metrics_reported(self, hook: MetricsReported) -> None:
        """Subscribe ``hook`` to every committed batch of intermediate metrics."""
        self._metrics.append(hook)

    async def task_ended(self, end: TaskEnd) -> None:
        """Tell every subscriber that a task ended."""
        for hook in self._ended:
            await hook(end)

    async def metrics_reported(self, report: MetricsReport) -> None:
        """Tell every subscriber about new metrics."""
        for hook in self._metrics:
            await hook(report)
