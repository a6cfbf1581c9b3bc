"""SSH launcher: attempts run on a node as detached process groups.

An attempt's command leaves the head node as an argv quoted word by word
(``shlex.quote``) behind one constant remote script, ``REMOTE_SH``; user
input only ever reaches a shell as positional parameters. On the node the
attempt runs in its own session (``setsid``) under the same exit-recording
wrapper as local attempts, with stdout/stderr in files of a remote attempt
directory, so it survives the connection and the daemon: ``start`` returns
as soon as the pid and its kernel start time are known.

While it runs, one long-lived channel per attempt (``tail -f`` both logs,
watch the pid) appends the bytes to the head-node log files; the local
files' sizes are the offsets, so a reconnect or a restarted daemon resumes
exactly where the bytes stopped. Attempts beyond ``max_streams`` per node
poll instead. After the end: leftovers are killed, logs drained, the exit
record and ``result.json`` fetched, the remote directory removed.

A task starts from a clean environment on the node too (``env -i``):
``PATH`` and ``LANG`` of ``[launch]``, ``HOME`` and ``USER`` of the account
it runs as there, the ``launch.pass_env`` variables of the session, its own
``env`` and ``OAAS_*``. On a shared daemon every command of an attempt runs
as the task's account through ``sudo -n -u ACCOUNT`` by the node's login
user (the same constant script; the account name validated and quoted), so
the remote attempt directory and processes are that account's.

Every process of an attempt carries ``OAAS_LAUNCH_TAG`` in its environment:
kill and cleanup signal the process group *and* every tagged process, so a
task that calls ``setsid`` itself still cannot outlive its attempt.

The node carries out the attempt's binding (``remote_binding``): its cgroup
is made by the login user before the launch, the wrapper joins it and takes
the cores before the program starts (RLIMIT_AS where no cgroup is
writable), and after the end its accounting and OOM count are read and it is
removed; the exit record also brings the wrapper's ``times`` back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shlex
import time
from pathlib import Path
from typing import Mapping

import asyncssh

from oaasd.config import UNIX_NAME
from oaasd.errors import ValidationFailedError
from oaasd.launchers.accounts import AccountError, Accounts
from oaasd.launchers.pool import (
    CHANNEL_REFUSED,
    CONNECTION_LOST,
    UNKNOWN_NODE,
    NodeConn,
    NodeError,
    SshOptions,
    SshPool,
)
from oaasd.launchers.remote_binding import RemoteBinder
from oaasd.launchers.wrap import exit_from_record, wrap_argv
from oaasd.ports import Exit, LaunchJob, Locator

log = logging.getLogger(__name__)

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Set by the launcher itself; never taken from the job's env.
LAUNCHER_ENV = ("OAAS_EXIT_FILE", "OAAS_RESULT_FILE", "OAAS_LAUNCH_TAG")
DEAD = 3  # exit status of the ``watch`` verb once the attempt's leader is gone
ALIVE = 4  # exit status of the ``finish`` verb when the leader still lives
FETCH_MARK = "--oaas-fetch--"

# Constant text; every value arrives as "$@". alive PID START: the process
# lives and is the one we started (zombies count as dead: where PID 1 does
# not reap, an orphan stays Z forever). Field 22 of /proc/PID/stat is the
# start time in clock ticks, the 20th word after "comm) ".
REMOTE_SH = r'''
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  l=; read -r l < "/proc/$1/stat" || return 1
  set -- "$2" ${l##*) }
  case $2 in Z|X|x) return 1;; esac
  [ "${21}" = "$1" ]
}
tagged() {
  p=; for f in $(grep -lzx "OAAS_LAUNCH_TAG=$tag" /proc/[0-9]*/environ 2>/dev/null); do
    f=${f#/proc/}; p="$p ${f%/environ}"; done
}
ours() {
  [ "$pid" -gt 0 ] || return 1
  [ -r "/proc/$pid/stat" ] || return 0
  l=; read -r l < "/proc/$pid/stat" || return 0
  set -- ${l##*) }
  [ "${20}" = "$st" ]
}
busy() { tagged; [ -n "$p" ] || { [ "$pid" -gt 0 ] && alive "$pid" "$st"; }; }
send() { ours && kill -s "$1" -- "-$pid" "$pid" 2>/dev/null; tagged; [ -z "$p" ] || kill -s "$1" $p 2>/dev/null; }
verb=$1; shift
FETCH_MARK=--oaas-fetch--
case $verb in
launch)  # DIR TAG PATH LANG NPASS NAME... CMD...: start CMD detached from a clean env, print "PID START ABSDIR"
  d=$1 tag=$2 path=$3 lang=$4 n=$5; shift 5
  u=$(id -un); h=$(getent passwd "$u" | cut -d: -f6); h=${h:-$HOME}
  case $d in /*) ;; *) cd "$h" || exit 97;; esac
  mkdir -p -m 700 "$d" && cd -P "$d" || exit 97
  d=$PWD
  for f in exit result.json pid; do [ ! -e $f ] || rm -f $f; done
  # NAME=value of each passed variable set here, moved in front of CMD (POSIX sh has no arrays)
  p=0; while [ "$n" -gt 0 ]; do if v=$(printenv "$1"); then set -- "$@" "$1=$v"; p=$((p+1)); fi; shift; n=$((n-1)); done
  m=$(($# - p)); [ "$p" -gt 0 ] || m=0
  while [ "$m" -gt 0 ]; do x=$1; shift; set -- "$@" "$x"; m=$((m-1)); done
  cd "$h" 2>/dev/null || cd /
  setsid env -i PATH="$path" LANG="$lang" HOME="$h" USER="$u" OAAS_EXIT_FILE="$d/exit" \
    OAAS_RESULT_FILE="$d/result.json" OAAS_LAUNCH_TAG="$tag" "$@" </dev/null >"$d/stdout.log" 2>"$d/stderr.log" &
  pid=$!
  l=; read -r l < "/proc/$pid/stat"
  set -- ${l##*) }
  echo "$pid ${20} $d" > "$d/pid"
  echo "$pid ${20} $d";;
watch)  # DIR PID START OUT+1 ERR+1 follow|once CAP: logs on stdout/stderr; exit 3 once dead
  d=$1 pid=$2 st=$3 o1=$4 o2=$5 mode=$6 cap=$7
  if [ "$mode" = follow ] && alive "$pid" "$st"; then
    tail -c "+$o1" -f "$d/stdout.log" 2>/dev/null & t1=$!
    tail -c "+$o2" -f "$d/stderr.log" >&2 2>/dev/null & t2=$!
    for s in 0.02 0.03 0.05 0.1 0.1 0.2 0.2 0.5; do alive "$pid" "$st" || break; sleep $s; done
    while alive "$pid" "$st"; do sleep "$cap"; done
    kill "$t1" "$t2" 2>/dev/null; wait
    exit 3
  fi
  rc=3; alive "$pid" "$st" && rc=0
  tail -c "+$o1" "$d/stdout.log" 2>/dev/null
  tail -c "+$o2" "$d/stderr.log" >&2 2>/dev/null
  exit $rc;;
finish)  # DIR PID START TAG OUT+1 ERR+1: leader gone? KILL leftovers, drain logs; exit 4 if alive
  d=$1 pid=$2 st=$3 tag=$4
  ! alive "$pid" "$st" || exit 4
  send KILL; n=0
  while busy && [ $n -lt 100 ]; do sleep 0.02; send KILL; n=$((n+1)); done
  tail -c "+$5" "$d/stdout.log" 2>/dev/null
  tail -c "+$6" "$d/stderr.log" >&2 2>/dev/null
  exit 0;;
reap)  # PID START TAG GRACE_TENTHS: TERM, wait, KILL (grace -1: KILL at once)
  pid=$1 st=$2 tag=$3 grace=$4
  by=none
  if busy; then by=KILL; [ "$grace" -lt 0 ] || by=TERM; fi
  if [ $by = TERM ]; then
    send TERM; n=0
    while busy && [ $n -lt "$grace" ]; do sleep 0.1; n=$((n+1)); done
    busy && by=KILL
  fi
  send KILL; n=0
  while busy && [ $n -lt 100 ]; do sleep 0.02; send KILL; n=$((n+1)); done
  busy && by=STUCK
  echo $by;;
status)  # DIR PID START
  if alive "$2" "$3"; then echo alive; elif [ -r "$1/exit" ]; then echo exited; else echo gone; fi;;
fetch)  # DIR [remove]: a marker line, "exit=RECORD" (its lines joined by |), then "result" and its bytes, or "none"
  rc=; [ -r "$1/exit" ] && rc=$(tr '\n' '|' < "$1/exit")
  echo "$FETCH_MARK"; echo "exit=$rc"
  if [ -r "$1/result.json" ]; then echo result; cat "$1/result.json"; else echo none; fi
  [ "$2" = remove ] && [ -n "$1" ] && rm -rf -- "$1"
  exit 0;;
remove)  # DIR
  [ -n "$1" ] && rm -rf -- "$1";;
prepare)  # DIR HOSTFILE_TEXT: make an MPI attempt dir, print its absolute path
  mkdir -p -m 700 "$1" && cd -P "$1" || exit 97
  rm -f result.json; printf '%s' "$2" > hostfile; echo "$PWD";;
probe)  # ROOT: "load1 load5 load15 cpus mem_total_kb mem_avail_kb disk_total_kb disk_avail_kb"
  mkdir -p "$1" 2>/dev/null
  read -r l1 l5 l15 rest < /proc/loadavg
  mt=0; ma=0
  while read -r k v u; do case $k in MemTotal:) mt=$v;; MemAvailable:) ma=$v;; esac; done < /proc/meminfo
  set -- $(df -Pk "$1" 2>/dev/null | tail -n 1)
  echo "$l1 $l5 $l15 $(nproc 2>/dev/null || echo 0) $mt $ma ${2:-0} ${4:-0}";;
*) echo "unknown verb $verb" >&2; exit 2;;
esac
'''


def remote_command(verb: str, *args: object, run_as: str | None = None) -> str:
    """The command line running ``REMOTE_SH`` with ``verb``, every word quoted;
    ``run_as``: as that account, through ``sudo -n -u`` by the login user."""
    words = ["/bin/sh", "-c", REMOTE_SH, "oaas", verb, *args]
    if run_as is not None:
        if not re.match(UNIX_NAME, run_as):
            raise AccountError(f"not a Unix account name: {run_as!r}")
        words = ["sudo", "-n", "-u", run_as, "--", *words]
    return " ".join(shlex.quote(str(a)) for a in words)


def env_pairs(env: Mapping[str, str]) -> list[str]:
    """``NAME=value`` words for ``env``; names are checked, launcher names dropped."""
    bad = [k for k, v in env.items() if not ENV_NAME.match(k) or "\0" in str(v)]
    if bad:
        raise ValidationFailedError("invalid environment variable", [
            {"field": f"env.{k}", "problem": "name must match [A-Za-z_][A-Za-z0-9_]*, value without NUL"}
            for k in bad])
    return [f"{k}={v}" for k, v in env.items() if k not in LAUNCHER_ENV]


def new_tag(job: LaunchJob) -> str:
    """A marker unique to one attempt, carried in every process's environment."""
    return f"{job.task_id}.{job.attempt_id}.{secrets.token_hex(4)}"


def remote_dir(pool: SshPool, node: str, job: LaunchJob) -> str:
    """The attempt's directory on ``node`` (relative paths are under the home)."""
    root = pool.work_root(node)
    root = root[2:] if root.startswith("~/") else root
    return f"{root.rstrip('/')}/{job.attempt_id}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def _copy(stream, path: Path) -> None:
    """Append everything ``stream`` yields to ``path``, flushing each chunk."""
    with open(path, "ab") as out:
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            out.write(chunk)
            out.flush()


class SshHandle:
    """One remote attempt; a follower task streams its logs until it ends."""

    def __init__(self, pool: SshPool, job: LaunchJob, locator: Locator, binder: RemoteBinder | None = None):
        self.pool = pool
        self.binder = binder or RemoteBinder("none")
        self.job = job
        self.locator = locator
        x = locator.extra
        self.node, self.dir, self.tag = x["node"], x["dir"], x["tag"]
        self.run_as: str | None = x.get("run_as")  # the account every command of this attempt runs as
        self._base = (int(x.get("out0", 0)), int(x.get("err0", 0)))
        self._ended_by: str | None = None  # TERM/KILL when our kill() ended it
        self._kill_pending = False
        self._killing: asyncio.Future | None = None  # set while kill() gives its grace
        self._follower = asyncio.ensure_future(self._follow())

    async def wait(self) -> Exit:
        """Return the remote exit; Exit(lost=True) if the node stays unreachable."""
        return await asyncio.shield(self._follower)

    def detach(self) -> None:
        """Stop following (daemon shutdown); the remote attempt keeps running."""
        self._follower.cancel()

    async def kill(self, grace_s: float) -> None:
        """TERM the group and every tagged process, KILL what is left after grace_s."""
        self._killing = asyncio.get_running_loop().create_future()
        try:
            by = await self._reap(max(0, round(grace_s * 10)), timeout=grace_s + self.pool.options.command_timeout_s)
            if by != "none" and self._ended_by is None:
                self._ended_by = by
        except NodeError as exc:
            self._kill_pending = True  # the follower kills as soon as the node answers again
            log.warning("kill of attempt %s on %s deferred: %s", self.job.attempt_id, self.node, exc.message)
        finally:
            self._killing.set_result(None)

    async def _reap(self, grace_tenths: int, timeout: float | None = None) -> str:
        res = await self.pool.run(self.node, remote_command(
            "reap", self.locator.pid, int(self.locator.start_time), self.tag, grace_tenths, run_as=self.run_as),
            timeout=timeout)
        return res.stdout.decode().strip()

    def _offsets(self) -> tuple[int, int]:
        """1-based ``tail -c +N`` starts: the bytes the local files already hold."""
        return (_size(self.job.stdout_path) - self._base[0] + 1, _size(self.job.stderr_path) - self._base[1] + 1)

    def _watch_cmd(self, mode: str) -> str:
        o1, o2 = self._offsets()
        return remote_command("watch", self.dir, self.locator.pid, int(self.locator.start_time), o1, o2,
                              mode, self.pool.options.watch_poll_max_s, run_as=self.run_as)

    async def _follow(self) -> Exit:
        """Follow until the leader is gone, then finish; lost after lost_grace_s unreachable."""
        opts = self.pool.options
        down_since: float | None = None
        delay = opts.backoff_initial_s
        while True:
            try:
                if self._kill_pending:  # a kill that could not reach the node earlier
                    by = await self._reap(-1)
                    self._kill_pending = False
                    self._ended_by = self._ended_by or (by if by != "none" else None)
                if await self._watch():
                    if self._killing is not None:  # the leader died of TERM: let the rest have their grace
                        await asyncio.shield(self._killing)
                    exit = await self._finish()
                    if exit is not None:
                        return await self.binder.settle(self.pool, self.node, self.locator.extra, exit)
                down_since, delay = None, opts.backoff_initial_s
            except NodeError as exc:
                if self.pool.closed:
                    raise asyncio.CancelledError from None
                if exc.reason != CHANNEL_REFUSED:
                    down_since = down_since or time.monotonic()
                    if time.monotonic() - down_since >= opts.lost_grace_s:
                        self.binder.later(self.node, self.locator.extra)  # its cgroup goes when the node is back
                        return Exit(exit_code=None, lost=True, reason=f"node {self.node} lost: {exc.message}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, opts.backoff_max_s, max(opts.lost_grace_s / 2, 0.1))
                continue
            await asyncio.sleep(opts.poll_interval_s)

    async def _watch(self) -> bool:
        """Stream (or poll once when streams are used up); True once the leader is gone."""
        slots = self.pool.stream_slots(self.node)
        if slots.locked():
            return await self._stream("once")
        async with slots:
            return await self._stream("follow")

    async def _stream(self, mode: str) -> bool:
        return await self._pipe(self._watch_cmd(mode), DEAD)

    async def _pipe(self, command: str, dead: int) -> bool:
        """Run ``command``, appending its stdout/stderr to the local logs; True on ``dead``."""
        proc = await self.pool.open(self.node, command)
        try:
            await asyncio.gather(_copy(proc.stdout, self.job.stdout_path), _copy(proc.stderr, self.job.stderr_path))
            done = await proc.wait()
        except (OSError, EOFError, asyncssh.Error) as exc:  # a channel dropped mid-read
            raise NodeError(self.node, CONNECTION_LOST, f"follower stopped: {exc!r}") from None
        finally:
            proc.close()
        if done.exit_status is None:
            raise NodeError(self.node, CONNECTION_LOST, "connection dropped while following")
        if done.exit_status not in (0, DEAD, ALIVE):
            raise NodeError(self.node, CONNECTION_LOST, f"follower exited {done.exit_status}")
        return done.exit_status == dead

    async def _finish(self) -> Exit | None:
        """Kill leftovers and drain the logs (one command), fetch exit and result.

        None when the leader turns out to be alive after all (a watcher killed by
        someone else): the caller goes back to following. The remote directory
        is removed in the background.
        """
        o1, o2 = self._offsets()
        if not await self._pipe(remote_command("finish", self.dir, self.locator.pid, int(self.locator.start_time),
                                               self.tag, o1, o2, run_as=self.run_as), 0):
            return None
        # One command reads the exit record and result and (unless kept) removes the directory.
        keep = self.pool.options.keep_remote_dirs
        res = await self.pool.run(self.node, remote_command("fetch", self.dir, "keep" if keep else "remove",
                                                            run_as=self.run_as))
        # Anything a login shell printed first (a chatty .bashrc) stays before the marker.
        head, _, rest = res.stdout.partition(FETCH_MARK.encode() + b"\n")[2].partition(b"\n")
        kind, _, result = rest.partition(b"\n")
        if kind == b"result":
            self.job.result_path.write_bytes(result)
        rc = head.decode().removeprefix("exit=").strip().replace("|", "\n")
        recorded = exit_from_record(rc)
        if recorded is not None:
            self.job.exit_path.write_text(rc + "\n")
            return recorded
        if self._ended_by:
            return Exit(exit_code=None, signal=f"SIG{self._ended_by}" if self._ended_by != "STUCK" else "SIGKILL")
        return Exit(exit_code=None, lost=True, reason=f"remote process on {self.node} ended without an exit record")


class SshLauncher:
    """Starts attempts on ``job.hosts[0].node`` over one pooled connection per node."""

    def __init__(self, nodes: Mapping[str, NodeConn] | SshPool, options: SshOptions | None = None,
                 accounts: Accounts | None = None, binder: RemoteBinder | None = None):
        self._owns_pool = not isinstance(nodes, SshPool)
        self.pool = SshPool(nodes, options) if self._owns_pool else nodes
        self.accounts = accounts or Accounts()
        self.binder = binder or RemoteBinder("none")
        self._handles: set[SshHandle] = set()

    def _track(self, handle: SshHandle) -> SshHandle:
        self._handles.add(handle)
        handle._follower.add_done_callback(lambda _: self._handles.discard(handle))
        return handle

    async def start(self, job: LaunchJob) -> SshHandle:
        """Start ``job`` detached on its node; returns once the remote pid is known."""
        if not job.hosts:
            raise ValidationFailedError("an ssh attempt needs a host", [{"field": "hosts", "problem": "empty"}])
        node = job.hosts[0].node
        tag = new_tag(job)
        run_as = self.accounts.account_name(job.user)
        base = (_size(job.stdout_path), _size(job.stderr_path))
        job.stdout_path.touch()
        job.stderr_path.touch()
        launch = self.accounts.launch
        pairs = env_pairs(job.env)  # validated before anything is made on the node
        await self.binder.retry(self.pool, node)
        bound = await self.binder.prepare(self.pool, node, f"a{job.attempt_id}", job.hosts[0].binding, run_as)
        cmd = remote_command("launch", remote_dir(self.pool, node, job), tag, launch.path, launch.lang,
                             len(launch.pass_env), *launch.pass_env, *pairs,
                             *wrap_argv(list(job.argv), job.workdir, **bound.wrap), run_as=run_as)
        try:
            res = await self.pool.run(node, cmd)
            pid, start, absdir = res.stdout.decode().strip().splitlines()[-1].split(maxsplit=2)
        except BaseException:
            await self.binder.settle(self.pool, node, bound.extra(), Exit(exit_code=None, lost=True))
            raise
        extra = {"node": node, "dir": absdir.strip(), "tag": tag, "out0": base[0], "err0": base[1], **bound.extra()}
        if run_as is not None:
            extra["run_as"] = run_as
        return self._track(SshHandle(self.pool, job, Locator(pid=int(pid), start_time=float(start), extra=extra),
                                     self.binder))

    async def adopt(self, job: LaunchJob, locator: Locator) -> SshHandle | None:
        """Reattach when the pid still runs (same start time) or left an exit record."""
        x = locator.extra
        try:
            res = await self.pool.run(x["node"], remote_command(
                "status", x["dir"], locator.pid, int(locator.start_time), run_as=x.get("run_as")))
        except NodeError as exc:
            if exc.reason == UNKNOWN_NODE:
                return None
            log.warning("adopting attempt %s: %s; will keep trying", job.attempt_id, exc.message)
        else:
            if res.stdout.decode().strip().endswith("gone"):
                await self.binder.settle(self.pool, x["node"], x, Exit(exit_code=None, lost=True))
                return None
        return self._track(SshHandle(self.pool, job, locator, self.binder))

    async def probe(self, node: str) -> dict:
        """Reachability, load, memory and disk of ``node``; NodeError when unusable."""
        t0 = time.perf_counter()
        await self.pool.connection(node)
        t1 = time.perf_counter()
        res = await self.pool.run(node, remote_command("probe", self.pool.work_root(node)))
        f = res.stdout.decode().strip().splitlines()[-1].split()
        return {
            "node": node, "reachable": True, "connect_ms": round((t1 - t0) * 1000, 2),
            "rtt_ms": round((time.perf_counter() - t1) * 1000, 2),
            "load_1m": float(f[0]), "load_5m": float(f[1]), "load_15m": float(f[2]), "cpus": int(f[3]),
            "memory_total_mb": int(f[4]) // 1024, "memory_available_mb": int(f[5]) // 1024,
            "disk_total_mb": int(f[6]) // 1024, "disk_free_mb": int(f[7]) // 1024,
            "work_root": self.pool.work_root(node), **await self.binder.enforcement(self.pool, node),
        }

    async def close(self) -> None:
        """Stop following and close connections; remote attempts keep running."""
        for handle in list(self._handles):
            handle.detach()
        if self._owns_pool:
            await self.pool.close()
