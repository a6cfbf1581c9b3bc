"""Carrying out a placement's ``Binding`` on a node: cgroup, affinity, rlimit, GPUs, accounting.

``Enforcer`` holds what this host can enforce (``cgroups.detect``, once) and
prepares each attempt: its cgroup made with the limits, and the wrapper's
binding parameters (cgroup.procs files to join, the core list, the RLIMIT_AS
fallback). After the end, ``settle`` reads the cgroup's accounting and OOM
count into the attempt's ``Exit`` and removes the cgroup; every end path of
the local launcher (exit, kill, adopt after a restart, found ended) goes
through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from oaasd.launchers.cgroups import AttemptGroup, CgroupError, Enforcement, detect, sweep
from oaasd.ports import Binding, Exit

log = logging.getLogger("oaasd.binding")

GPU_VARS = {"nvidia": ("CUDA_VISIBLE_DEVICES",), "amd": ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")}


def instance_of(state_dir: Path | str) -> str:
    """A short name of one daemon (its state directory) that keeps its cgroups apart from others'."""
    return "d" + hashlib.sha1(str(Path(state_dir).absolute()).encode()).hexdigest()[:10]


def core_list(cores: tuple[int, ...] | list[int]) -> str:
    """``taskset -c`` form of a core set (empty: no affinity change)."""
    return ",".join(str(c) for c in sorted(set(cores)))


def gpu_env(binding: Binding, node_has_gpus: bool) -> dict[str, str]:
    """The visible-devices variables of a binding: its devices, or none at all on a GPU node."""
    if not binding.gpus and not node_has_gpus:
        return {}
    value = ",".join(str(g) for g in binding.gpus)
    return {name: value for name in GPU_VARS.get(binding.gpu_vendor, GPU_VARS["nvidia"])}


@dataclass(frozen=True)
class Prepared:
    """One attempt's binding, ready for the wrapper: its cgroup (or None) and the wrapper's parameters."""

    group: AttemptGroup | None
    cpus: str
    procs: str
    vmem_kb: str

    def wrap_args(self) -> dict[str, str]:
        """Keyword arguments of ``wrap_argv``."""
        return {"cpus": self.cpus, "procs": self.procs, "vmem_kb": self.vmem_kb}


NOTHING = Prepared(None, "", "", "")


class Enforcer:
    """What this host enforces, and the per-attempt set-up and tear-down of it."""

    def __init__(self, mode: str = "auto", parent: str = "oaasd", instance: str = "d0"):
        self.mode = mode
        self.parent = parent
        self.instance = instance
        self._enforcement: Enforcement | None = None

    @property
    def enforcement(self) -> Enforcement:
        """The host's enforcement, detected on first use (making the parent cgroups)."""
        if self._enforcement is None:
            self._enforcement = detect(self.mode, self.parent, self.instance)
            log.info("binding enforcement: %s (%s)", self._enforcement.kind, self._enforcement.why)
        return self._enforcement

    def prepare(self, attempt_id: int, binding: Binding, owner: int | None = None) -> Prepared:
        """Make the attempt's cgroup (CgroupError names the path; nothing is left half-made)."""
        enf = self.enforcement
        if enf.required:
            raise CgroupError(0, enf.why)
        if enf.kind == "none":
            return NOTHING
        group, vmem = None, ""
        if enf.kind.startswith("cgroup"):
            group = AttemptGroup.create(enf, f"a{attempt_id}", binding, owner)
        elif binding.memory_mb:
            vmem = str(binding.memory_mb * 1024)
        return Prepared(group, core_list(binding.cores), " ".join(group.procs_files()) if group else "", vmem)

    async def settle(self, exit_: Exit, group: AttemptGroup | None, max_rss_mb: float | None = None,
                     cpu_s: float | None = None) -> Exit:
        """Fold the cgroup's accounting and OOM count (else the given rusage) into ``exit_``, remove the cgroup."""
        oom = False
        if group is not None:
            used = group.usage()
            max_rss_mb = used.max_rss_mb if used.max_rss_mb is not None else max_rss_mb
            cpu_s = used.cpu_s if used.cpu_s is not None else cpu_s
            oom = used.oom_kills > 0 and not exit_.lost and exit_.exit_code != 0
            if not await group.remove():
                log.error("cgroup %s of an ended attempt cannot be removed (processes survive SIGKILL)",
                          next(iter(group.dirs.values())))
        cpu_s = cpu_s if cpu_s is not None else exit_.cpu_s
        return dataclasses.replace(exit_, oom=oom or exit_.oom, max_rss_mb=max_rss_mb, cpu_s=cpu_s)

    async def sweep(self, keep: set[int]) -> list[str]:
        """Remove this daemon's attempt cgroups other than those of the attempts ``keep`` (after a restart)."""
        enf = self.enforcement
        if not enf.kind.startswith("cgroup"):
            return []
        gone = await sweep(enf, {f"a{a}" for a in keep})
        if gone:
            log.info("removed cgroups of attempts no longer running: %s", ", ".join(gone))
        return gone

    def close(self) -> None:
        """Remove this daemon's instance directories, and the parent, when no cgroup is left in them."""
        enf = self._enforcement
        if enf is None:
            return
        for d in set(enf.dirs.values()):
            for level in (d, d.parent):  # rmdir fails on a directory still holding cgroups: others' are safe
                try:
                    level.rmdir()
                except OSError:
                    break
