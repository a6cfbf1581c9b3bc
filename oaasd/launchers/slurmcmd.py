"""Slurm's commands as oaasd calls them, and what their answers mean (no I/O here).

``sbatch_argv`` builds the one ``sbatch --parsable`` of an attempt as an argv
list: every value is one word of its own (``--partition=debug``), the task's
program arrives as arguments of a constant batch script (``BATCH_SCRIPT``),
never as script text. ``parse_squeue`` reads the one ``squeue`` call per poll
interval that covers every job; ``parse_sinfo`` sizes a partition;
``end_of`` turns a finished job's Slurm state and the wrapper's exit record
into the ``Exit`` the reporter classifies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from oaasd.ports import Exit, LaunchJob
from oaasd.states import Reason, State

# squeue's fields, one line per job: id, state, reason, node list.
SQUEUE_FORMAT = "%i|%T|%r|%N"
SINFO_FORMAT = "%N|%a|%c|%m|%G|%T|%E"

ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING",
                           "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED",
                           "RESV_DEL_HOLD"})
LOST_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "REVOKED", "SPECIAL_EXIT"})  # retry policy
TIMEOUT_STATES = frozenset({"TIMEOUT", "DEADLINE"})
# sbatch's answers that mean Slurm could not be asked (retry later), not that it refused the job.
UNREACHABLE = re.compile(r"Unable to contact slurm controller|Socket timed out|Connection refused|"
                         r"Zero Bytes were transmitted|Communication connection failure|Slurm backup controller",
                         re.IGNORECASE)

# The batch script is constant text: the wrapper and the task's argv arrive as "$@".
# For a gang it first writes $OAAS_HOSTFILE from the allocation ("HOST slots=N" per
# node, from SLURM_JOB_NODELIST and SLURM_TASKS_PER_NODE such as "2(x3),1").
BATCH_SCRIPT = """#!/bin/sh
# oaasd's batch script: the task arrives as arguments, never as text here.
if [ -n "$OAAS_HOSTFILE" ] && [ -n "$SLURM_JOB_NODELIST" ]; then
  counts=
  IFS=,
  for t in $SLURM_TASKS_PER_NODE; do
    case $t in
      *"(x"*) n=${t%%"(x"*}; r=${t#*"(x"}; r=${r%")"};;
      *) n=$t; r=1;;
    esac
    while [ "$r" -gt 0 ]; do counts="$counts $n"; r=$((r-1)); done
  done
  unset IFS
  scontrol show hostnames "$SLURM_JOB_NODELIST" | {
    for c in $counts; do read -r h && echo "$h slots=$c"; done
  } > "$OAAS_HOSTFILE.new" && mv -f "$OAAS_HOSTFILE.new" "$OAAS_HOSTFILE"
fi
exec "$@"
"""


class SlurmError(Exception):
    """A Slurm command failed; ``message`` is Slurm's own words."""

    reason = "Slurm"

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.message = message
        self.unreachable = unreachable


@dataclass(frozen=True)
class SlurmNode:
    """What a node entry standing for a partition adds to every sbatch of its jobs."""

    partition: str
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobInfo:
    """One job as squeue shows it."""

    job_id: str
    state: str
    reason: str
    nodes: str

    @property
    def active(self) -> bool:
        """Slurm has not ended the job yet."""
        return self.state in ACTIVE_STATES

    @property
    def waiting(self) -> str | None:
        """``SlurmPending: <Reason>`` while Slurm queues the job."""
        return f"SlurmPending: {self.reason}" if self.state == "PENDING" else None


def first_line(text: str) -> str:
    """The most telling line of a command's stderr (its last non-empty one), for a reason."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def time_minutes(limit_s: float) -> int:
    """Slurm's --time in whole minutes (its granularity), rounded up: oaasd's own deadline fires first."""
    return max(1, math.ceil(limit_s / 60))


def resource_args(job: LaunchJob) -> list[str]:
    """--nodes/--ntasks, --cpus-per-task, memory, GPUs and --time of one attempt."""
    res = job.resources
    workers = job.workers
    cpt = max(1, math.ceil(res.cpu_milli / 1000)) if res is not None else 1
    args = [f"--ntasks={workers}", f"--cpus-per-task={cpt}"]
    if workers == 1:
        args.insert(0, "--nodes=1")
    elif job.spread:
        args += [f"--nodes={workers}", "--ntasks-per-node=1"]
    if res is not None and res.memory_mb:
        # memory_mb is per worker: one worker per job is --mem, a gang asks per CPU.
        args.append(f"--mem={res.memory_mb}M" if workers == 1 else f"--mem-per-cpu={math.ceil(res.memory_mb / cpt)}M")
    if res is not None and res.gpus:
        # Slurm hands out whole GPUs: a share of one (gpus < 1) asks for one device.
        n, kind = math.ceil(res.gpus), f"{res.gpu_type}:" if res.gpu_type else ""
        args.append(f"--gres=gpu:{kind}{n}" if workers == 1 else f"--gpus-per-task={kind}{n}")
    if job.time_limit_s is not None:
        args.append(f"--time={time_minutes(job.time_limit_s)}")
    return args


def sbatch_argv(sbatch: str, node: SlurmNode, job: LaunchJob, script: str, task_argv: Sequence[str]) -> list[str]:
    """The one ``sbatch --parsable`` of an attempt: options, the batch script, then the task as its arguments."""
    attempt = job.attempt_dir.name
    argv = [sbatch, "--parsable", f"--job-name=oaasd-{job.task_id}-{attempt}", f"--partition={node.partition}"]
    if node.account:
        argv.append(f"--account={node.account}")
    if node.qos:
        argv.append(f"--qos={node.qos}")
    argv += resource_args(job)
    argv += [f"--output={job.stdout_path}", f"--error={job.stderr_path}", "--open-mode=append",
             f"--chdir={job.workdir or job.attempt_dir}", "--export=ALL", "--no-requeue", "--kill-on-invalid-dep=yes"]
    argv += list(node.sbatch_args)  # the admin's, from the config: after ours, so they may override
    return [*argv, script, *task_argv]


def parse_job_id(stdout: str) -> str:
    """``sbatch --parsable`` prints ``ID`` or ``ID;CLUSTER``."""
    word = stdout.strip().splitlines()[-1].split(";")[0].strip() if stdout.strip() else ""
    if not word.isdigit():
        raise SlurmError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return word


def parse_squeue(stdout: str) -> dict[str, JobInfo]:
    """Every job of one ``squeue --format=SQUEUE_FORMAT`` answer, by id."""
    out = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4 and parts[0]:
            out[parts[0]] = JobInfo(parts[0], parts[1].split()[0] if parts[1] else "", parts[2], parts[3])
    return out


def gres_gpus(gres: str) -> int:
    """GPUs in a GRES string such as ``gpu:2``, ``gpu:a100:4(S:0-1)``, ``(null)``."""
    total = 0
    for item in gres.split(","):
        item = item.split("(")[0]
        parts = item.split(":")
        if parts and parts[0] == "gpu":
            count = parts[-1]
            total += int(count) if count.isdigit() else (1 if len(parts) == 1 else 0)
    return total


def parse_sinfo(partition: str, stdout: str) -> dict[str, Any]:
    """Size and state of a partition from ``sinfo -N -p P --format=SINFO_FORMAT``; raise when unusable."""
    nodes: dict[str, tuple[int, int, int, str, str]] = {}
    avail = set()
    for line in stdout.splitlines():
        parts = line.strip().split("|", 6)
        if len(parts) != 7:
            continue
        name, availability, cpus, mem, gres, state, why = parts
        avail.add(availability)
        nodes[name] = (int(cpus) if cpus.isdigit() else 0, int(mem) if mem.isdigit() else 0, gres_gpus(gres),
                       state, why)
    if not nodes:
        raise SlurmError(f"Slurm has no partition {partition!r}")
    if "up" not in avail:
        raise SlurmError(f"partition {partition} is {'/'.join(sorted(avail))} in Slurm")
    usable = {n: v for n, v in nodes.items() if not re.match(r"(down|drain|fail|future|maint|unk|inval|powered)",
                                                              v[3].rstrip("*~#!%$@^-+"))}
    if not usable:
        states = "; ".join(f"{n} {v[3]}" + (f" ({v[4]})" if v[4] and v[4] != "none" else "")
                           for n, v in sorted(nodes.items()))
        raise SlurmError(f"no node of partition {partition} can run jobs: {states}")
    return {"partition": partition, "nodes": len(nodes), "usable_nodes": len(usable),
            "cpus": sum(v[0] for v in nodes.values()), "memory_mb": sum(v[1] for v in nodes.values()),
            "gpus": sum(v[2] for v in nodes.values()),
            "node_states": {n: v[3] for n, v in sorted(nodes.items())}}


def end_of(job_id: str, info: JobInfo | None, recorded: Exit | None) -> Exit:
    """How a job that left Slurm's active states ended, as an Exit.

    The wrapper's record decides exit code and signal whenever it exists; Slurm's
    state decides what the record cannot say (a time limit, the OOM killer, a node
    that failed, a job that never ran). ``info`` None: Slurm no longer lists the job.
    """
    if info is None:
        if recorded is not None:
            return recorded
        return Exit(exit_code=None, lost=True, reason=f"Slurm no longer knows job {job_id} and it left no exit record")
    state, why = info.state, f"Slurm job {job_id} {info.state}" + (f" ({info.reason})" if info.reason not in
                                                                   ("", "None") else "")
    code = recorded.exit_code if recorded is not None else None
    sig = recorded.signal if recorded is not None else None
    if state in TIMEOUT_STATES:
        return Exit(exit_code=code, signal=sig, state=State.TIMEOUT, reason=why)
    if state == "OUT_OF_MEMORY":
        return Exit(exit_code=code, signal=sig or "SIGKILL", state=State.OUT_OF_MEMORY, reason=why)
    if state in LOST_STATES:
        return Exit(exit_code=code, signal=sig, lost=True, reason=why)
    if recorded is not None:
        return recorded
    if state == "CANCELLED":
        return Exit(exit_code=None, signal="SIGTERM", reason=why)
    return Exit(exit_code=None, lost=True, reason=f"{why}, no exit record")


def refused(message: str) -> Exit:
    """sbatch refused the job (its request cannot be met there): the task's own fault, never retried."""
    return Exit(exit_code=None, fault=Reason.SLURM_REFUSED, reason=message)
