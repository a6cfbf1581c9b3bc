"""Slurm launcher: a node entry stands for a Slurm partition, every attempt is one Slurm job.

``start`` makes one ``sbatch --parsable`` call (an argv list, see
``slurmcmd.sbatch_argv``); the job runs the same exit-recording wrapper as
local attempts, with its stdout/stderr appended by Slurm straight into the
attempt's log files on the head node. That needs the state directory on a
filesystem the compute nodes share (a one-node Slurm on the head node shares
it trivially); the runner then follows the logs as for a local attempt.

One ``JobBoard`` per launcher asks ``squeue`` once per ``poll_interval_s``
about every job it follows (never one call per job); a job that leaves
Slurm's active states ends its handle. While Slurm cannot be reached the
board keeps the last answer and asks again: attempts stay RUNNING, nothing is
started twice, and tracking resumes when slurmctld answers. Cancel is
``scancel`` (Slurm's own TERM, KillWait, KILL), then ``scancel --signal=KILL``
once oaasd's grace is over. A restarted daemon re-adopts a job by the id in
its locator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from oaasd.config import NodeConfig
from oaasd.launchers.accounts import Accounts
from oaasd.launchers.slurmcmd import (
    BATCH_SCRIPT,
    SINFO_FORMAT,
    SQUEUE_FORMAT,
    UNREACHABLE,
    JobInfo,
    SlurmError,
    SlurmNode,
    end_of,
    first_line,
    parse_job_id,
    parse_sinfo,
    parse_squeue,
    refused,
    sbatch_argv,
)
from oaasd.launchers.wrap import read_exit_file, wrap_argv
from oaasd.ports import Exit, LaunchJob, Locator

log = logging.getLogger(__name__)

# Names the task's own env may not set: they would steer sbatch/srun themselves.
STEERING_PREFIXES = ("SBATCH_", "SALLOC_", "SRUN_", "SLURM_")


@dataclass(frozen=True)
class SlurmOptions:
    """``[slurm]``: where the client commands are, their SLURM_CONF, the poll interval."""

    bin_dir: str | None = None
    slurm_conf: str | None = None
    poll_interval_s: float = 2.0
    command_timeout_s: float = 30.0

    def cmd(self, name: str) -> str:
        """The path of one Slurm command."""
        return os.path.join(self.bin_dir, name) if self.bin_dir else name


class SlurmClient:
    """Runs Slurm's client commands (no shell) with the configured SLURM_CONF."""

    def __init__(self, options: SlurmOptions):
        self.options = options
        self.calls: dict[str, int] = {}  # per command, for the benchmarks and tests

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A command's environment: ``extra`` (or a bare PATH) and the SLURM_CONF to use."""
        env = dict(extra) if extra is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if self.options.slurm_conf:
            env["SLURM_CONF"] = self.options.slurm_conf
        elif "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        return env

    async def run(self, name: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(returncode, stdout, stderr); a command that cannot run or hangs is a SlurmError (unreachable)."""
        self.calls[name] = self.calls.get(name, 0) + 1
        argv = [self.options.cmd(name), *args]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, env=self.env(env))
        except OSError as exc:
            raise SlurmError(f"cannot run {argv[0]}: {exc}", unreachable=True) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.options.command_timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            limit = self.options.command_timeout_s
            raise SlurmError(f"{name} gave no answer in {limit:g}s", unreachable=True) from None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def scancel(self, job_id: str, *args: str) -> None:
        """``scancel [ARGS] JOB``; a SlurmError with Slurm's words when it fails."""
        rc, _, err = await self.run("scancel", *args, job_id)
        if rc != 0:
            raise SlurmError(first_line(err) or f"scancel exited {rc}", unreachable=bool(UNREACHABLE.search(err)))


class JobBoard:
    """Every followed job's last Slurm state, from one squeue call per poll interval."""

    def __init__(self, client: SlurmClient, interval_s: float):
        self.client = client
        self.interval_s = interval_s
        self.seen: dict[str, JobInfo] = {}
        self._since: dict[str, float] = {}  # job id -> when it was followed (monotonic)
        self._ends: dict[str, asyncio.Future] = {}
        self._nudge = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.error: str | None = None  # the last squeue failure, None once it answers again
        self.polls = 0

    def follow(self, job_id: str) -> asyncio.Future:
        """A future resolved with the job's final JobInfo (None: Slurm no longer lists it)."""
        fut = self._ends.get(job_id)
        if fut is None:
            fut = self._ends[job_id] = asyncio.get_running_loop().create_future()
            self._since[job_id] = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="slurm-board")
        return fut

    def forget(self, job_id: str) -> None:
        """Stop following a job (its end was taken)."""
        fut = self._ends.pop(job_id, None)
        if fut is not None and not fut.done():
            fut.cancel()
        self._since.pop(job_id, None)
        self.seen.pop(job_id, None)

    def nudge(self) -> None:
        """Poll now (after a cancel) instead of at the next interval."""
        self._nudge.set()

    async def _loop(self) -> None:
        while self._ends:
            await self.poll_once()
            self._nudge.clear()
            try:
                await asyncio.wait_for(self._nudge.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    async def poll_once(self) -> None:
        """One squeue for all followed jobs; resolve those that ended."""
        asked_at = time.monotonic()
        try:
            rc, out, err = await self.client.run("squeue", "--me", "--states=all", "--noheader",
                                                 f"--format={SQUEUE_FORMAT}")
            if rc != 0:
                raise SlurmError(first_line(err) or f"squeue exited {rc}", unreachable=True)
        except SlurmError as exc:
            if self.error != exc.message:
                log.warning("Slurm unreachable, jobs keep their last state: %s", exc.message)
            self.error = exc.message
            return
        if self.error is not None:
            log.info("Slurm answers again: following %d job(s)", len(self._ends))
        self.error = None
        self.polls += 1
        jobs = parse_squeue(out)
        for job_id, fut in list(self._ends.items()):
            info = jobs.get(job_id)
            if info is not None:
                self.seen[job_id] = info
            if fut.done():
                continue
            if info is None and self._since[job_id] < asked_at:
                fut.set_result(None)
            elif info is not None and not info.active:
                fut.set_result(info)

    async def close(self) -> None:
        """Stop polling (daemon shutdown)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class SlurmHandle:
    """A running (or queued) Slurm job of one attempt."""

    def __init__(self, launcher: "SlurmLauncher", job: LaunchJob, job_id: str, locator: Locator):
        self.launcher = launcher
        self.job = job
        self.job_id = job_id
        self.locator = locator
        self._end = launcher.board.follow(job_id)

    @property
    def waiting(self) -> str | None:
        """``SlurmPending: <Reason>`` while Slurm still queues the job."""
        info = self.launcher.board.seen.get(self.job_id)
        return None if info is None else info.waiting

    @property
    def slurm_state(self) -> str | None:
        """The job's state as Slurm last said it."""
        info = self.launcher.board.seen.get(self.job_id)
        return None if info is None else info.state

    async def wait(self) -> Exit:
        """Return once Slurm has ended the job; the wrapper's record says how, where it could."""
        info = await asyncio.shield(self._end)
        self.launcher.board.forget(self.job_id)
        return end_of(self.job_id, info, read_exit_file(self.job.exit_path))

    async def kill(self, grace_s: float) -> None:
        """``scancel`` (Slurm: TERM, KillWait, KILL; the job CANCELLED), KILL after ``grace_s``; never raises."""
        board, client = self.launcher.board, self.launcher.client
        killed = False
        deadline = time.monotonic() + grace_s
        while not self._end.done():
            try:
                if not killed:
                    await client.scancel(self.job_id)
                    killed = True
                    deadline = time.monotonic() + grace_s
                elif time.monotonic() >= deadline:
                    await client.scancel(self.job_id, "--signal=KILL", "--full")
                    deadline = float("inf")
            except SlurmError as exc:  # slurmctld away: try again each poll until the job ends
                log.warning("Slurm job %s: scancel failed: %s", self.job_id, exc.message)
            board.nudge()
            left = max(0.0, min(deadline - time.monotonic(), board.interval_s))
            try:
                await asyncio.wait_for(asyncio.shield(self._end), left or board.interval_s)
            except asyncio.TimeoutError:
                pass


class EndedHandle:
    """An attempt that ended without running: sbatch refused it."""

    def __init__(self, locator: Locator, exit_: Exit):
        self.locator = locator
        self._exit = exit_
        self.waiting = None

    async def wait(self) -> Exit:
        """The refusal, at once."""
        return self._exit

    async def kill(self, grace_s: float) -> None:
        """Nothing runs."""


class SlurmLauncher:
    """Starts attempts as Slurm jobs of the partition their node stands for."""

    def __init__(self, options: SlurmOptions, node_config: Callable[[str], NodeConfig],
                 accounts: Accounts | None = None):
        self.options = options
        self.node_config = node_config
        self.accounts = accounts or Accounts()
        self.client = SlurmClient(options)
        self.board = JobBoard(self.client, options.poll_interval_s)
        self.script_path: Path | None = None

    def slurm_node(self, name: str) -> SlurmNode:
        """What the node entry ``name`` adds to every sbatch of its jobs."""
        cfg = self.node_config(name)
        return SlurmNode(partition=cfg.partition or "", account=cfg.account, qos=cfg.qos,
                         sbatch_args=tuple(cfg.sbatch_args))

    def _script(self, job: LaunchJob) -> Path:
        """The constant batch script, once per state directory (sbatch copies it into Slurm's spool)."""
        path = job.attempt_dir.parent.parent / "oaasd-batch.sh"
        if self.script_path != path or not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(BATCH_SCRIPT)
            tmp.chmod(0o755)
            tmp.replace(path)
            self.script_path = path
        return path

    def task_env(self, job: LaunchJob) -> dict[str, str]:
        """sbatch's own environment, which ``--export=ALL`` hands to the job: the task's clean env."""
        env = {**self.accounts.base_env(None), **job.env, "OAAS_EXIT_FILE": str(job.exit_path)}
        dropped = [k for k in env if k.startswith(STEERING_PREFIXES)]
        for k in dropped:
            del env[k]
        if dropped:
            log.warning("task %d: env %s not passed (they would steer sbatch/srun)", job.task_id, ", ".join(dropped))
        return env

    def task_argv(self, job: LaunchJob) -> list[str]:
        """The wrapper around the task; a gang runs its ranks with srun inside the allocation."""
        argv = list(job.argv)
        if job.workers > 1:
            res = job.resources
            cpt = max(1, -(-res.cpu_milli // 1000)) if res is not None else 1
            argv = [self.options.cmd("srun"), f"--ntasks={job.workers}", f"--cpus-per-task={cpt}",
                    "--kill-on-bad-exit=1", "--export=ALL", *argv]
        return wrap_argv(argv, job.workdir)

    async def start(self, job: LaunchJob) -> SlurmHandle | EndedHandle:
        """One ``sbatch --parsable``; a refusal ends the attempt FAILED with Slurm's words (no retry)."""
        node = self.slurm_node(job.hosts[0].node)
        argv = sbatch_argv("sbatch", node, job, str(self._script(job)), self.task_argv(job))
        for path in (job.stdout_path, job.stderr_path):
            path.touch()  # the runner follows them before Slurm opens them
        submitted = time.time()
        rc, out, err = await self.client.run("sbatch", *argv[1:], env=self.task_env(job))
        if rc != 0:
            message = first_line(err) or f"sbatch exited {rc}"
            if UNREACHABLE.search(err):
                raise SlurmError(message, unreachable=True)  # a launch failure: retried as a node failure
            log.warning("task %d: sbatch refused the job: %s", job.task_id, message)
            return EndedHandle(Locator(pid=0, start_time=submitted, extra={"slurm_job_id": None}), refused(message))
        job_id = parse_job_id(out)
        log.info("task %d: Slurm job %s on partition %s", job.task_id, job_id, node.partition)
        return SlurmHandle(self, job, job_id, Locator(pid=0, start_time=submitted, extra={"slurm_job_id": job_id}))

    async def adopt(self, job: LaunchJob, locator: Locator) -> SlurmHandle | EndedHandle | None:
        """Follow the job again by its id; the board says whether it still runs or how it ended."""
        job_id = locator.extra.get("slurm_job_id")
        if not job_id:
            recorded = read_exit_file(job.exit_path)
            return None if recorded is None else EndedHandle(locator, recorded)
        return SlurmHandle(self, job, str(job_id), locator)

    async def probe(self, node: str) -> dict[str, Any]:
        """The partition's size and state from one sinfo; raises (Slurm's words) when it cannot take jobs."""
        cfg = self.node_config(node)
        rc, out, err = await self.client.run("sinfo", "--noheader", "--Node", f"--partition={cfg.partition}",
                                             f"--format={SINFO_FORMAT}")
        if rc != 0:
            raise SlurmError(first_line(err) or f"sinfo exited {rc}", unreachable=True)
        info = parse_sinfo(cfg.partition or "", out)
        sizes = {"cpus": float(info["cpus"]), "memory_mb": info["memory_mb"], "gpus": info["gpus"]}
        info["capacity"] = {k: v for k, v in sizes.items() if k in cfg.sized_by_slurm}
        return info

    async def check_partitions(self, nodes: list[NodeConfig]) -> list[str]:
        """Config problems at start: partitions Slurm says it does not have (unreachable is not one)."""
        names = [cfg.name for cfg in nodes if cfg.launcher == "slurm"]
        answers = await asyncio.gather(*(self.probe(n) for n in names), return_exceptions=True)
        return [f"nodes[{n}].partition: {a.message}" for n, a in zip(names, answers)
                if isinstance(a, SlurmError) and a.message.startswith("Slurm has no partition")]

    async def close(self) -> None:
        """Stop polling; running jobs are left to Slurm and re-adopted after a restart."""
        await self.board.close()
