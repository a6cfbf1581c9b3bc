"""``oaasd tune``: create, follow and cancel tunings from the command line.

``create FILE`` (either dialect: native or OpenBox's), ``status ID``,
``best ID [--json]``, ``trials ID [--csv]``, ``cancel ID`` and ``wait ID``.
The same URL/token rules and exit codes as the task commands: 4 for a
failed request; ``wait`` exits 0/1/2 for a tuning COMPLETED/FAILED/CANCELLED
and 3 when ``--timeout`` ran out first; ``best`` exits 3 while there is no
best trial yet.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from oaasd.client.commands import (
    EXIT_ERROR,
    EXIT_OTHER,
    ProgressLine,
    guarded,
    add_connection_options,
    connect,
    printable,
    table,
    terminal_width,
)
from oaasd.client.http import ClientError

EXIT_BY_TUNING = {"COMPLETED": 0, "FAILED": 1, "CANCELLED": 2}
TUNING_FINAL = set(EXIT_BY_TUNING)
SPARKS = "▁▂▃▄▅▆▇█"
EXIT_TABLE = """exit codes of `oaasd tune wait`:
  0  the tuning COMPLETED
  1  the tuning FAILED
  2  the tuning was CANCELLED
  3  --timeout ran out first (and `tune best`: no best trial yet)
  4  the request failed (error answer, server unreachable)"""


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``oaasd tune ...`` on the console script's sub-parsers."""
    common = argparse.ArgumentParser(add_help=False)
    add_connection_options(common)
    tune = sub.add_parser("tune", parents=[common], help="create, follow and cancel tunings")
    verbs = tune.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("create", parents=[common], help="start a tuning from a JSON file (native or OpenBox's)")
    p.add_argument("file", help="the tuning description ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="print the whole answer instead of the id")
    p.set_defaults(func=guarded(cmd_create))
    p = verbs.add_parser("status", parents=[common], help="progress, best so far and the trials of a tuning")
    p.add_argument("id", type=int)
    p.set_defaults(func=guarded(cmd_status))
    p = verbs.add_parser("best", parents=[common], help="the best trial of a tuning")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="print the best trial as JSON")
    p.set_defaults(func=guarded(cmd_best))
    p = verbs.add_parser("trials", parents=[common], help="every trial of a tuning")
    p.add_argument("id", type=int)
    p.add_argument("--csv", action="store_true", help="CSV: number, id, state, metrics, parameters")
    p.set_defaults(func=guarded(cmd_trials))
    p = verbs.add_parser("cancel", parents=[common], help="cancel a tuning and its running trials")
    p.add_argument("id", type=int)
    p.set_defaults(func=guarded(cmd_cancel))
    p = verbs.add_parser("wait", parents=[common], help="wait for a tuning to end, with a progress bar",
                         epilog=EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("id", type=int)
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 3)")
    p.set_defaults(func=guarded(cmd_wait))


def get(args: argparse.Namespace) -> dict[str, Any]:
    return connect(args).request("GET", f"/v1/tunings/{args.id}")


# ---- verbs ------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    """``tune create FILE``: POST the description; print the new tuning's id."""
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        body = json.loads(text)
    except OSError as exc:
        raise ClientError(f"{args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise ClientError(f"{args.file}: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ClientError(f"{args.file}: expected a JSON object (a tuning description)")
    view = connect(args).request("POST", "/v1/tunings", body)
    print(json.dumps(view, indent=2) if args.json else view["id"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``tune status ID``: a head line, the best so far with a sparkline, then the trials table."""
    view, width = get(args), terminal_width()
    for line in status_lines(view, width):
        print(line)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """``tune best ID``: the best trial (feasible first); exit 3 while there is none."""
    best = get(args)["best"]
    if best is None:
        print(f"oaasd: tuning {args.id} has no completed trial yet", file=sys.stderr)
        return EXIT_OTHER
    if args.json:
        print(json.dumps(best, indent=2))
        return 0
    feasible = "" if best["feasible"] else " (no feasible trial yet: best infeasible)"
    print(printable(f"trial #{best['number']} (id {best['trial_id']}): {best['metric']} = {best['value']}{feasible}"))
    print(printable(json.dumps(best["config"], sort_keys=True)))
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    """``tune trials ID``: a table of every trial, or CSV with one column per metric and parameter."""
    view = get(args)
    headers, rows = trial_rows(view)
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(headers)
        out.writerows(rows)
        return 0
    shown = [[("-" if c is None or c == "" else _short(c)) for c in row] for row in rows]
    for line in table(headers, shown, terminal_width(), shrink=range(len(headers) - 1, 2, -1)):
        print(line)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """``tune cancel ID``: cancel the tuning; print its state."""
    view = connect(args).request("DELETE", f"/v1/tunings/{args.id}")
    print(printable(f"tuning {args.id}: {view['state']} ({view.get('reason') or '-'})"))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """``tune wait ID``: poll until the tuning ends, with a progress bar; exit code by its final state."""
    client, line = connect(args), ProgressLine(sys.stderr)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    delay = 0.1
    while True:
        view = client.request("GET", f"/v1/tunings/{args.id}")
        line.show(progress_text(view, terminal_width()))
        if view["state"] in TUNING_FINAL:
            break
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            line.end()
            print(f"oaasd: tuning {args.id} still {view['state']} after {args.timeout:g}s", file=sys.stderr)
            return EXIT_OTHER
        time.sleep(delay if left is None else min(delay, left))
        delay = min(delay * 1.5, 1.0)
    line.end()
    print(printable(f"tuning {view['id']} {view['state']} ({view.get('reason') or '-'})"))
    return EXIT_BY_TUNING.get(view["state"], EXIT_ERROR)


# ---- rendering ----------------------------------------------------------
def done_count(view: dict[str, Any]) -> int:
    """Trials that ended (any final state), the baseline left out."""
    return sum(1 for t in view["trials"] if t["state"] not in ("PENDING", "RUNNING") and not t["baseline"])


def progress_text(view: dict[str, Any], width: int) -> str:
    """``tuning 3 RUNNING [#####.....] 5/10 trials``, the bar sized to ``width``."""
    head = f"tuning {view['id']} {printable(str(view['state']))}"
    done, total = done_count(view), max(view["number_of_trials"], 1)
    tail = f" {done}/{total} trials"
    bar = max(min(40, width - len(head) - len(tail) - 4), 5)
    filled = round(min(done / total, 1.0) * bar)
    return f"{head} [{'#' * filled}{'.' * (bar - filled)}]{tail}"


def feasible(view: dict[str, Any], metrics: dict[str, Any]) -> bool:
    """Whether a trial's metrics meet every constraint (at the tuning's absolute thresholds)."""
    constraints = view["description"].get("constraints") or []
    if not constraints:
        return True
    thresholds = view.get("thresholds")
    if thresholds is None:
        return False
    for c, bound in zip(constraints, thresholds):
        v = metrics.get(c["metric"])
        if not isinstance(v, (int, float)) or (v < bound if c["op"] == ">=" else v > bound):
            return False
    return True


def best_so_far(view: dict[str, Any]) -> list[float]:
    """The best value of the first objective after each trial, in trial-number order (feasible trials only)."""
    o = view["objectives"][0]
    sign = 1.0 if o["sense"] == "minimize" else -1.0
    out: list[float] = []
    best: float | None = None
    for t in sorted(view["trials"], key=lambda t: (t["number"] is None, t["number"], t["trial_id"])):
        if t["baseline"]:
            continue
        v = (t["metrics"] or {}).get(o["metric"])
        if t["state"] == "COMPLETED" and isinstance(v, (int, float)) and feasible(view, t["metrics"]):
            best = v if best is None or sign * v < sign * best else best
        if best is not None:
            out.append(float(best))
    return out


def sparkline(values: list[float], width: int) -> str:
    """One block character per value (the last ``width``), low to high."""
    values = values[-width:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo
    return "".join(SPARKS[0 if span == 0 else round((v - lo) / span * (len(SPARKS) - 1))] for v in values)


def status_lines(view: dict[str, Any], width: int) -> list[str]:
    """The lines of ``tune status``."""
    name = f" {view['name']}" if view.get("name") else ""
    lines = [printable(f"tuning {view['id']}{name}: {view['state']} ({view.get('reason') or '-'}), "
                       f"{done_count(view)}/{view['number_of_trials']} trials, driven by {view['driven_by']}")]
    best = view.get("best")
    if best is None:
        lines.append("best: -")
    else:
        mark = "" if best["feasible"] else " (infeasible)"
        lines.append(printable(f"best: {best['metric']} = {_short(best['value'])}{mark} at trial #{best['number']} "
                               f"(id {best['trial_id']}) {json.dumps(best['config'], sort_keys=True)}")[:width])
        curve = best_so_far(view)
        if curve:
            lines.append(f"best so far: {sparkline(curve, max(width - 30, 5))}  {_short(curve[0])} -> {_short(curve[-1])}")
    headers, rows = trial_rows(view)
    shown = [[("-" if c is None or c == "" else _short(c)) for c in row] for row in rows]
    lines += [""] + table(headers, shown, width, shrink=range(len(headers) - 1, 2, -1))
    return lines


def trial_rows(view: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows: number, id, state, reason, each objective/constraint metric, each parameter."""
    d = view["description"]
    metrics = [o["metric"] for o in d["objectives"]] + [c["metric"] for c in d.get("constraints") or []]
    params = [p["name"] for p in d["parameters"]]
    headers = ["number", "trial_id", "state", "reason", *metrics, *params]
    rows = []
    for t in sorted(view["trials"], key=lambda t: (t["number"] is None, t["number"], t["trial_id"])):
        m, c = t["metrics"] or {}, t["config"]
        rows.append([t["number"], t["trial_id"], t["state"], t["reason"] or "",
                     *(m.get(k, "") for k in metrics), *(c.get(k, "") for k in params)])
    return headers, rows


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
