"""The binding of an attempt on an SSH node: the same cgroups and fallbacks as ``cgroups.py``, in sh.

``BIND_SH`` is a constant script (values arrive as positional parameters)
run by the node's login user. ``enforcement`` finds what the node can do
(the same rules as ``cgroups.detect``: v2 with its memory controller, else
v1, else RLIMIT_AS; a relative parent is under the login session's own
cgroup); ``bind`` makes the attempt's cgroup with its limits and hands its
``cgroup.procs`` to the task's account on a shared daemon; the wrapper then
joins it before the program starts, as locally. ``unbind`` reads the
accounting and OOM count, kills what is left inside and removes it.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

from oaasd.launchers.binding import core_list
from oaasd.launchers.cgroups import CPU_PERIOD_US, CgroupError
from oaasd.launchers.pool import SshPool
from oaasd.launchers.wrap import MAP_CORES
from oaasd.ports import Binding, Exit, Host

BIND_SH = r'''
cgmount() {  # CONTROLLER ("" = v2): its mount point
  while read -r dev mnt fs opts rest; do
    if [ -z "$1" ]; then [ "$fs" = cgroup2 ] && { echo "$mnt"; return; }
    elif [ "$fs" = cgroup ]; then case ,$opts, in *,$1,*) echo "$mnt"; return;; esac; fi
  done < /proc/self/mounts
}
cgown() {  # CONTROLLER ("" = v2): this shell's cgroup in it
  while IFS=: read -r id cs path; do
    if [ -z "$1" ]; then [ -z "$cs" ] && { echo "$path"; return; }
    else case ,$cs, in *,$1,*) echo "$path"; return;; esac; fi
  done < /proc/self/cgroup
}
cgbase() {  # MOUNT OWN PARENT INSTANCE
  case $3 in /*) echo "$1$3/$4";; *) o=${2%/}; echo "$1$o/$3/$4";; esac
}
cghand() {  # MOUNT DIR: v2 hands memory and cpu down every level from MOUNT to DIR
  l=$1; r=${2#"$1"}; r=${r#/}
  while :; do
    for c in memory cpu; do
      grep -qw "$c" "$l/cgroup.subtree_control" 2>/dev/null || echo "+$c" 2>/dev/null > "$l/cgroup.subtree_control" || return 1
    done
    [ -n "$r" ] || return 0
    l=$l/${r%%/*}; case $r in */*) r=${r#*/};; *) r=;; esac
  done
}
cgroots() {  # MODE PARENT INSTANCE: sets kind (cgroup2|cgroup1|rlimit|none|fail), roots ("role=dir ..."), why
  roots=
  case $1 in
    none) kind=none why="binding.enforce = none: no limits, no affinity change"; return;;
    rlimit) kind=rlimit why="binding.enforce = rlimit: memory as RLIMIT_AS, no CPU quota"; return;;
  esac
  m=$(cgmount "")
  if [ -n "$m" ] && grep -qw memory "$m/cgroup.controllers" 2>/dev/null; then
    d=$(cgbase "$m" "$(cgown "")" "$2" "$3")
    if mkdir -p "$d" 2>/dev/null && [ -w "$d" ] && cghand "$m" "$d"; then
      kind=cgroup2 roots="memory=$d cpuacct=$d cpu=$d" why="cgroup v2 at $d"; return
    fi
    why="cgroup v2: cannot make $d as $(id -un)"
  elif [ -n "$(cgmount memory)" ]; then
    why="cgroup v1 at"
    for c in memory cpuacct cpu; do
      m=$(cgmount $c); [ -n "$m" ] || continue
      d=$(cgbase "$m" "$(cgown $c)" "$2" "$3")
      if ! mkdir -p "$d" 2>/dev/null || [ ! -w "$d" ]; then  # only memory is required; without cpu/cpuacct: no quota/accounting
        [ $c = memory ] && { why="cgroup v1: cannot make $d as $(id -un)"; break; }
        why="$why (not $c: cannot make $d)"; continue
      fi
      roots="$roots $c=$d" why="$why $d"
    done
    [ -z "$roots" ] || { kind=cgroup1; return; }
  else
    why="no cgroup hierarchy with the memory controller is mounted"
  fi
  if [ "$1" = cgroup ]; then kind=fail why="binding.enforce = cgroup but $why"
  else kind=rlimit why="$why; memory as RLIMIT_AS, no CPU quota"; fi
}
cgrm() {  # DIR...: kill what is left inside, rmdir; 1 if one stays
  for d in "$@"; do
    n=0
    while [ -d "$d" ] && ! rmdir "$d" 2>/dev/null; do
      [ $n -lt 200 ] || return 1
      for p in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
      sleep 0.01; n=$((n+1))
    done
  done
}
verb=$1; shift
case $verb in
enforcement)  # MODE PARENT INSTANCE: "KIND WHY"
  cgroots "$@"; echo "$kind $why";;
bind)  # MODE PARENT INSTANCE NAME MEM_BYTES QUOTA_US OWNER: "KIND role=dir ..." or "KIND WHY" without a cgroup
  cgroots "$1" "$2" "$3"; n=$4 mem=$5 q=$6 own=$7
  case $kind in cgroup*) ;; *) echo "$kind $why"; exit 0;; esac
  out=$kind made=
  for r in $roots; do
    role=${r%%=*} d=${r#*=}/$n
    [ "$role" = cpu ] && [ "$q" = 0 ] && continue
    if [ $kind = cgroup1 ] || [ "$role" = memory ]; then
      mkdir "$d" 2>/dev/null || { cgrm $made; echo "fail cannot make cgroup $d: it exists or ${d%/*} is not writable"; exit 0; }
      made="$made $d"
      [ -z "$own" ] || chown "$own" "$d/cgroup.procs" 2>/dev/null || { cgrm $made; echo "fail cannot hand $d to $own"; exit 0; }
    fi
    out="$out $role=$d"
    ok=0
    case $kind.$role in
      cgroup1.memory) [ "$mem" = 0 ] || echo "$mem" 2>/dev/null > "$d/memory.limit_in_bytes" || ok=1;;
      cgroup1.cpu) { echo 100000 > "$d/cpu.cfs_period_us" && echo "$q" > "$d/cpu.cfs_quota_us"; } 2>/dev/null || ok=1;;
      cgroup2.memory) [ "$mem" = 0 ] || echo "$mem" 2>/dev/null > "$d/memory.max" || ok=1
        [ "$mem" = 0 ] || [ ! -e "$d/memory.swap.max" ] || echo 0 2>/dev/null > "$d/memory.swap.max";;
      cgroup2.cpu) echo "$q 100000" 2>/dev/null > "$d/cpu.max" || ok=1;;
    esac
    [ $ok = 0 ] || { cgrm $made; echo "fail cannot set the $role limit of cgroup $d"; exit 0; }
  done
  echo "$out";;
unbind)  # KIND DIR...: "PEAK_BYTES CPU OOM_KILLS" (CPU: ns in v1, usec in v2), then remove; exit 1 if one stays
  kind=$1; shift
  pk=; cpu=; oom=0
  for d in "$@"; do
    [ -r "$d/memory.max_usage_in_bytes" ] && read -r pk < "$d/memory.max_usage_in_bytes"
    [ -r "$d/memory.peak" ] && read -r pk < "$d/memory.peak"
    [ -r "$d/cpuacct.usage" ] && read -r cpu < "$d/cpuacct.usage"
    if [ -r "$d/cpu.stat" ] && [ $kind = cgroup2 ]; then
      while read -r k v; do [ "$k" = usage_usec ] && cpu=$v; done < "$d/cpu.stat"
    fi
    for f in "$d/memory.oom_control" "$d/memory.events"; do
      [ -r "$f" ] && while read -r k v; do [ "$k" = oom_kill ] && oom=$v; done < "$f"
    done
  done
  echo "${pk:--} ${cpu:--} $oom"
  cgrm "$@";;
*) echo "unknown verb $verb" >&2; exit 2;;
esac
'''


def bind_command(verb: str, *args: object) -> str:
    """The command line running ``BIND_SH`` with ``verb`` as the login user, every word quoted."""
    return " ".join(shlex.quote(str(a)) for a in ["/bin/sh", "-c", BIND_SH, "oaas-bind", verb, *args])


@dataclass(frozen=True)
class RemoteBound:
    """The binding of one remote attempt: its cgroup (kind and role -> dir) and the wrapper's parameters."""

    kind: str
    dirs: dict[str, str]
    wrap: dict[str, str]

    def extra(self) -> dict[str, object]:
        """What the locator keeps (as the local launcher's)."""
        return {"cgroup": self.kind, "cgroups": self.dirs} if self.dirs else {}


# An MPI rank's wrapper (run by orted on its host): its line of the rank table is the
# binding of the host the rank was mapped to. Parameters: N, then N lines of FIRST LAST
# CPUS PROCS VMEM_KB GPUS (GPUS: "-" for none, else VENDOR:LIST), then the rank's argv.
RANK_SH = MAP_CORES + r"""
n=$1; shift; r=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}; c= g= v= u=-
while [ "$n" -gt 0 ]; do
  if [ "$r" -ge "$1" ] && [ "$r" -le "$2" ]; then c=$3 g=$4 v=$5 u=$6; fi
  shift 6; n=$((n-1))
done
for f in $g; do
  { echo $$ > "$f"; } 2>/dev/null || { echo "oaasd: rank $r cannot join cgroup $f" >&2; exit 126; }
done
[ -z "$c" ] || mapcores
if [ -n "$c" ] && ! taskset -pc "$c" $$ >/dev/null 2>&1; then echo "oaasd: rank $r cannot take cores $c" >&2; exit 126; fi
if [ -n "$v" ] && ! ulimit -v "$v" 2>/dev/null; then echo "oaasd: rank $r cannot set RLIMIT_AS $v KiB" >&2; exit 126; fi
case $u in
  nvidia:*) CUDA_VISIBLE_DEVICES=${u#*:}; export CUDA_VISIBLE_DEVICES;;
  amd:*) ROCR_VISIBLE_DEVICES=${u#*:} HIP_VISIBLE_DEVICES=${u#*:}; export ROCR_VISIBLE_DEVICES HIP_VISIBLE_DEVICES;;
esac
exec "$@"
"""


def rank_argv(hosts: list[Host], bound: dict[str, RemoteBound], argv: list[str],
              gpu_nodes: frozenset[str] = frozenset()) -> list[str]:
    """Each rank's argv: the rank wrapper with one table line per host, in hostfile order (ranks
    are mapped by slot: host i holds the ranks after the slots of the hosts before it)."""
    table, first = [], 0
    for h in hosts:
        b = bound.get(h.node)
        wrap = b.wrap if b is not None else {"cpus": "", "procs": "", "vmem_kb": ""}
        gpus = "-"
        if h.binding.gpus or h.node in gpu_nodes:
            gpus = f"{h.binding.gpu_vendor}:" + ",".join(str(g) for g in h.binding.gpus)
        table += [str(first), str(first + h.slots - 1), wrap["cpus"], wrap["procs"], wrap["vmem_kb"], gpus]
        first += h.slots
    return ["/bin/sh", "-c", RANK_SH, "oaas-rank", str(len(hosts)), *table, *argv]


class RemoteBinder:
    """Sets up and tears down attempts' bindings on SSH nodes; ``mode``/``parent``/``instance`` as ``Enforcer``."""

    def __init__(self, mode: str = "auto", parent: str = "oaasd", instance: str = "d0"):
        self.mode, self.parent, self.instance = mode, parent, instance
        self._later: dict[str, list[dict]] = {}  # node -> cgroups of attempts lost with it, removed once it answers

    def later(self, node: str, extra: dict) -> None:
        """Remove this attempt's cgroup on ``node`` when it answers again (it was lost unreachable)."""
        if extra.get("cgroups"):
            self._later.setdefault(node, []).append(extra)

    async def retry(self, pool: SshPool, node: str) -> None:
        """Remove the cgroups left on ``node`` by attempts lost with it (before a launch there)."""
        for extra in self._later.pop(node, []):
            await self.settle(pool, node, extra, Exit(exit_code=None, lost=True))

    async def enforcement(self, pool: SshPool, node: str) -> dict[str, str]:
        """What ``node`` enforces and why (the node view's ``enforcement``, ``enforcement_reason``)."""
        res = await pool.run(node, bind_command("enforcement", self.mode, self.parent, self.instance))
        kind, _, why = res.stdout.decode().strip().splitlines()[-1].partition(" ")
        return {"enforcement": "none" if kind == "fail" else kind, "enforcement_reason": why}

    async def prepare(self, pool: SshPool, node: str, name: str, binding: Binding,
                      owner: str | None) -> RemoteBound:
        """Make the attempt's cgroup ``name`` on ``node``; CgroupError (naming the path) when it cannot be made."""
        if self.mode == "none":  # nothing to make or apply: no round trip
            return RemoteBound("none", {}, {"cpus": "", "procs": "", "vmem_kb": ""})
        quota = max(1000, round(binding.cpu_quota * CPU_PERIOD_US)) if binding.cpu_quota else 0
        res = await pool.run(node, bind_command("bind", self.mode, self.parent, self.instance, name,
                                                binding.memory_mb << 20, quota, owner or ""))
        kind, _, rest = res.stdout.decode().strip().splitlines()[-1].partition(" ")
        if kind == "fail":
            raise CgroupError(0, f"node {node}: {rest}")
        cpus = "" if kind == "none" else core_list(binding.cores)
        if not kind.startswith("cgroup"):
            vmem = str(binding.memory_mb * 1024) if kind == "rlimit" and binding.memory_mb else ""
            return RemoteBound(kind, {}, {"cpus": cpus, "procs": "", "vmem_kb": vmem})
        dirs = dict(word.split("=", 1) for word in rest.split())
        procs = " ".join(f"{d}/cgroup.procs" for d in dict.fromkeys(dirs.values()))
        return RemoteBound(kind, dirs, {"cpus": cpus, "procs": procs, "vmem_kb": ""})

    async def settle(self, pool: SshPool, node: str, extra: dict, exit_: Exit) -> Exit:
        """Fold the remote cgroup's accounting and OOM count into ``exit_`` and remove the cgroup."""
        if not extra.get("cgroups"):
            return exit_
        kind = extra["cgroup"]
        res = await pool.run(node, bind_command("unbind", kind, *dict.fromkeys(extra["cgroups"].values())),
                             check=False)
        words = (res.stdout.decode().strip().splitlines() or ["- - 0"])[-1].split()
        peak, cpu, oom = (words + ["-", "-", "0"])[:3]
        rss = round(int(peak) / (1 << 20), 1) if peak.isdigit() else None
        cpu_s = round(int(cpu) / (1e6 if kind == "cgroup2" else 1e9), 3) if cpu.isdigit() else exit_.cpu_s
        oomed = oom.isdigit() and int(oom) > 0 and not exit_.lost and exit_.exit_code != 0
        return dataclasses.replace(exit_, oom=oomed, max_rss_mb=rss, cpu_s=cpu_s)
