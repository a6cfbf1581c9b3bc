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
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import psutil

from oaasd.launchers.accounts import Accounts, RunAs, give_attempt_dir
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


class LocalHandle:
    """A local attempt: the wrapper process leading its own process group."""

    def __init__(self, job: LaunchJob, locator: Locator, popen: subprocess.Popen | None):
        self.job = job
        self.locator = locator
        self._popen = popen

    async def wait(self) -> Exit:
        """Wait for the group leader, reap it, then clear the rest of its group."""
        pid = self.locator.pid
        await wait_pidfd(pid)
        status = self._popen.wait() if self._popen is not None else None
        kill_group(pid, signal.SIGKILL)  # nothing of the attempt outlives it
        recorded = read_exit_file(self.job.exit_path)
        if recorded is not None:
            return recorded
        if status is not None:
            return exit_from_status(status)
        return Exit(exit_code=None, lost=True, reason="process ended while the daemon was down, no exit record")

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

    def __init__(self, locator: Locator, exit_: Exit):
        self.locator = locator
        self._exit = exit_

    async def wait(self) -> Exit:
        """The recorded exit, at once."""
        return self._exit

    async def kill(self, grace_s: float) -> None:
        """Nothing is left to kill (and the pid may belong to someone else now)."""


def _identity(job: LaunchJob, who: RunAs | None) -> dict:
    """Popen's account switch (before exec) and the directory the wrapper starts in."""
    if who is None:  # single-user: the daemon's account and working directory, as always
        return {}
    # The workdir is entered by the wrapper, after the switch: the child's chdir
    # would still run as root. The attempt dir is the task's own.
    return {"user": who.uid, "group": who.gid, "extra_groups": list(who.groups), "cwd": job.attempt_dir}


class LocalLauncher:
    """Runs attempts with ``subprocess.Popen`` in a new session."""

    def __init__(self, accounts: Accounts | None = None):
        self.accounts = accounts or Accounts()

    async def start(self, job: LaunchJob) -> LocalHandle:
        """Start the attempt as its account, from a clean environment; argv is exec'd without a shell."""
        who = self.accounts.run_as(job.user)
        env = {**self.accounts.base_env(who), **job.env, "OAAS_EXIT_FILE": str(job.exit_path)}
        if who is not None:
            give_attempt_dir(job.attempt_dir, who, [job.stdout_path, job.stderr_path])
        with open(job.stdout_path, "ab") as out, open(job.stderr_path, "ab") as err:
            popen = subprocess.Popen(
                wrap_argv(list(job.argv), job.workdir), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=env, start_new_session=True, close_fds=True, umask=TASK_UMASK, **_identity(job, who),
            )
        started = process_start_time(popen.pid) or 0.0
        return LocalHandle(job, Locator(pid=popen.pid, start_time=started), popen)

    async def adopt(self, job: LaunchJob, locator: Locator) -> LocalHandle | EndedHandle | None:
        """Reattach when the pid still names the same process (start time matches);
        an attempt that ended meanwhile is reported from its exit record."""
        started = process_start_time(locator.pid)
        if started is None or abs(started - locator.start_time) > 0.05:
            recorded = read_exit_file(job.exit_path)
            return None if recorded is None else EndedHandle(locator, recorded)
        return LocalHandle(job, locator, None)

    async def close(self) -> None:
        """Nothing pooled locally."""

