"""The tiny shell wrapper every attempt runs under, local or remote.

The wrapper is a constant script: the user's argv arrives as positional
parameters (``"$@"``), never spliced into the script text. It runs the
program with stdout/stderr already redirected by the launcher, then writes
the exit status to ``$OAAS_EXIT_FILE`` so that a daemon restarted in the
meantime (no longer the parent, so unable to ``waitpid``) can still learn
how the attempt ended.
"""

from __future__ import annotations

import signal as _signal
from pathlib import Path

from ..seams import Exit

# Constant text: user input only ever reaches it as "$@". The trap keeps the
# wrapper alive through the group's SIGTERM, so the program gets its grace
# period and the wrapper still records how it ended.
WRAP_SCRIPT = 'trap : TERM INT HUP\n"$@"\nrc=$?\necho "$rc" > "$OAAS_EXIT_FILE"\nexit "$rc"\n'


def wrap_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """Return the argv that runs ``argv`` under the exit-recording wrapper."""
    return ["/bin/sh", "-c", WRAP_SCRIPT, "oaas-task", *argv]


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


def read_exit_file(path: Path) -> Exit | None:
    """Return the Exit recorded by the wrapper, or None if none was written."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return exit_from_status(int(text))
    except ValueError:
        return None
