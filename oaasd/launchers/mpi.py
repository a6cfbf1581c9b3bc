"""MPI launcher: ``mpirun`` on the head node over a gang of hosts.

The attempt is a local process group (``LocalLauncher`` runs mpirun under
the exit-recording wrapper, so its logs and exit work as for local attempts)
with a hostfile of ``ADDRESS slots=N`` lines. Every rank and every remote
``orted`` carries the attempt's ``OAAS_LAUNCH_TAG``: ranks through ``-x``,
orted through ``orte_launch_agent "env OAAS_LAUNCH_TAG=... orted"``. So
whatever happens to mpirun (killed, hung on a partitioned node, deaf to
SIGTERM), the launcher ends the attempt everywhere by killing mpirun's group
locally and every tagged process on every host over the SSH pool, until a
scan of each node finds none. The same sweep runs after every normal exit.

While mpirun runs, the handle also watches each host's pooled connection:
a host unreachable for longer than ``lost_grace_s`` ends the attempt as
lost instead of leaving mpirun hanging.

mpirun starts from the clean environment of local tasks plus ``[mpi] env``;
the ranks get only the task's variables, through ``-x``. On a shared daemon
an MPI attempt is refused: its remote ranks would run as the nodes' login
user, not as the task's account (``config.launch_problems`` refuses ``mpi``
nodes there, and ``start`` any gang that would still come this way).

Each host carries out its own binding: its cgroup (``a<attempt>-<host index>``)
is made by its login user before mpirun starts, and every rank runs under
the rank wrapper (``remote_binding.RANK_SH``), which finds its host's line
by its rank (ranks are mapped by slot in hostfile order; ``[mpi] args``
that map otherwise get no per-rank binding), joins that cgroup, takes its
cores and exec's the program. After the end each host's cgroup is read for
accounting and OOM kills and removed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shlex
import signal
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import psutil

from oaasd.launchers.accounts import AccountError
from oaasd.launchers.local import (
    EndedHandle,
    LocalHandle,
    LocalLauncher,
    kill_group,
    wait_pidfd,
)
from oaasd.launchers.pool import NodeConn, NodeError, SshOptions, SshPool
from oaasd.launchers.remote_binding import RemoteBinder, RemoteBound, rank_argv
from oaasd.launchers.ssh import (
    FETCH_MARK,
    env_pairs,
    new_tag,
    remote_command,
    remote_dir,
)
from oaasd.ports import Exit, LaunchJob, Locator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MpiOptions:
    """How mpirun is called; ``extra_args`` go verbatim after the hostfile."""

    mpirun: str = "mpirun"
    extra_args: Sequence[str] = ()
    launch_agent: str = "orted"  # remote daemon command, prefixed with the attempt's tag
    allow_run_as_root: bool | None = None  # None: when the daemon runs as root
    reap_grace_s: float = 1.0  # ranks' grace when mpirun itself cannot deliver SIGTERM
    env: Mapping[str, str] = field(default_factory=dict)  # mpirun's own environment (not -x'd)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil refuses a pid reused by another process
    except psutil.Error:
        pass


def hostfile_text(job: LaunchJob) -> str:
    """``ADDRESS slots=N`` lines for the job's gang, in placement order."""
    return "".join(f"{h.address} slots={h.slots}\n" for h in job.hosts)


class MpiHandle:
    """mpirun's local group plus the tagged processes on every host."""

    def __init__(self, launcher: MpiLauncher, job: LaunchJob, local: LocalHandle | EndedHandle, locator: Locator):
        self.launcher = launcher
        self.pool = launcher.pool
        self.job = job
        self.local = local
        self.locator = locator
        self.tag = locator.extra["tag"]
        self.dirs: dict[str, str] = dict(locator.extra["dirs"])
        self._down: dict[str, str] = {}  # hosts whose connection is down right now, and why
        self._killing: asyncio.Future | None = None  # set while kill() gives its grace

    async def wait(self) -> Exit:
        """Wait for mpirun (or a host's loss), then sweep every host and fetch the result."""
        local = asyncio.ensure_future(self.local.wait())
        watch = asyncio.ensure_future(self._watch_hosts())
        try:
            await asyncio.wait({local, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # daemon shutdown: mpirun keeps running, to be adopted
            local.cancel()
            raise
        finally:
            watch.cancel()
        lost = None
        if not local.done():
            lost = watch.result()
            log.warning("attempt %s: %s; killing mpirun", self.job.attempt_id, lost)
            await self._kill_local(self.launcher.options.reap_grace_s)
        exit = await local
        if self._killing is not None:  # ranks still within kill()'s grace are not cut short
            await asyncio.shield(self._killing)
        if lost is None and exit.exit_code != 0 and self._down:
            lost = "; ".join(f"node {n} unreachable: {why}" for n, why in self._down.items())
        await self._sweep(-1)
        await self._fetch_result()
        exit = await self.launcher.settle(self.locator.extra, exit, self._down)
        if lost is not None:  # a crashed host ends mpirun with 255: a node failure, not the task's
            return Exit(exit_code=None, lost=True, reason=lost)
        return exit

    async def kill(self, grace_s: float) -> None:
        """TERM mpirun and every tagged rank, KILL all of it after grace_s."""
        self._killing = asyncio.get_running_loop().create_future()
        try:
            grace_tenths = max(0, round(grace_s * 10))
            remote = asyncio.ensure_future(self._sweep(grace_tenths, grace_s + self.pool.options.command_timeout_s))
            await self._kill_local(grace_s)
            await remote
            await self._sweep(-1)
        finally:
            self._killing.set_result(None)

    async def _kill_local(self, grace_s: float) -> None:
        """TERM mpirun itself (it forwards to ranks); after grace_s KILL its group and
        every descendant (mpirun puts its ssh clients in process groups of their own)."""
        if not isinstance(self.local, LocalHandle):  # ended before an adopt: the pid is not ours
            return
        leader = self.locator.pid
        tree = _descendants(leader)
        mpirun = [p for p in tree if _ppid(p) == leader]  # the wrapper stays to record the exit
        for proc in mpirun:
            _signal(proc, signal.SIGTERM)
        if not mpirun:
            kill_group(leader, signal.SIGTERM)
        try:
            await asyncio.wait_for(wait_pidfd(leader), grace_s)
        except asyncio.TimeoutError:
            pass
        tree += _descendants(leader)
        kill_group(leader, signal.SIGKILL)
        for proc in tree:
            _signal(proc, signal.SIGKILL)

    async def _sweep(self, grace_tenths: int, timeout: float | None = None) -> None:
        """Kill every tagged process on every host (TERM first unless grace is -1)."""
        cmd = remote_command("reap", 0, 0, self.tag, grace_tenths)

        async def one(node: str) -> None:
            if node in self._down:  # do not wait out a connect timeout on a host known down
                self.launcher.defer_sweep(node, self.tag)
                return
            try:
                by = (await self.pool.run(node, cmd, timeout=timeout)).stdout.decode().strip()
                if by == "STUCK":
                    log.error("attempt %s: processes on %s survive SIGKILL", self.job.attempt_id, node)
            except NodeError as exc:
                self.launcher.defer_sweep(node, self.tag)
                log.warning("attempt %s: cannot sweep %s now: %s", self.job.attempt_id, node, exc.message)

        await asyncio.gather(*(one(node) for node in self.dirs))

    async def _watch_hosts(self) -> str:
        """Return a reason once some host stayed unreachable for lost_grace_s."""
        async def one(node: str) -> str:
            down_since = None
            while True:
                try:
                    conn = await self.pool.connection(node)
                    down_since = None
                    self._down.pop(node, None)
                    await conn.wait_closed()
                    self._down[node] = "connection closed"
                except NodeError as exc:
                    if self.pool.closed:
                        await asyncio.Event().wait()  # shutdown: the attempt is left to be re-adopted
                    self._down[node] = exc.message
                    down_since = down_since or time.monotonic()
                    if time.monotonic() - down_since >= self.pool.options.lost_grace_s:
                        return f"node {node} lost: {exc.message}"
                    await asyncio.sleep(min(self.pool.options.backoff_initial_s, self.pool.options.lost_grace_s / 2))

        tasks = [asyncio.ensure_future(one(node)) for node in self.dirs]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for task in tasks:
                task.cancel()

    async def _fetch_result(self) -> None:
        """Copy result.json from the first host that has one (rank 0's first), then clean up."""
        up = {n: p for n, p in self.dirs.items() if n not in self._down}
        for node, path in up.items():
            try:
                res = await self.pool.run(node, remote_command("fetch", path))
            except NodeError:
                continue
            body = res.stdout.partition(FETCH_MARK.encode() + b"\n")[2]
            kind, _, rest = body.partition(b"\n")[2].partition(b"\n")
            if kind == b"result":
                self.job.result_path.write_bytes(rest)
                break
        if not self.pool.options.keep_remote_dirs:
            await asyncio.gather(*(self.pool.run(n, remote_command("remove", p), check=False)
                                   for n, p in up.items()), return_exceptions=True)


class MpiLauncher:
    """Runs ``workers``-rank attempts with mpirun over the hosts of a placement."""

    def __init__(self, nodes: SshPool | Mapping[str, NodeConn], options: MpiOptions | None = None,
                 ssh_options: SshOptions | None = None, local: LocalLauncher | None = None,
                 binder: RemoteBinder | None = None):
        self._owns_pool = not isinstance(nodes, SshPool)  # share the SshLauncher's pool when given one
        self.pool = SshPool(nodes, ssh_options) if self._owns_pool else nodes
        self.options = options or MpiOptions()
        self.local = local or LocalLauncher()
        self.binder = binder or RemoteBinder("none")
        self._deferred: dict[str, set[str]] = {}

    def defer_sweep(self, node: str, tag: str) -> None:
        """Remember to kill ``tag``'s processes on ``node`` when it answers again."""
        self._deferred.setdefault(node, set()).add(tag)

    async def sweep_deferred(self) -> None:
        """Retry the sweeps of unreachable nodes (called before each launch)."""
        for node, tags in list(self._deferred.items()):
            for tag in list(tags):
                try:
                    await self.pool.run(node, remote_command("reap", 0, 0, tag, -1))
                    tags.discard(tag)
                except NodeError:
                    break
            if not tags:
                self._deferred.pop(node, None)

    def mpirun_argv(self, job: LaunchJob, hostfile: str, tag: str, names: Sequence[str]) -> list[str]:
        """The full mpirun command line (before the exit-recording wrapper)."""
        opts = self.options
        root = os.geteuid() == 0 if opts.allow_run_as_root is None else opts.allow_run_as_root
        argv = [opts.mpirun, "-np", str(job.workers), "-hostfile", hostfile]
        argv += ["--allow-run-as-root"] if root else []
        argv += ["--mca", "orte_launch_agent", f"env OAAS_LAUNCH_TAG={tag} {opts.launch_agent}"]
        argv += list(opts.extra_args)
        argv += ["-wdir", job.workdir] if job.workdir else []
        for name in names:
            argv += ["-x", name]
        return argv + list(job.argv)

    async def start(self, job: LaunchJob) -> MpiHandle:
        """Write the hostfile, prepare each host's attempt dir, start mpirun locally."""
        if self.local.accounts.account_name(job.user) is not None:
            raise AccountError("multi-worker tasks over remote nodes cannot run as the user's own account "
                               "(mpirun's ranks would run as the nodes' login user); refused on a shared daemon")
        await self.sweep_deferred()
        nodes = list(dict.fromkeys(h.node for h in job.hosts))
        if not nodes or job.workers < 1:
            raise ValueError("an mpi attempt needs hosts and workers >= 1")
        pairs = env_pairs(job.env)  # validates names before anything starts
        text = hostfile_text(job)
        hostfile = job.attempt_dir / "hostfile"
        hostfile.write_text(text)
        paths = await asyncio.gather(*(self.pool.run(n, remote_command("prepare", remote_dir(self.pool, n, job), text))
                                       for n in nodes))
        dirs = {n: p.stdout.decode().strip() for n, p in zip(nodes, paths)}
        bound = await self._bind(job)
        binds = {n: b.extra() for n, b in bound.items() if b.extra()}
        if not any("map-by" in a or "rankfile" in a for a in self.options.extra_args):
            job = dataclasses.replace(job, argv=rank_argv(list(job.hosts), bound, list(job.argv)))
        elif bound:
            log.warning("attempt %s: [mpi] args map ranks themselves: no per-rank binding", job.attempt_id)
        tag = new_tag(job)
        first = dirs[nodes[0]]  # rank 0 runs on the first host; homes alike -> the same path elsewhere
        env = {**dict(p.split("=", 1) for p in pairs), "OAAS_LAUNCH_TAG": tag,
               "OAAS_RESULT_FILE": f"{first}/result.json", "OAAS_HOSTFILE": f"{first}/hostfile"}
        argv = self.mpirun_argv(job, str(hostfile), tag, list(env))
        local_job = dataclasses.replace(job, argv=argv, env={**self.options.env, **env}, workdir=str(job.attempt_dir))
        try:
            handle = await self.local.start(local_job, bind=False)  # mpirun itself is not the ranks
        except BaseException:
            await self.settle({"binds": binds}, Exit(exit_code=None, lost=True), {})
            raise
        locator = Locator(pid=handle.locator.pid, start_time=handle.locator.start_time,
                          extra={"kind": "mpi", "tag": tag, "dirs": dirs, "argv": shlex.join(argv), "binds": binds})
        handle.locator = locator
        return MpiHandle(self, job, handle, locator)

    async def _bind(self, job: LaunchJob) -> dict[str, RemoteBound]:
        """Make each host's cgroup (one per host, named by its index); on a failure remove the ones made."""
        bound: dict[str, RemoteBound] = {}
        try:
            for i, h in enumerate(job.hosts):
                bound[h.node] = await self.binder.prepare(self.pool, h.node, f"a{job.attempt_id}-{i}", h.binding, None)
        except BaseException:
            await self.settle({"binds": {n: b.extra() for n, b in bound.items()}}, Exit(exit_code=None, lost=True), {})
            raise
        return bound

    async def settle(self, extra: dict, exit_: Exit, down: Mapping[str, str]) -> Exit:
        """Fold every host's cgroup accounting into ``exit_`` (OOM on any host, peak of the largest,
        CPU summed) and remove them; hosts that are down have theirs removed when they answer."""
        rss, cpu, oom = None, None, exit_.oom  # mpirun's own rusage is not the ranks': none without cgroups
        for node, bind in extra.get("binds", {}).items():
            if node in down:
                self.binder.later(node, bind)
                continue
            try:
                got = await self.binder.settle(self.pool, node, bind, exit_)
            except NodeError:
                self.binder.later(node, bind)
                continue
            oom = oom or got.oom
            rss = got.max_rss_mb if rss is None else max(rss, got.max_rss_mb or 0)
            cpu = got.cpu_s if cpu is None else cpu + (got.cpu_s or 0)
        return dataclasses.replace(exit_, oom=oom, max_rss_mb=rss, cpu_s=cpu)

    async def adopt(self, job: LaunchJob, locator: Locator) -> MpiHandle | None:
        """Reattach to a live mpirun, or to one that ended leaving its exit record
        (its hosts are swept and its result fetched by ``wait``); when it is gone
        without a record, sweep its hosts and return None."""
        handle = await self.local.adopt(job, locator)
        if handle is None:
            sweeper = MpiHandle(self, job, LocalHandle(job, locator, None), locator)
            await sweeper._sweep(-1)
            await self.settle(locator.extra, Exit(exit_code=None, lost=True), {})
            return None
        return MpiHandle(self, job, handle, locator)

    async def close(self) -> None:
        """Close the pool if this launcher made it; mpirun and its ranks keep running."""
        if self._owns_pool:
            await self.pool.close()
