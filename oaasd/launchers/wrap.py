"""The tiny shell wrapper every attempt runs under, local or remote.

The wrapper is a constant script: the user's argv arrives as positional
parameters (``"$@"``), never spliced into the script text. It runs the
program with stdout/stderr already redirected by the launcher, then writes
the exit status to ``$OAAS_EXIT_FILE`` so that a daemon restarted in the
meantime (no longer the parent, so unable to ``waitpid``) can still learn
how the attempt ended.

The wrapper also enters the task's ``workdir`` (its first parameter, empty
for none), after the switch to the task's account: a directory that does not
exist or that the task's user may not enter is recorded as ``workdir``
instead of a status, the task's own fault (``BadWorkdir``), not its node's.

Before any of the user's program runs, the wrapper carries out the binding
(``oaasd.launchers.binding``): it writes its own pid into each cgroup's
``cgroup.procs`` (parameter 3, daemon-made paths separated by spaces), sets
its CPU affinity (``taskset``, parameter 2: a core list) and, where no
cgroup is available, ``ulimit -v`` (parameter 4, KiB); its children inherit
all three. A step that fails is recorded as ``bind WHAT`` and the program
never starts. After the program, the record's second and third lines are the
shell's ``times`` (the waited children's user and system CPU time): the
accounting of an attempt whose exit nobody could ``wait4`` for.
"""

from __future__ import annotations

import dataclasses
import signal as _signal
from pathlib import Path

from oaasd.ports import Exit
from oaasd.states import Reason

BAD_WORKDIR = "workdir"  # the exit record of a task that could not enter its workdir
BAD_WORKDIR_STATUS = 125  # the wrapper's status then (the record is what counts)
BIND = "bind"  # the exit record of an attempt whose binding could not be applied (program not started)

# Sets ``c`` (a node's declared core indices, comma-separated) to as many of this
# host's allowed CPUs: index i takes the (i mod count)-th of them. A node may
# declare more cores than its host has CPUs (oversubscription, or a test host);
# then its cores wrap around instead of naming CPUs that do not exist. Builtins
# only (no fork); every value it evals is a number from /proc or the placement.
MAP_CORES = r"""mapcores() {
  m_a=; while read -r m_k m_v; do if [ "$m_k" = Cpus_allowed_list: ]; then m_a=$m_v; break; fi; done < /proc/self/status
  m_o=$IFS; IFS=,; set -- $m_a; IFS=$m_o; m_n=0
  for m_r in "$@"; do
    m_lo=${m_r%-*}; m_hi=${m_r#*-}
    while [ "$m_lo" -le "$m_hi" ]; do eval "m_$m_n=$m_lo"; m_n=$((m_n+1)); m_lo=$((m_lo+1)); done
  done
  [ "$m_n" -gt 0 ] || return 0
  IFS=,; set -- $c; IFS=$m_o; c=
  for m_x in "$@"; do eval "m_y=\$m_$((m_x % m_n))"; c="$c${c:+,}$m_y"; done
}
"""

# Constant text: user input only ever reaches it as "$@". The trap keeps the
# wrapper alive through the group's SIGTERM, so the program gets its grace
# period and the wrapper still records how it ended.
WRAP_SCRIPT = f"""trap : TERM INT HUP
{MAP_CORES}w=$1 c=$2 g=$3 v=$4; shift 4
[ -z "$c" ] || mapcores
if [ -n "$c" ] && ! taskset -pc "$c" $$ >/dev/null 2>&1; then
  echo "oaasd: cannot set CPU affinity $c" >&2; echo "{BIND} affinity $c" > "$OAAS_EXIT_FILE"; exit {BAD_WORKDIR_STATUS}
fi
for f in $g; do
  {{ echo $$ > "$f"; }} 2>/dev/null || {{ echo "oaasd: cannot join cgroup $f" >&2; echo "{BIND} cgroup $f" > "$OAAS_EXIT_FILE"; exit {BAD_WORKDIR_STATUS}; }}
done
if [ -n "$v" ] && ! ulimit -v "$v" 2>/dev/null; then
  echo "oaasd: cannot set RLIMIT_AS $v KiB" >&2; echo "{BIND} rlimit $v" > "$OAAS_EXIT_FILE"; exit {BAD_WORKDIR_STATUS}
fi
if [ -n "$w" ] && ! cd -- "$w" 2>/dev/null; then
  echo "oaasd: cannot enter workdir $w" >&2; echo {BAD_WORKDIR} > "$OAAS_EXIT_FILE"; exit {BAD_WORKDIR_STATUS}
fi
"$@"
rc=$?
{{ echo "$rc"; times; }} > "$OAAS_EXIT_FILE"
exit "$rc"
"""


def wrap_argv(argv: list[str] | tuple[str, ...], workdir: str | None = None, cpus: str = "", procs: str = "",
              vmem_kb: str = "") -> list[str]:
    """Return the argv that runs ``argv`` in ``workdir`` under the exit-recording wrapper,
    first joining the cgroups of ``procs``, on the cores ``cpus``, under RLIMIT_AS ``vmem_kb``."""
    return ["/bin/sh", "-c", WRAP_SCRIPT, "oaas-task", workdir or "", cpus, procs, vmem_kb, *argv]


def signal_name(num: int) -> str:
    """Return the SIG* name of a signal number, or SIG<num> when unknown."""
    try:
        return _signal.Signals(num).name
    except ValueError:
        return f"SIG{num}"


def exit_from_status(rc: int) -> Exit:
    """Turn a wrapper's exit status (or -signal from waitpid) into an Exit.

    A shell reports a program killed by signal n as 128 + n; that is decoded
    to a signal name as Slurm does, keeping the raw code as well.
    """
    if rc < 0:
        return Exit(exit_code=None, signal=signal_name(-rc))
    if rc > 128 and rc - 128 < 65:
        return Exit(exit_code=rc, signal=signal_name(rc - 128))
    return Exit(exit_code=rc)


def times_cpu_s(lines: list[str]) -> float | None:
    """User + system CPU seconds of the waited children from the shell's ``times`` lines."""
    if len(lines) < 2:
        return None
    total = 0.0
    for word in lines[1].split():
        m, _, s = word.rstrip("s").partition("m")
        try:
            total += int(m) * 60 + float(s)
        except ValueError:
            return None
    return round(total, 3)


def exit_from_record(text: str) -> Exit | None:
    """Turn the text of an exit record into an Exit, or None when it is not one."""
    lines = text.strip().splitlines()
    first = lines[0].strip() if lines else ""
    if first == BAD_WORKDIR:
        return Exit(exit_code=None, fault=Reason.BAD_WORKDIR,
                    reason="workdir does not exist or the task's user may not enter it")
    if first.startswith(BIND + " "):
        return Exit(exit_code=None, lost=True, reason=f"launch failed: cannot apply the binding: {first[5:]}")
    try:
        status = exit_from_status(int(first))
    except ValueError:
        return None
    cpu = times_cpu_s(lines[1:])
    return status if cpu is None else dataclasses.replace(status, cpu_s=cpu)


def read_exit_file(path: Path) -> Exit | None:
    """Return the Exit recorded by the wrapper, or None if none was written."""
    try:
        return exit_from_record(path.read_text())
    except FileNotFoundError:
        return None
