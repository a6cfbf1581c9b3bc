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
"""

from __future__ import annotations

import signal as _signal
from pathlib import Path

from oaasd.ports import Exit
from oaasd.states import Reason

BAD_WORKDIR = "workdir"  # the exit record of a task that could not enter its workdir
BAD_WORKDIR_STATUS = 125  # the wrapper's status then (the record is what counts)

# Constant text: user input only ever reaches it as "$@". The trap keeps the
# wrapper alive through the group's SIGTERM, so the program gets its grace
# period and the wrapper still records how it ended.
WRAP_SCRIPT = f"""trap : TERM INT HUP
w=$1; shift
if [ -n "$w" ] && ! cd -- "$w" 2>/dev/null; then
  echo "oaasd: cannot enter workdir $w" >&2; echo {BAD_WORKDIR} > "$OAAS_EXIT_FILE"; exit {BAD_WORKDIR_STATUS}
fi
"$@"
rc=$?
echo "$rc" > "$OAAS_EXIT_FILE"
exit "$rc"
"""


def wrap_argv(argv: list[str] | tuple[str, ...], workdir: str | None = None) -> list[str]:
    """Return the argv that runs ``argv`` in ``workdir`` under the exit-recording wrapper."""
    return ["/bin/sh", "-c", WRAP_SCRIPT, "oaas-task", workdir or "", *argv]


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


def exit_from_record(text: str) -> Exit | None:
    """Turn the text of an exit record into an Exit, or None when it is not one."""
    text = text.strip()
    if text == BAD_WORKDIR:
        return Exit(exit_code=None, fault=Reason.BAD_WORKDIR,
                    reason="workdir does not exist or the task's user may not enter it")
    try:
        return exit_from_status(int(text))
    except ValueError:
        return None


def read_exit_file(path: Path) -> Exit | None:
    """Return the Exit recorded by the wrapper, or None if none was written."""
    try:
        return exit_from_record(path.read_text())
    except FileNotFoundError:
        return None
