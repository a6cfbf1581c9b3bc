"""Event-loop latency and daemon memory while a task writes a big log (issue 12, High 1).

1. p50/p99/max of ``GET /healthz`` with no task running, then while one task
   writes 2 GB of two-byte lines (``yes | head -c 2G``), in the same run;
   the daemon's RSS before and at its peak; how long the 2 GB task took.
2. One task printing 1,000,000 OAAS_METRIC lines: the same latencies, peak
   RSS, database growth, metrics stored and dropped.
3. Normal tasks (three OAAS_METRIC lines and a result each, time_limit_s 60): submit -> COMPLETED
   latency and throughput, alternating rounds between this checkout and a
   baseline checkout (``--baseline DIR``, e.g. a ``git worktree`` of the base
   commit) so both see the same machine load.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_logs.py [--size 2G] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import Daemon  # noqa: E402  (the same harness the tests use)

LOCAL = '[[nodes]]\nname = "local"\ncpus = 2\nmemory_mb = 2000\n'
NORMAL = {"script": "for i in 1 2 3; do echo \"OAAS_METRIC {\\\"step\\\": $i}\"; done\n"
                    "echo 'OAAS_RESULT {\"ok\": true}'\n", "resources": {"cpus": 0.1}, "time_limit_s": 60}


class Sampler(threading.Thread):
    """GET /healthz every 10 ms on a fresh connection; the daemon's peak RSS every 20 ms."""

    def __init__(self, port: int, pid: int):
        super().__init__(daemon=True)
        self.port, self.proc = port, psutil.Process(pid)
        self.latencies: list[float] = []
        self.peak_rss = self.proc.memory_info().rss
        self.halt = threading.Event()

    def run(self) -> None:
        rss = threading.Thread(target=self._rss, daemon=True)  # on its own: a stalled loop must not hide the peak
        rss.start()
        while not self.halt.is_set():
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            self.latencies.append(time.perf_counter() - t0)
            time.sleep(0.01)
        rss.join()

    def _rss(self) -> None:
        while not self.halt.is_set():
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> "Sampler":
        self.halt.set()
        self.join()
        return self


def quantiles_ms(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms, max {max(xs) * 1000:.1f} ms (n={len(xs)})"


def idle_and_writer(d: Daemon, size: str, idle_s: float) -> None:
    pid = d.proc.pid
    sampler = Sampler(d.port, pid)
    sampler.start()
    time.sleep(idle_s)
    idle = sampler.stop()
    rss0 = idle.peak_rss
    print(f"no writer:      {quantiles_ms(idle.latencies)}; RSS {rss0 / 2**20:.0f} MB")
    sampler = Sampler(d.port, pid)
    sampler.start()
    t0 = time.perf_counter()
    tid = d.submit({"script": f"yes | head -c {size}\necho 'OAAS_RESULT {{\"ok\": true}}'\n",
                    "resources": {"cpus": 1}})
    view = d.wait(tid, timeout=3600)
    took = time.perf_counter() - t0
    busy = sampler.stop()
    log = d.state_dir / "attempts" / str(tid) / "1" / "stdout.log"
    gb = log.stat().st_size / 1e9
    print(f"{size} writer:   {quantiles_ms(busy.latencies)}; peak RSS {busy.peak_rss / 2**20:.0f} MB "
          f"(+{(busy.peak_rss - rss0) / 2**20:.0f} MB); task {view['state']} in {took:.1f} s ({gb / took:.2f} GB/s)")
    log.unlink()


def metric_flood(d: Daemon, lines: int) -> None:
    """One task printing ``lines`` OAAS_METRIC lines: latency, peak RSS, database growth, what was kept."""
    db = d.state_dir / "oaasd.sqlite3"
    size0 = db.stat().st_size + _size(db.with_name(db.name + "-wal"))
    sampler = Sampler(d.port, d.proc.pid)
    rss0 = sampler.peak_rss
    sampler.start()
    t0 = time.perf_counter()
    tid = d.submit({"script": f"seq 1 {lines} | sed 's/.*/OAAS_METRIC {{\"step\": &, \"loss\": 0.5}}/'\n"
                              "echo 'OAAS_RESULT {\"ok\": true}'\n", "resources": {"cpus": 1}})
    view = d.wait(tid, timeout=3600)
    took = time.perf_counter() - t0
    busy = sampler.stop()
    grown = db.stat().st_size + _size(db.with_name(db.name + "-wal")) - size0
    a = view["attempts"][0]
    print(f"{lines} metric lines: {quantiles_ms(busy.latencies)}; peak RSS +{(busy.peak_rss - rss0) / 2**20:.0f} MB; "
          f"DB +{grown / 2**20:.1f} MB; stored {a['metrics_stored']}, dropped {a['metrics_dropped']}; "
          f"task {view['state']} in {took:.1f} s")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def normal_round(d: Daemon, n: int) -> tuple[list[float], float]:
    """Submit ``n`` normal tasks at once; per-task submit->COMPLETED seconds and the wall time."""
    t0 = time.time()
    ids = [d.submit(NORMAL) for _ in range(n)]
    lat = []
    for tid in ids:
        view = d.wait(tid, timeout=300)
        assert view["state"] == "COMPLETED" and len(view["metrics"]) == 3, view
        lat.append(view["ended_at"] - view["submitted_at"])
    return lat, time.time() - t0


def normal_tasks(rounds: int, n: int, baseline: str | None, tmp: Path) -> None:
    variants = {"this": str(REPO)} | ({"baseline": baseline} if baseline else {})
    daemons = {}
    for name, path in variants.items():
        d = Daemon(tmp / f"normal-{name}", LOCAL)
        d.start(env={"PYTHONPATH": path})
        daemons[name] = d
    results = {name: ([], [], []) for name in variants}
    try:
        for r in range(rounds):
            order = list(daemons.items())
            for name, d in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
                cpu0 = sum(psutil.Process(d.proc.pid).cpu_times()[:2])
                lat, wall = normal_round(d, n)
                cpu = sum(psutil.Process(d.proc.pid).cpu_times()[:2]) - cpu0
                results[name][0].extend(lat)
                results[name][1].append(n / wall)
                results[name][2].append(cpu / n)
    finally:
        for d in daemons.values():
            d.stop()
    for name, (lat, rates, cpus) in results.items():
        p90 = statistics.quantiles(lat, n=10, method="inclusive")[8]
        print(f"normal tasks, {name:8s}: submit->COMPLETED median {statistics.median(lat) * 1000:.0f} ms, "
              f"p90 {p90 * 1000:.0f} ms; {statistics.median(rates):.1f} tasks/s; daemon CPU "
              f"{statistics.median(cpus) * 1000:.1f} ms/task (medians of {rounds} rounds of {n})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2G", help="bytes the writer task prints (head -c syntax)")
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--baseline", help="a checkout to compare normal tasks against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--no-writer", action="store_true", help="only the normal-task comparison")
    ap.add_argument("--writer-checkout", default=str(REPO), help="the oaasd the writer phase runs (default: this)")
    ap.add_argument("--no-normal", action="store_true", help="only the writer phase")
    ap.add_argument("--metric-lines", type=int, default=1_000_000, help="lines of the metric-flood task")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        if not args.no_writer:
            d = Daemon(Path(tmp) / "writer", LOCAL)
            d.start(env={"PYTHONPATH": args.writer_checkout})
            try:
                idle_and_writer(d, args.size, args.idle_s)
                metric_flood(d, args.metric_lines)
            finally:
                d.stop()
        if not args.no_normal:
            normal_tasks(args.rounds, args.tasks, args.baseline, Path(tmp))


if __name__ == "__main__":
    main()
