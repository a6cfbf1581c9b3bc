"""One running attempt as the daemon holds it, and the job its launcher gets.

``Run`` is the live part of an attempt (what the runner watches and the
reporter classifies); ``build_job`` turns a parsed spec and a placement's
hosts into the ``LaunchJob`` of the task protocol (argv, ``OAAS_*``
environment, paths under the attempt's directory).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oaasd.launchers.binding import gpu_env
from oaasd.launchers.protocol import Report
from oaasd.models import TaskSpec
from oaasd.ports import NO_BINDING, Binding, Handle, Host, LaunchJob


@dataclass
class Run:
    """The live part of one running attempt."""

    task_id: int
    attempt_id: int
    seq: int
    node: str
    placement: dict[str, Any]
    spec: TaskSpec
    job: LaunchJob
    handle: Handle | None = None
    cancel_reason: str | None = None
    requeue_reason: str | None = None  # killed for its node's sake: back to PENDING
    lost_reason: str | None = None  # its node went DOWN: a node failure, under max_retries
    timed_out: bool = False
    report: Report = field(default_factory=Report)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float | None = None  # the attempt row's wall-clock start (deadlines count from it)
    stdout_offset: int = 0  # stdout.log read up to here (stored with the metrics before it)
    metrics_stored: int = 0
    metrics_dropped: int = 0  # OAAS_METRIC lines beyond reporting.max_metrics_per_attempt
    dropped_stored: int = 0  # metrics_dropped as last committed
    persisted_at: float = field(default_factory=time.monotonic)
    skip_metrics: int = 0  # only for attempts started before schema 7, which stored no offset


def bound_hosts(spec: TaskSpec, hosts: list[Host]) -> list[Host]:
    """The hosts with what each must enforce: placement's binding, or where placement gave none,
    the memory limit of the task's ``resources.memory_mb`` (per worker slot)."""
    mb = spec.resources.memory_mb
    if not mb:
        return list(hosts)
    return [h if h.binding != NO_BINDING else dataclasses.replace(h, binding=Binding(memory_mb=mb * h.slots))
            for h in hosts]


def build_job(spec: TaskSpec, task_id: int, attempt_id: int, seq: int, attempt_dir: Path,
              hosts: list[Host], gpu_nodes: frozenset[str] = frozenset()) -> LaunchJob:
    """Assemble the argv, environment and paths of one attempt (its directory made private first).

    ``gpu_nodes``: the nodes with GPUs, where a task bound to none sees none (empty CUDA_VISIBLE_DEVICES).
    """
    secure_attempt_dir(attempt_dir)
    hosts = bound_hosts(spec, hosts)
    if spec.script is not None:
        (attempt_dir / "script.sh").write_text(spec.script)  # for people; the argv carries it to any node
        argv = ["/bin/sh", "-c", spec.script, "oaas-script"]
    else:
        argv = list(spec.command)
    env = {
        **spec.env,
        "OAAS_TASK_ID": str(task_id),
        "OAAS_ATTEMPT": str(seq),
        "OAAS_NODE": hosts[0].node,
        "OAAS_WORKERS": str(spec.workers),
        "OAAS_RESULT_FILE": str(attempt_dir / "result.json"),
        **gpu_env(hosts[0].binding, hosts[0].node in gpu_nodes),
    }
    if spec.workers > 1:
        hostfile = attempt_dir / "hostfile"
        hostfile.write_text("".join(f"{h.address} slots={h.slots}\n" for h in hosts))
        env["OAAS_HOSTFILE"] = str(hostfile)
    if spec.trial_config is not None:
        env["OAAS_TRIAL_CONFIG"] = json.dumps(spec.trial_config)
    return LaunchJob(task_id=task_id, attempt_id=attempt_id, argv=argv, env=env, workdir=spec.workdir,
                     attempt_dir=attempt_dir, hosts=hosts, workers=spec.workers, user=spec.user,
                     resources=spec.resources, time_limit_s=spec.time_limit_s, spread=spec.placement == "spread")


def secure_attempt_dir(attempt_dir: Path) -> None:
    """``attempts/`` and the task's folder 0711 (a task walks to its own attempt by path,
    lists nothing), the attempt's own 0700 (the launcher hands it to the task's account)."""
    attempt_dir.mkdir(parents=True, exist_ok=True)
    for folder in (attempt_dir.parent.parent, attempt_dir.parent):
        os.chmod(folder, 0o711)
    os.chmod(attempt_dir, 0o700)


def read_locator(adir: Path) -> dict[str, Any] | None:
    """The locator record an attempt's directory holds, or None."""
    try:
        return json.loads((adir / "locator.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
