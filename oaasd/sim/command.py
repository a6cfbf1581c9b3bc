"""``oaasd simulate``: compare policies on a trace before switching one on.

    oaasd simulate --trace FILE --nodes FILE --policy fifo,backfill [--fit best] [--json]
                   [--skip-bad]
    oaasd simulate --generate N --out FILE [--seed S] [--users U] [--rate R]

Exit codes: 0, 2 for a bad trace, nodes file or option (the message names
the row or key).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# numpy and the placement core load only when the sub-command runs: the
# client commands registered next to it start without them.

POLICY_NAMES = ("fifo", "backfill", "sjf", "fair", "priority")  # as core.policies.POLICIES (a test checks)
FITS = ("first", "best", "worst", "least_allocated", "most_allocated", "balanced")


def add_command(sub) -> None:
    """Register ``simulate`` on the console script's sub-parsers."""
    p = sub.add_parser("simulate", help="replay a trace under one or more policies (virtual time)")
    p.add_argument("--trace", help="CSV or JSONL: submit_s, duration_s, workers, cpus, memory_mb, gpus, user, "
                                   "time_limit_s, estimated_runtime_s, preemptible")
    p.add_argument("--nodes", help="TOML with [[nodes]] as in oaasd.toml (count = N for N alike)")
    p.add_argument("--policy", default="fifo", help=f"one or more of {', '.join(POLICY_NAMES)}, comma-separated")
    p.add_argument("--fit", default="best", choices=FITS)
    p.add_argument("--max-pass", type=int, default=1000, help="candidates per pass, as [scheduler] max_pass")
    p.add_argument("--default-time-limit-s", type=float, default=None)
    p.add_argument("--skip-bad", action="store_true", help="skip bad rows (counted) instead of stopping")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--generate", type=int, metavar="N", help="write a synthetic trace of N tasks to --out")
    p.add_argument("--out", help="where --generate writes (.csv or .jsonl)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=5)
    p.add_argument("--rate", type=float, default=0.1, help="mean arrivals per second of --generate")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the sub-command; 2 with a one-line message for bad input."""
    from oaasd.sim.trace import TraceError
    try:
        return _run(args)
    except TraceError as exc:
        print(f"oaasd simulate: {exc.message}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from oaasd.core.policies import policy_named
    from oaasd.sim.engine import simulate
    from oaasd.sim.report import markdown, metrics, table
    from oaasd.sim.synth import generate
    from oaasd.sim.trace import TraceError, read_nodes, read_trace, write_trace
    if args.generate is not None:
        if not args.out or args.generate < 1:
            raise TraceError("--generate N needs N >= 1 and --out FILE")
        write_trace(args.out, generate(args.generate, seed=args.seed, users=args.users, rate_per_s=args.rate))
        print(f"wrote {args.generate} tasks to {args.out}")
        return 0
    if not args.trace or not args.nodes:
        raise TraceError("give --trace FILE and --nodes FILE (or --generate N --out FILE)")
    try:
        policies = [policy_named(name.strip()) for name in args.policy.split(",") if name.strip()]
    except ValueError as exc:
        raise TraceError(f"--policy: {exc}") from None
    if args.max_pass < 1:
        raise TraceError("--max-pass must be >= 1")
    cluster = read_nodes(args.nodes)
    rows, skipped = read_trace(args.trace, cluster, skip_bad=args.skip_bad)
    results = []
    for policy in policies:
        t0 = time.process_time()
        run = simulate(rows, cluster, policy, fit=args.fit, max_pass=args.max_pass,
                       default_time_limit_s=args.default_time_limit_s)
        m = metrics(run)
        m["cpu_s"] = round(time.process_time() - t0, 3)
        m["skipped_rows"] = skipped
        results.append(m)
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    elif args.markdown:
        print(markdown(results))
    else:
        skip = f" ({skipped} bad rows skipped)" if skipped else ""
        print(f"{len(rows)} tasks on {len(cluster.names)} nodes{skip}")
        print(table(results))
    return 0
