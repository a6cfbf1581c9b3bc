"""Recovery at start: re-adopt what still runs, requeue what was lost, reload the queue.

After a crash nothing acknowledged is lost: attempts found RUNNING are
re-adopted when their process still lives (their reservations taken again
first), otherwise ended as node failures under the retry policy; pending
tasks rejoin the queue. An attempt on a node that is no longer configured
(deleted while its launch was in flight, or taken out of ``oaasd.toml``
between runs) never stops the start: it is stopped where it can still be
reached and its task requeued, as a node set DOWN or deleted while the
daemon runs has its attempts requeued. Cancels a crash interrupted are finished: a
re-adopted attempt is killed with what is left of its grace, a pending task
ends CANCELLED. Cgroups of this daemon's attempts that are no longer
running (a crash between making one and recording the attempt's locator)
are removed.
"""

from __future__ import annotations

import json
import logging
import time

from oaasd.models import TaskSpec
from oaasd.ports import Host, Queue, TaskStore
from oaasd.service.cluster import Cluster
from oaasd.service.intake import Intake
from oaasd.service.runner import Runner

log = logging.getLogger("oaasd")


async def recover(store: TaskStore, cluster: Cluster, runner: Runner, intake: Intake, queue: Queue,
                  kill_grace_s: float) -> None:
    """Re-adopt running attempts, requeue lost ones, reload the queue, finish interrupted cancels."""
    for row in await store.running_attempts():
        record = json.loads(row["placement"])
        spec = TaskSpec.model_validate_json(row["spec"])  # the one parse of this attempt's spec
        gone = [name for name, _ in record["hosts"] if name not in cluster.nodes]
        if gone:
            reason = f"node {gone[0]} is no longer configured"
            log.warning("task %d: attempt %d ran on a node that is gone (%s): stopped and requeued", row["task_id"],
                        row["id"], reason)
            hosts = [Host(node=name, address=name, slots=int(slots)) for name, slots in record["hosts"]]
            await runner.adopt(row, spec, hosts, gone=reason)
            continue
        placed = cluster.placement_from_json(record)
        cluster.reserve(row["task_id"], cluster.request_for(spec), placed)
        adopted = await runner.adopt(row, spec, cluster.hosts_of(placed))
        if adopted and row["cancel_reason"] is not None:  # its grace ran on while the daemon was down
            left = max(0.0, kill_grace_s - (time.time() - row["cancel_requested_at"]))
            log.info("task %d: finishing the cancel requested before the restart (%.1f s of grace left)",
                     row["task_id"], left)
            await runner.cancel(row["task_id"], row["cancel_reason"], grace_s=left)
    await runner.sweep_cgroups()  # what a crash left of attempts that are not running any more
    for task_id, priority, submitted_at, spec, cancel_reason in await store.pending_queue():
        if cancel_reason is not None:
            await intake.cancel_pending(task_id, cancel_reason, json.loads(spec).get("callback_url"))
            continue
        parsed = TaskSpec.model_validate_json(spec)
        queue.add(task_id, priority, submitted_at, cluster.request_for(parsed), parsed)
