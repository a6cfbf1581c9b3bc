"""Local launcher: attempts run as process groups on the head node itself.

stdout and stderr go straight into the attempt's log files (not through a
pipe to the daemon), so a task outlives a daemon crash without SIGPIPE and a
restarted daemon picks its output up again. Exits are awaited through a
pidfd registered with the event loop: no thread and no polling, and the same
path serves children of this daemon and processes adopted after a restart.

A task starts from the clean environment of ``Accounts.base_env``, never the
daemon's, and on a shared daemon runs as its user's account: uid, gid and
supplementary groups are set in the child before exec, and the attempt
directory and logs are handed to that account first.

The placement's binding of the node is carried out by the ``Enforcer``:
the attempt's cgroup is made before the start (a failure names the path and
starts nothing), the wrapper joins it and takes the cores before exec'ing
the program, and on every end the cgroup's accounting and OOM count are read
into the Exit before it is removed. Without a cgroup the accounting is the
``wait4`` rusage of the wrapper (its waited descendants included).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import psutil

from oaasd.launchers.accounts import Accounts, RunAs, give_attempt_dir
from oaasd.launchers.binding import NOTHING, Enforcer
from oaasd.launchers.cgroups import AttemptGroup
from oaasd.launchers.wrap import exit_from_status, read_exit_file, wrap_argv
from oaasd.ports import Exit, LaunchJob, Locator

TASK_UMASK = 0o022  # what a login gives: the task's files readable, not writable, by others


def process_start_time(pid: int) -> float | None:
    """Return the kernel's start time of ``pid``, or None if it is gone."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


async def wait_pidfd(pid: int) -> None:
    """Return once process ``pid`` has exited (pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def kill_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def reap(popen: subprocess.Popen) -> tuple[int, float, float]:
    """Reap our child with ``wait4``: (status as Popen gives it, max RSS MB, user+system CPU s)."""
    _, status, ru = os.wait4(popen.pid, 0)
    popen.returncode = os.waitstatus_to_exitcode(status)
    return popen.returncode, round(ru.ru_maxrss / 1024, 1), round(ru.ru_utime + ru.ru_stime, 3)


class LocalHandle:
    """A local attempt: the wrapper process leading its own process group (and its cgroup)."""

    def __init__(self, job: LaunchJob, locator: Locator, popen: subprocess.Popen | None,
                 enforcer: Enforcer | None = None):
        self.job = job
        self.locator = locator
        self._popen = popen
        self.enforcer = enforcer or Enforcer("none")
        self.group = AttemptGroup.from_json(locator.extra)

    async def wait(self) -> Exit:
        """Wait for the group leader, reap it, clear the rest of its group, settle its cgroup."""
        pid = self.locator.pid
        await wait_pidfd(pid)
        try:
            status, rss, cpu = reap(self._popen) if self._popen is not None else (None, None, None)
        except ChildProcessError:  # reaped elsewhere: its exit record still tells
            status, rss, cpu = None, None, None
        kill_group(pid, signal.SIGKILL)  # nothing of the attempt outlives it
        recorded = read_exit_file(self.job.exit_path)
        if recorded is None and status is not None:
            recorded = exit_from_status(status)
        if recorded is None:
            recorded = Exit(exit_code=None, lost=True,
                            reason="process ended while the daemon was down, no exit record")
        return await self.enforcer.settle(recorded, self.group, rss, cpu)

    async def kill(self, grace_s: float) -> None:
        """SIGTERM the group, SIGKILL whatever is left after ``grace_s``."""
        pid = self.locator.pid
        if not kill_group(pid, signal.SIGTERM):
            return
        try:
            await asyncio.wait_for(wait_pidfd(pid), grace_s)
        except asyncio.TimeoutError:
            pass
        kill_group(pid, signal.SIGKILL)


class EndedHandle:
    """An attempt that ended while the daemon was down but left its exit record."""

    def __init__(self, locator: Locator, exit_: Exit, enforcer: Enforcer | None = None):
        self.locator = locator
        self._exit = exit_
        self.enforcer = enforcer or Enforcer("none")

    async def wait(self) -> Exit:
        """The recorded exit with its cgroup's accounting (the cgroup removed), at once."""
        return await self.enforcer.settle(self._exit, AttemptGroup.from_json(self.locator.extra))

    async def kill(self, grace_s: float) -> None:
        """Nothing is left to kill (and the pid may belong to someone else now)."""


def _identity(job: LaunchJob, who: RunAs | None) -> dict:
    """Popen's account switch (before exec) and the directory the wrapper starts in (the attempt's)."""
    if who is None:  # single-user: the daemon's account, starting in the attempt directory
        return {"cwd": job.attempt_dir}
    # The workdir is entered by the wrapper, after the switch: the child's chdir
    # would still run as root. The attempt dir is the task's own.
    return {"user": who.uid, "group": who.gid, "extra_groups": list(who.groups), "cwd": job.attempt_dir}


def default_workdir(job: LaunchJob, who: RunAs | None) -> str:
    """The directory the wrapper enters: the task's workdir, else its Unix account's home when it
    has one; "" (none) leaves it in the attempt directory, where ``Popen`` starts it."""
    if job.workdir:
        return job.workdir
    if who is not None and os.path.isdir(who.home):
        return who.home
    return ""  # entered by path it might not be: the account may not traverse the state dir's parents


class LocalLauncher:
    """Runs attempts with ``subprocess.Popen`` in a new session."""

    def __init__(self, accounts: Accounts | None = None, enforcer: Enforcer | None = None):
        self.accounts = accounts or Accounts()
        self.enforcer = enforcer or Enforcer("none")

    async def start(self, job: LaunchJob, bind: bool = True) -> LocalHandle:
        """Start the attempt as its account, from a clean environment, inside its binding
        (unless ``bind`` is False: mpirun itself); argv is exec'd without a shell."""
        who = self.accounts.run_as(job.user)
        env = {**self.accounts.base_env(who), **job.env, "OAAS_EXIT_FILE": str(job.exit_path)}
        if who is not None:
            give_attempt_dir(job.attempt_dir, who, [job.stdout_path, job.stderr_path])
        binding = job.hosts[0].binding if bind and job.hosts else None
        prepared = NOTHING if binding is None else self.enforcer.prepare(
            job.attempt_id, binding, who.uid if who is not None else None)
        try:
            with open(job.stdout_path, "ab") as out, open(job.stderr_path, "ab") as err:
                popen = subprocess.Popen(
                    wrap_argv(list(job.argv), default_workdir(job, who), **prepared.wrap_args()), stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, env=env, start_new_session=True, close_fds=True, umask=TASK_UMASK,
                    **_identity(job, who),
                )
        except BaseException:
            if prepared.group is not None:
                await prepared.group.remove()
            raise
        started = process_start_time(popen.pid) or 0.0
        extra = prepared.group.to_json() if prepared.group is not None else {}
        return LocalHandle(job, Locator(pid=popen.pid, start_time=started, extra=extra), popen, self.enforcer)

    async def adopt(self, job: LaunchJob, locator: Locator) -> LocalHandle | EndedHandle | None:
        """Reattach when the pid still names the same process (start time matches);
        an attempt that ended meanwhile is reported from its exit record. Either way
        its cgroup is removed once it is over (at once when it left no record)."""
        started = process_start_time(locator.pid)
        if started is None or abs(started - locator.start_time) > 0.05:
            recorded = read_exit_file(job.exit_path)
            if recorded is None:
                group = AttemptGroup.from_json(locator.extra)
                if group is not None:
                    await group.remove()
                return None
            return EndedHandle(locator, recorded, self.enforcer)
        return LocalHandle(job, locator, None, self.enforcer)

    def enforcement(self) -> dict[str, str]:
        """What this host enforces and why (the node view's ``enforcement`` and ``enforcement_reason``)."""
        return self.enforcer.enforcement.view()

    async def sweep(self, running: set[int]) -> list[str]:
        """Remove cgroups of this daemon's attempts not in ``running`` (left by a crash)."""
        return await self.enforcer.sweep(running)

    async def close(self) -> None:
        """Nothing pooled locally; the daemon's empty cgroup parent is removed."""
        self.enforcer.close()

