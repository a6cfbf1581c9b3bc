"""One cgroup per attempt: v2 where the unified hierarchy has the memory controller, v1 otherwise.

``detect`` finds what a node can enforce (``Enforcement``: ``cgroup2``,
``cgroup1``, ``rlimit`` or ``none``, and why). ``AttemptGroup`` is the
cgroup of one attempt: made with its limits before the attempt starts (the
wrapper joins it before the user's program runs), read for accounting and
OOM kills after the end, then emptied and removed. v1 and v2 take the same
path through this code; only the file names differ (``FILES``).

Where attempt cgroups live: ``<mount>/<parent>/<instance>/a<attempt id>``.
A relative ``parent`` is under the daemon's own cgroup of each hierarchy
(what systemd's ``Delegate=yes`` hands a service), an absolute one under the
hierarchy's root. ``instance`` tells daemons on one host apart (each has its
own attempt ids).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from oaasd.ports import Binding

CPU_PERIOD_US = 100_000
MOUNTS = Path("/proc/self/mounts")
OWN = Path("/proc/self/cgroup")

# What each hierarchy calls the files of one role; v2 has one directory for every role.
FILES = {
    "cgroup2": {"memory.limit": "memory.max", "memory.peak": "memory.peak", "memory.now": "memory.current",
                "memory.oom": "memory.events", "cpu.quota": "cpu.max", "cpu.usage": "cpu.stat"},
    "cgroup1": {"memory.limit": "memory.limit_in_bytes", "memory.peak": "memory.max_usage_in_bytes",
                "memory.now": "memory.usage_in_bytes", "memory.oom": "memory.oom_control",
                "cpu.quota": "cpu.cfs_quota_us", "cpu.usage": "cpuacct.usage"},
}
V1_CONTROLLERS = {"memory": "memory", "cpu": "cpu", "cpuacct": "cpuacct"}  # role -> v1 controller


class CgroupError(OSError):
    """A cgroup could not be made, joined or removed; the message names the path."""


@dataclass(frozen=True)
class Enforcement:
    """What a node enforces and why: ``kind`` is cgroup2, cgroup1, rlimit or none.

    ``dirs`` maps each role (memory, cpu, cpuacct; v2: all three the same
    directory) to the directory attempt cgroups are made in. ``required``:
    ``enforce = "cgroup"`` was asked for but is not available, so every
    launch fails with ``why``.
    """

    kind: str
    why: str
    dirs: dict[str, Path] = field(default_factory=dict)
    required: bool = False

    def view(self) -> dict[str, str]:
        """What the node view shows."""
        return {"enforcement": self.kind, "enforcement_reason": self.why}


def _mounts(text: str) -> tuple[Path | None, dict[str, Path]]:
    """(the cgroup2 mount, v1 controller -> mount) from /proc/self/mounts text."""
    v2, v1 = None, {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        if parts[2] == "cgroup2" and v2 is None:
            v2 = Path(parts[1])
        elif parts[2] == "cgroup":
            for opt in parts[3].split(","):
                if opt in V1_CONTROLLERS.values():
                    v1.setdefault(opt, Path(parts[1]))
    return v2, v1


def _own(text: str) -> dict[str, str]:
    """The daemon's own cgroup path per v1 controller, and under '' the v2 one."""
    out = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def parent_dir(mount: Path, own: str, parent: str, instance: str) -> Path:
    """The directory attempt cgroups are made in, in one hierarchy."""
    base = mount / parent.lstrip("/") if parent.startswith("/") else mount / own.lstrip("/") / parent
    return base / instance


def _make_parent(path: Path, v2_mount: Path | None = None) -> None:
    """mkdir -p; in v2 also hand memory and cpu down every level from the mount."""
    path.mkdir(parents=True, exist_ok=True)
    if v2_mount is None:
        return
    parts = path.relative_to(v2_mount).parts
    for level in [v2_mount, *(v2_mount.joinpath(*parts[:i + 1]) for i in range(len(parts)))]:
        control = level / "cgroup.subtree_control"  # down to the parent itself: attempts are its children
        have = control.read_text().split()
        want = [c for c in ("memory", "cpu") if c not in have]
        if want:
            control.write_text(" ".join(f"+{c}" for c in want))


def detect(mode: str, parent: str, instance: str, mounts: str | None = None, own: str | None = None) -> Enforcement:
    """What this host can enforce under ``[binding]`` ``enforce`` = auto, cgroup, rlimit or none."""
    if mode == "none":
        return Enforcement("none", "binding.enforce = none: no limits, no affinity change")
    if mode == "rlimit":
        return Enforcement("rlimit", "binding.enforce = rlimit: memory as RLIMIT_AS, no CPU quota, "
                                     "OOM kills not told apart from other failures")
    try:
        v2, v1 = _mounts(MOUNTS.read_text() if mounts is None else mounts)
        mine = _own(OWN.read_text() if own is None else own)
    except OSError as exc:
        return _fallback(mode, f"cannot read the cgroup mounts: {exc}")
    problem = "no cgroup hierarchy with the memory controller is mounted"
    if v2 is not None and "memory" in _read(v2 / "cgroup.controllers").split():
        d = parent_dir(v2, mine.get("", "/"), parent, instance)
        try:
            _make_parent(d, v2)
            return Enforcement("cgroup2", f"cgroup v2 at {d}", {"memory": d, "cpu": d, "cpuacct": d})
        except OSError as exc:
            problem = f"cgroup v2: cannot make {d}: {exc.strerror or exc}"
    elif "memory" in v1:
        dirs = {role: parent_dir(v1[c], mine.get(c, "/"), parent, instance)
                for role, c in V1_CONTROLLERS.items() if c in v1}
        notes = []
        for role in ("cpu", "cpuacct"):  # only memory is required; without these: no quota, no cgroup CPU time
            try:
                if role in dirs:
                    _make_parent(dirs[role])
            except OSError as exc:
                notes.append(f" (not {role}: cannot make {dirs.pop(role)}: {exc.strerror or exc})")
        try:
            _make_parent(dirs["memory"])
            where = ", ".join(sorted({str(d) for d in dirs.values()}))
            return Enforcement("cgroup1", f"cgroup v1 at {where}" + "".join(notes), dirs)
        except OSError as exc:
            problem = f"cgroup v1: cannot make {dirs['memory']}: {exc.strerror or exc}"
    return _fallback(mode, problem)


def _fallback(mode: str, problem: str) -> Enforcement:
    if mode == "cgroup":
        return Enforcement("none", f"binding.enforce = cgroup but {problem}: attempts fail to launch", required=True)
    return Enforcement("rlimit", f"{problem}; memory as RLIMIT_AS, no CPU quota")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _field(text: str, key: str) -> int:
    """The value of ``key N`` in a flat-keyed cgroup file (memory.events, cpu.stat, oom_control)."""
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().isdigit():
            return int(v)
    return 0


@dataclass(frozen=True)
class CgroupUsage:
    """What an attempt's cgroup accounted: peak memory (MB) and CPU time (s), and OOM kills."""

    max_rss_mb: float | None
    cpu_s: float | None
    oom_kills: int


class AttemptGroup:
    """The cgroup of one attempt: one directory per role (v1) or one for all (v2)."""

    def __init__(self, kind: str, dirs: dict[str, str]):
        self.kind = kind
        self.dirs = {role: Path(d) for role, d in dirs.items()}
        self.files = FILES[kind]

    @classmethod
    def create(cls, enf: Enforcement, name: str, binding: Binding, owner: int | None = None) -> AttemptGroup:
        """Make the attempt's cgroup with its limits; CgroupError (naming the path) leaves nothing behind.

        ``owner``: the uid the task runs as, given ``cgroup.procs`` so its wrapper can join (v1 delegation).
        """
        roles = ["memory", "cpuacct"] + (["cpu"] if binding.cpu_quota else [])
        dirs = {r: str(enf.dirs[r] / name) for r in roles if r in enf.dirs}
        group = cls(enf.kind, dirs)
        made: list[Path] = []
        try:
            for d in dict.fromkeys(group.dirs.values()):
                d.mkdir()
                made.append(d)
                if owner is not None:
                    os.chown(d / "cgroup.procs", owner, -1)
            group._limit(binding)
        except OSError as exc:
            for d in reversed(made):
                _rmdir(d)
            path = exc.filename or (made[-1] if made else next(iter(group.dirs.values()), enf.why))
            raise CgroupError(exc.errno or errno.EIO, f"cannot set up cgroup {path}: {exc.strerror or exc}") from None
        return group

    def _limit(self, binding: Binding) -> None:
        if binding.memory_mb:
            self._write("memory", "memory.limit", str(binding.memory_mb << 20))
            if self.kind == "cgroup2" and (self.dirs["memory"] / "memory.swap.max").exists():
                (self.dirs["memory"] / "memory.swap.max").write_text("0")
        if binding.cpu_quota and "cpu" in self.dirs:
            quota = max(1000, round(binding.cpu_quota * CPU_PERIOD_US))
            if self.kind == "cgroup2":
                self._write("cpu", "cpu.quota", f"{quota} {CPU_PERIOD_US}")
            else:
                (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                self._write("cpu", "cpu.quota", str(quota))

    def _write(self, role: str, what: str, value: str) -> None:
        (self.dirs[role] / self.files[what]).write_text(value)

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to join every role."""
        return [str(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def usage(self) -> CgroupUsage:
        """Peak memory, CPU time and OOM kills, read before removal."""
        mem = self.dirs.get("memory")
        peak = None
        if mem is not None:
            text = _read(mem / self.files["memory.peak"]) or _read(mem / self.files["memory.now"])
            peak = int(text) / (1 << 20) if text.strip().isdigit() else None
        cpu = None
        acct = self.dirs.get("cpuacct")
        if acct is not None:
            text = _read(acct / self.files["cpu.usage"])
            if self.kind == "cgroup2":
                cpu = _field(text, "usage_usec") / 1e6 if text else None
            elif text.strip().isdigit():
                cpu = int(text) / 1e9
        oom = _field(_read(mem / self.files["memory.oom"]), "oom_kill") if mem is not None else 0
        return CgroupUsage(None if peak is None else round(peak, 1), None if cpu is None else round(cpu, 3), oom)

    def pids(self) -> list[int]:
        """Every process still in the attempt's cgroup."""
        out: set[int] = set()
        for f in self.procs_files():
            out.update(int(p) for p in _read(Path(f)).split())
        return sorted(out)

    async def remove(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL whatever is left inside, then rmdir every directory; False if one stays."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        dirs = list(dict.fromkeys(self.dirs.values()))
        while True:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            dirs = [d for d in dirs if not _rmdir(d)]
            if not dirs:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)

    def to_json(self) -> dict[str, object]:
        """What a locator keeps to find the cgroup again after a restart."""
        return {"cgroup": self.kind, "cgroups": {r: str(d) for r, d in self.dirs.items()}}

    @classmethod
    def from_json(cls, extra: dict) -> AttemptGroup | None:
        """The cgroup a locator names, or None when it had none."""
        if not extra.get("cgroups"):
            return None
        return cls(extra["cgroup"], extra["cgroups"])


def _rmdir(d: Path) -> bool:
    """Remove one cgroup directory; True when it is gone."""
    try:
        d.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


async def sweep(enf: Enforcement, keep: set[str]) -> list[str]:
    """Remove the attempt cgroups of this instance not named in ``keep`` (left by a crash); their names."""
    names: set[str] = set()
    for d in set(enf.dirs.values()):
        try:
            names.update(p.name for p in d.iterdir() if p.is_dir() and p.name[:1] == "a" and p.name[1:].isdigit())
        except OSError:
            continue
    gone = sorted(names - keep)
    for name in gone:
        await AttemptGroup(enf.kind, {r: str(d / name) for r, d in enf.dirs.items()}).remove()
    return gone
