"""The client sub-commands of the ``oaasd`` console script: submit, status, logs, cancel, wait, nodes.

They talk to a running daemon through ``oaasd.client``; answers become
tables that fit the terminal, errors one line on stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from oaasd.client.http import Client, ClientError, resolve
from oaasd.models import ENV_NAME
from oaasd.states import FINAL, State

EXIT_BY_STATE = {State.COMPLETED: 0, State.FAILED: 1, State.CANCELLED: 2}
EXIT_OTHER = 3  # TIMEOUT, NODE_FAIL, or still not final when `wait --timeout` ran out
EXIT_ERROR = 4  # the request failed: error answer, unreachable server, unreadable input
EXIT_TABLE = """exit codes of `oaasd wait`:
  0  the task COMPLETED
  1  the task FAILED
  2  the task was CANCELLED (2 is also argparse's exit code for bad usage)
  3  any other final state (TIMEOUT, NODE_FAIL), or --timeout ran out first
  4  the request failed (error answer, server unreachable); every command uses 4 for this"""
ELLIPSIS = "…"
MIN_SHRUNK = 4  # a shrunk column keeps at least this many characters


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token`` on ``parser``: given before or after the sub-command, the last one wins.

    They default to "absent" (SUPPRESS), so a sub-command's parser never
    overwrites what the main parser already read; ``connect`` fills the gaps.
    """
    parser.add_argument("--url", default=argparse.SUPPRESS,
                        help="server URL (else $OAAS_URL, the config file, http://127.0.0.1:8750)")
    parser.add_argument("--token", default=argparse.SUPPRESS,
                        help="bearer token (else $OAAS_TOKEN, then the config file)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the client sub-commands on the console script's sub-parsers."""
    common = argparse.ArgumentParser(add_help=False)
    add_connection_options(common)
    _add_submit(sub, common)
    p = sub.add_parser("status", parents=[common], help="list tasks, or show one task")
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--state", choices=[s.value for s in State])
    p.add_argument("--limit", type=int, default=100, help="newest tasks to list (default 100)")
    p.add_argument("--priority", action="store_true",
                   help="pending tasks with their priority factors, highest score first (like sprio)")
    p.add_argument("--json", action="store_true", help="print the server's JSON answer")
    p.set_defaults(func=guarded(cmd_status))
    p = sub.add_parser("logs", parents=[common], help="print a task's stdout")
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until the task ends")
    p.add_argument("--stderr", action="store_true", help="the stderr log instead of stdout")
    p.set_defaults(func=guarded(cmd_logs))
    p = sub.add_parser("cancel", parents=[common], help="cancel a task")
    p.add_argument("id", type=int)
    p.set_defaults(func=guarded(cmd_cancel))
    p = sub.add_parser("wait", parents=[common], help="wait for a task to end, showing its progress",
                       epilog=EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("id", type=int)
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 3)")
    p.set_defaults(func=guarded(cmd_wait))
    p = sub.add_parser("nodes", parents=[common], help="list nodes with free and total resources")
    p.add_argument("--json", action="store_true", help="print the server's JSON answer")
    p.set_defaults(func=guarded(cmd_nodes))
    p = sub.add_parser("drain", parents=[common], help="drain a node: running work ends, nothing new starts")
    p.add_argument("node")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=guarded(cmd_drain))
    p = sub.add_parser("resume", parents=[common], help="take a node back into service")
    p.add_argument("node")
    p.set_defaults(func=guarded(cmd_resume))


def _add_submit(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("submit", parents=[common], help="submit a task from a JSON file or a command",
                       usage="oaasd submit [options] FILE.json\n       oaasd submit [options] -- CMD [ARGS...]")
    p.add_argument("--workers", type=int, help="gang size")
    p.add_argument("--cpus", type=float, help="cores per worker")
    p.add_argument("--memory-mb", type=int, help="memory per worker in MB")
    p.add_argument("--gpus", type=float, help="GPUs per worker (a fraction below 1 is a share of one device)")
    p.add_argument("--workdir", help="directory the task runs in (default: the current directory)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set a variable in the task's environment (repeatable)")
    p.add_argument("--export", nargs="?", const="ALL", metavar="ALL|NONE|NAME,...",
                   help="pass this shell's environment (ALL, the default of a bare --export) or the named "
                        "variables to the task, like sbatch --export; OAAS_* are never passed")
    p.add_argument("--time-limit", type=float, help="time limit in seconds (ends the task TIMEOUT)")
    p.add_argument("--name", help="task name (default: the program's name)")
    p.add_argument("--no-result-required", action="store_true",
                   help="exit 0 without an OAAS_RESULT counts as COMPLETED")
    p.add_argument("--json", action="store_true", help="print the whole answer instead of the id")
    # REMAINDER keeps a leading "--", which tells a command from a file name.
    p.add_argument("words", nargs=argparse.REMAINDER, help="FILE.json, or -- CMD ARGS...")
    p.set_defaults(func=guarded(cmd_submit), submit_parser=p)


def guarded(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command, turning a failed request into one line on stderr and exit code 4."""
    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        try:
            return cmd(args)
        except ClientError as exc:  # its text may quote what the server or a user wrote
            print(f"oaasd: {printable(str(exc))}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # the reader left (`oaasd logs 7 | head`): end quietly, as SIGPIPE would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
    return run


def connect(args: argparse.Namespace) -> Client:
    """The client for the server named by the arguments, environment or config file."""
    return Client(*resolve(getattr(args, "url", None), getattr(args, "token", None)))


# ---- submit ---------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    """``oaasd submit``: POST a spec built from a file or a command; print the new id."""
    answer = connect(args).submit(build_spec(args))
    print(json.dumps(answer, indent=2) if args.json else answer["id"])
    return 0


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The task spec of ``submit``: the file or the command, then the options over it."""
    parser, words = args.submit_parser, args.words
    if words[:1] == ["--"]:
        if len(words) == 1:
            parser.error("give the command after --")
        spec: dict[str, Any] = {"name": Path(words[1]).name or "task", "command": words[1:]}
    elif words:
        path = words[0]
        parser.parse_args(words[1:], namespace=args)  # options may follow the file name
        if args.words:
            parser.error("give one FILE.json, or a command after --")
        spec = read_spec(path)
    else:
        parser.error("give FILE.json or -- CMD ARGS...")
    return apply_options(spec, args)


def read_spec(path: str) -> dict[str, Any]:
    """A task spec from a JSON file ('-' for stdin)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        spec = json.loads(text)
    except OSError as exc:
        raise ClientError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ClientError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise ClientError(f"{path}: expected a JSON object (a task spec)")
    return spec


def apply_options(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Set the fields given as options on ``spec`` (they win over the file's)."""
    top = {"workers": args.workers, "time_limit_s": args.time_limit, "name": args.name,
           "require_result": False if args.no_result_required else None, "workdir": args.workdir}
    spec.update({k: v for k, v in top.items() if v is not None})
    if "workdir" not in spec:  # like sbatch: the task runs where it was submitted from
        spec["workdir"] = os.getcwd()
    elif isinstance(spec["workdir"], str) and not spec["workdir"].startswith("/"):
        spec["workdir"] = os.path.abspath(spec["workdir"])  # relative to where oaasd submit runs
    env = exported(args.export) | dict(assignment(a) for a in args.env)
    if env:
        if not isinstance(spec.setdefault("env", {}), dict):
            raise ClientError("the spec's env must be a JSON object")
        spec["env"].update(env)
    gpus = args.gpus if args.gpus is None or not args.gpus.is_integer() else int(args.gpus)
    res = {k: v for k, v in (("cpus", args.cpus), ("memory_mb", args.memory_mb), ("gpus", gpus))
           if v is not None}
    if res:
        if not isinstance(spec.setdefault("resources", {}), dict):
            raise ClientError("the spec's resources must be a JSON object")
        spec["resources"].update(res)
    return spec


def assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of ``--env``."""
    name, eq, value = text.partition("=")
    if not eq or not ENV_NAME.match(name):
        raise ClientError(f"--env {text!r}: expected NAME=VALUE with a valid variable name")
    return name, value


def exported(what: str | None) -> dict[str, str]:
    """The variables ``--export`` passes: none, all of this shell's, or the named ones.

    OAAS_* (the daemon's own, among them the caller's token) are never passed;
    neither are names that are not valid variable names.
    """
    if what is None or what == "NONE":
        return {}
    names = list(os.environ) if what == "ALL" else [n for n in what.split(",") if n]
    return {n: os.environ[n] for n in names
            if n in os.environ and ENV_NAME.match(n) and not n.startswith("OAAS_")}


# ---- status, logs, cancel -------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    """``oaasd status``: a table of the newest tasks, or one task's details."""
    client = connect(args)
    if args.id is not None:
        view = client.task(args.id)
        print(json.dumps(view, indent=2) if args.json else "\n".join(task_lines(view, time.time())))
        return 0
    items = client.tasks(State.PENDING.value if args.priority else args.state, args.limit)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    now = time.time()
    if args.priority:
        print("\n".join(priority_table(items)))
        return 0
    rows = [[t["id"], t["name"], t["user"], t["state"], t.get("reason") or "", t["attempt_count"],
             age(now - t["submitted_at"])] for t in items]
    headers = ["ID", "NAME", "USER", "STATE", "REASON", "ATTEMPTS", "AGE"]
    print("\n".join(table(headers, rows, terminal_width(), shrink=(1, 4, 2))))
    return 0


PRIORITY_COLUMNS = ("age", "fair_share", "size", "priority", "qos", "score")


def priority_table(items: list[dict[str, Any]]) -> list[str]:
    """``status --priority``: pending tasks by score, each factor a column; a note when there are none."""
    scored = sorted((t for t in items if t.get("priority_factors")), key=lambda t: -t["priority_factors"]["score"])
    if not scored:
        return ["no pending task has priority factors (the policy is not 'priority', or nothing is pending)"]
    rows = [[t["id"], t["name"], t["user"], *(f"{t['priority_factors'].get(c, 0.0):.3f}" for c in PRIORITY_COLUMNS)]
            for t in scored]
    return table(["ID", "NAME", "USER", *(c.upper() for c in PRIORITY_COLUMNS)], rows, terminal_width(), shrink=(1,))


def task_lines(view: dict[str, Any], now: float) -> list[str]:
    """One task's details, one ``key  value`` line each."""
    spec = view.get("spec") or {}
    program = shlex.join(spec["command"]) if spec.get("command") else f"script: {(spec.get('script') or '').splitlines()[0]}"
    pairs = [("id", view["id"]), ("name", view["name"]), ("user", view["user"]),
             ("state", f"{view['state']} ({view.get('reason') or '-'})"), ("message", view.get("message")),
             ("rejected", view.get("nodes_rejected") and json.dumps(view["nodes_rejected"])), ("program", program),
             ("submitted", when(view.get("submitted_at"), now)), ("started", when(view.get("started_at"), now)),
             ("ended", when(view.get("ended_at"), now))]
    pairs += [("attempt", f"{a['attempt']} on {a['node']}: {a['state']}"
                          + (f" exit {a['exit_code']}" if a.get("exit_code") is not None else "") + usage_of(a))
              for a in view.get("attempts", [])]
    progress = progress_of(view.get("metrics", []))
    pairs += [("progress", progress and f"{progress[0]:.0%} {progress[1]}".rstrip()),
              ("result", view.get("result") and json.dumps(view["result"]))]
    return [f"{k:<10}  {printable(str(v))}" for k, v in pairs if v not in (None, "")]


def usage_of(attempt: dict[str, Any]) -> str:
    """An attempt's accounting as sacct shows it: MaxRSS, TotalCPU, Elapsed ('' when not measured)."""
    parts = [f"{name} {attempt[key]:g}{unit}" for key, name, unit in
             (("max_rss_mb", "max_rss", " MB"), ("cpu_s", "cpu", " s"), ("elapsed_s", "elapsed", " s"))
             if attempt.get(key) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def cmd_logs(args: argparse.Namespace) -> int:
    """``oaasd logs``: copy a task's log to stdout, following it with ``-f``."""
    out = sys.stdout.buffer
    for chunk in connect(args).logs(args.id, args.follow, "stderr" if args.stderr else "stdout"):
        out.write(chunk)
        out.flush()
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """``oaasd cancel``: cancel a task and print its state."""
    state = connect(args).cancel(args.id)["state"]
    print(f"task {args.id}: {printable(state)}" + ("" if state in FINAL else " (cancel requested)"))
    return 0


# ---- wait -----------------------------------------------------------
def cmd_wait(args: argparse.Namespace) -> int:
    """``oaasd wait``: poll a task until it ends, with a progress line; exit code by final state."""
    client, line = connect(args), ProgressLine(sys.stderr)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    delay = 0.1
    while True:
        view = client.task(args.id)
        line.show(progress_text(view, terminal_width()))
        if view["state"] in FINAL:
            break
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            line.end()
            print(f"oaasd: task {args.id} still {view['state']} after {args.timeout:g}s", file=sys.stderr)
            return EXIT_OTHER
        time.sleep(delay if left is None else min(delay, left))
        delay = min(delay * 1.5, 1.0)  # short at first, then once a second
    line.end()
    print(printable(f"task {view['id']} {view['state']} ({view.get('reason') or '-'})"))
    return EXIT_BY_STATE.get(view["state"], EXIT_OTHER)


def progress_of(metrics: Sequence[dict[str, Any]]) -> tuple[float, str] | None:
    """The latest attempt's progress as (fraction in [0, 1], "step/total" or ""), None when unknown."""
    latest = [m for m in metrics if m.get("attempt") == metrics[-1].get("attempt")] if metrics else []
    for m in reversed(latest):
        if _number(m.get("progress")):
            return min(max(float(m["progress"]), 0.0), 1.0), ""
        step, total = m.get("step"), m.get("total")
        if _number(step) and _number(total) and total > 0:
            return min(max(step / total, 0.0), 1.0), f"step {step:g}/{total:g}"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def progress_text(view: dict[str, Any], width: int) -> str:
    """``task 3 RUNNING [#####.....] 50% step 5/10``, the bar sized to ``width``."""
    head = f"task {view['id']} {printable(str(view['state']))}"
    progress = progress_of(view.get("metrics", []))
    if progress is None:
        return f"{head} ({printable(str(view.get('reason') or '-'))})"
    fraction, label = progress
    tail = f" {fraction:4.0%} {label}".rstrip()
    bar = max(min(40, width - len(head) - len(tail) - 4), 5)
    done = round(fraction * bar)
    return f"{head} [{'#' * done}{'.' * (bar - done)}]{tail}"


class ProgressLine:
    """One status line on a stream: rewritten in place on a terminal, a new line per change otherwise."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def show(self, text: str) -> None:
        """Show ``text`` unless it is already shown."""
        if text == self.last:
            return
        pad = " " * max(len(self.last) - len(text), 0)
        self.stream.write(f"\r{text}{pad}" if self.tty else f"{text}\n")
        self.stream.flush()
        self.last = text

    def end(self) -> None:
        """Leave the line as it is and move below it."""
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


# ---- nodes ----------------------------------------------------------
def cmd_nodes(args: argparse.Namespace) -> int:
    """``oaasd nodes``: a table of nodes with free/total resources and running task counts."""
    client = connect(args)
    views = client.nodes()
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    rows = [[v["name"], v["state"], _free_total(v, "cpus"), _free_total(v, "memory_mb"),
             _free_total(v, "gpus"), v.get("running_count", len(v.get("running") or [])), v.get("reason") or ""] for v in views]
    headers = ["NAME", "STATE", "CPUS", "MEMORY_MB", "GPUS", "RUNNING", "REASON"]
    print("\n".join(table(headers, rows, terminal_width(), shrink=(6, 0))))
    return 0


def _free_total(view: dict[str, Any], key: str) -> str:
    return f"{view['free'][key]:g}/{view['capacity'][key]:g}"


def cmd_drain(args: argparse.Namespace) -> int:
    """``oaasd drain``: stop placing work on a node; what runs there finishes."""
    view = connect(args).set_node(args.node, "DRAIN", args.reason)
    print(printable(f"node {view['name']}: {view['state']} ({view.get('reason') or args.reason})"))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``oaasd resume``: clear a node's DRAIN or DOWN."""
    view = connect(args).set_node(args.node, "RESUME")
    print(printable(f"node {view['name']}: {view['state']}"))
    return 0


# ---- rendering ------------------------------------------------------
def terminal_width() -> int:
    """Columns of the terminal ($COLUMNS, else the terminal's, else 80)."""
    return shutil.get_terminal_size((80, 24)).columns


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int, shrink: Sequence[int] = ()) -> list[str]:
    """Aligned lines of a table no wider than ``width``, truncating the ``shrink`` columns in that order."""
    cells = [[printable(str(c)) for c in row] for row in (headers, *rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    for i in shrink:
        cut = max(min(excess, widths[i] - max(len(headers[i]), MIN_SHRUNK)), 0)
        widths[i] -= cut
        excess -= cut
    return ["  ".join(_fit(c, w) for c, w in zip(row, widths)).rstrip() for row in cells]


# Characters a terminal acts on instead of showing: C0 and C1 controls (ESC, CR, LF, BS...), DEL,
# the line/paragraph separators and the bidirectional overrides (text that reads backwards).
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with each control character escaped (``\\x1b``, ``\\n``): it cannot move the cursor or fake a line."""
    return UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    named = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(code)
    return named or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _fit(text: str, width: int) -> str:
    return (text if len(text) <= width else text[:width - 1] + ELLIPSIS).ljust(width)


def age(seconds: float) -> str:
    """A short age: 42s, 5m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def when(at: float | None, now: float) -> str | None:
    """An epoch time as local ``YYYY-mm-dd HH:MM:SS (age ago)``."""
    if at is None:
        return None
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))} ({age(now - at)} ago)"
