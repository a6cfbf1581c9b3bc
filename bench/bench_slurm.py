"""Tasks through a real one-node Slurm against the local launcher, in one run (issue 16).

A private Slurm (tests/realslurm.py: munged, slurmctld, slurmd on loopback,
the machine's CPUs) and two daemons: one whose node stands for the Slurm
partition, one with a local node of the same size. The same batch of short
one-CPU tasks goes through each: tasks/s from the first submission to the
last COMPLETED, and per task submit -> program start (the task prints its
own start time). Then oaasd's own part per job, measured beside the daemon:
one ``sbatch --parsable`` call, and one ``squeue`` call (the daemon's one
poll for all its jobs) with the batch's jobs known to Slurm.

    .venv/bin/python bench/bench_slurm.py [--tasks 40] [--poll 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from conftest import Daemon  # noqa: E402
from realslurm import slurm_toml, start_slurm, stop_slurm  # noqa: E402

from oaasd.launchers.slurmcmd import SQUEUE_FORMAT  # noqa: E402

SPEC = {"command": ["/bin/sh", "-c", 'echo "OAAS_RESULT {\\"t\\": $(date +%s.%N)}"'], "resources": {"cpus": 1}}


def run_batch(d: Daemon, n: int) -> tuple[float, list[float], list[float], list[float]]:
    """Submit n tasks at once: seconds until all COMPLETED; per task submit -> program start,
    launch (attempt start, the sbatch for Slurm) -> program start, program start -> end seen by oaasd."""
    t0 = time.time()
    ids = [d.submit(SPEC) for _ in range(n)]
    views = [d.wait(i, timeout=600) for i in ids]
    wall = time.time() - t0
    bad = [v for v in views if v["state"] != "COMPLETED"]
    assert not bad, bad[0]
    launch = [v["result"]["t"] - v["attempts"][0]["started_at"] for v in views]
    seen = [v["attempts"][0]["ended_at"] - v["result"]["t"] for v in views]
    return wall, [v["result"]["t"] - v["submitted_at"] for v in views], launch, seen


def slurm_costs(s, n: int) -> tuple[float, float]:
    """Median seconds of one sbatch --parsable and of one squeue over >= n jobs."""
    sb = []
    for _ in range(n):
        t = time.perf_counter()
        s.run("sbatch", "--parsable", "--hold", "-p", s.partition, "-o", "/dev/null", "--wrap", "true", check=True)
        sb.append(time.perf_counter() - t)
    sq = []
    for _ in range(20):
        t = time.perf_counter()
        s.run("squeue", "--me", "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}", check=True)
        sq.append(time.perf_counter() - t)
    s.clear()
    return statistics.median(sb), statistics.median(sq)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--poll", type=float, default=0.5, help="[slurm] poll_interval_s")
    args = ap.parse_args()
    s = start_slurm()
    try:
        cpus = int(s.run("sinfo", "-h", "-o", "%c").stdout.strip())
        tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
        out = {}
        for kind, body in (("slurm", slurm_toml(s, poll_interval_s=args.poll)),
                           ("local", f'[[nodes]]\nname = "local"\ncpus = {cpus}\nmemory_mb = 4000\n')):
            d = Daemon(tmp / kind, body).start()
            try:
                run_batch(d, 2)  # warm: imports, first sbatch
                wall, starts, launch, seen = run_batch(d, args.tasks)
            finally:
                d.stop()
            out[kind] = (args.tasks / wall, statistics.median(starts), max(starts), statistics.median(launch),
                         statistics.median(seen))
        sbatch_s, squeue_s = slurm_costs(s, args.tasks)
    finally:
        stop_slurm(s)
    print(f"{args.tasks} one-CPU tasks on {cpus} CPUs, [slurm] poll_interval_s = {args.poll}")
    for kind, (rate, med, worst, launch, seen) in out.items():
        print(f"  {kind:5s}: {rate:6.2f} tasks/s   submit -> program start median {med * 1000:7.1f} ms, "
              f"max {worst * 1000:7.1f} ms; launch -> program start {launch * 1000:7.1f} ms, "
              f"program start -> end recorded {seen * 1000:7.1f} ms (medians)")
    print(f"  slurm / local throughput: {out['slurm'][0] / out['local'][0]:.2f}x")
    print(f"  oaasd's part per job: sbatch --parsable {sbatch_s * 1000:.1f} ms (median); one squeue for all "
          f"jobs {squeue_s * 1000:.1f} ms per poll interval, {squeue_s / args.poll * 100:.1f}% of one core")


if __name__ == "__main__":
    main()
