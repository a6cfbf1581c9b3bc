"""Intake benchmarks of issue 2, against the real daemon on loopback.

1. Durable submissions/s with 32 concurrent keep-alive clients (tasks stay
   PENDING behind a blocker so only intake is measured), beside the raw
   SQLite limit on the same disk: batched inserts of 100 rows per
   transaction with the same synchronous setting, measured in the same run.
2. Submit -> process start latency on an idle node (p50, p99).
3. Daemon RSS with 100,000 pending tasks, live and after a restart.
4. Submissions/s with 0 and with 500 SSE subscribers (``GET /v1/events`` of
   a non-admin user, read by a separate process), same run, interleaved.

    .venv/bin/python bench/bench_intake.py [--quick] [--sse-only]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import Daemon  # noqa: E402  (the same harness the tests use)

BLOCKED = {"command": ["true"], "require_result": False, "resources": {"cpus": 1}}


TOKEN = "bench-token-0123456789abcdef"
USERS = f'[[users]]\nname = "bench"\nrole = "user"\ntoken_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'


async def submit_many(port: int, total: int, clients: int, token: str | None = None) -> tuple[float, int]:
    """Submit ``total`` tasks over ``clients`` keep-alive connections; return (seconds, 201s)."""
    url = f"http://127.0.0.1:{port}/v1/tasks"
    body = json.dumps(BLOCKED).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    ok = 0

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal ok
        for _ in range(n):
            async with session.post(url, data=body, headers=headers) as r:
                text = await r.read()
                ok += r.status == 201
                if r.status != 201:
                    print("unexpected", r.status, text[:300])

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, total // clients) for _ in range(clients)))
        return time.perf_counter() - started, ok


def raw_sqlite_rate(path: Path, rows: int, batch: int = 100) -> float:
    """Rows/s of batched inserts into a tasks-like table, WAL + synchronous=FULL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, user TEXT, state TEXT, reason TEXT,"
               " state_at REAL, priority INTEGER, submitted_at REAL, spec TEXT)")
    db.execute("CREATE INDEX t_q ON t(state, priority DESC, id)")
    spec = json.dumps(BLOCKED)
    started = time.perf_counter()
    for start in range(0, rows, batch):
        db.execute("BEGIN")
        db.executemany("INSERT INTO t (name, user, state, reason, state_at, priority, submitted_at, spec)"
                       " VALUES ('t','u','PENDING','Submitted',?,0,?,?)",
                       [(time.time(), time.time(), spec)] * batch)
        db.execute("COMMIT")
    rate = rows / (time.perf_counter() - started)
    db.close()
    return rate


def blocked_daemon(tmp: Path, loop: str = "uvloop", users: str = "") -> Daemon:
    d = Daemon(tmp, '[[nodes]]\nname = "one"\ncpus = 1\nmemory_mb = 1000\n' + users)
    d.server_extra = f'event_loop = "{loop}"\n'
    d.start()
    headers = {"Authorization": f"Bearer {TOKEN}"} if users else None
    status, body = d.request("POST", "/v1/tasks", {"command": ["sleep", "3600"], "resources": {"cpus": 1}},
                             headers=headers)
    assert status == 201, body
    return d


CPU_MS: list[float] = []  # the daemon's own CPU (user+system) per submission, uvloop runs without auth


def submissions_per_s(tmp: Path, total: int, loop: str, auth: bool = False) -> float:
    d = blocked_daemon(tmp, loop, USERS if auth else "")
    proc = psutil.Process(d.proc.pid)
    try:
        before = proc.cpu_times()
        secs, ok = asyncio.run(submit_many(d.port, total, 32, TOKEN if auth else None))
        after = proc.cpu_times()
    finally:
        d.stop()
    assert ok == total, f"only {ok} of {total} answered 201"
    if loop == "uvloop" and not auth:
        CPU_MS.append((after.user + after.system - before.user - before.system) * 1000 / total)
    return total / secs


def bench_throughput(tmp: Path, total: int, runs: int) -> None:
    total -= total % 32
    rates, plain, authed, raws = [], [], [], []
    for i in range(runs):  # interleaved, so every variant sees the same noise
        rates.append(submissions_per_s(tmp / f"tp{i}", total, "uvloop"))
        plain.append(submissions_per_s(tmp / f"tpa{i}", total, "asyncio"))
        authed.append(submissions_per_s(tmp / f"tpt{i}", total, "uvloop", auth=True))
        raws.append(raw_sqlite_rate(tmp / f"raw{i}.sqlite3", total))
    rate, raw = statistics.median(rates), statistics.median(raws)
    print(f"durable submissions/s, 32 keep-alive clients, {total} per run, {runs} runs: "
          f"median {rate:,.0f}/s on uvloop (runs: {', '.join(f'{r:,.0f}' for r in rates)}), "
          f"{statistics.median(plain):,.0f}/s on asyncio's loop (ratio {rate / statistics.median(plain):.2f})")
    print(f"with bearer tokens ([[users]], one user): median {statistics.median(authed):,.0f}/s "
          f"(ratio to no auth {statistics.median(authed) / rate:.2f})")
    print(f"raw SQLite batched inserts (100/txn, WAL, synchronous=FULL), same disk: median {raw:,.0f} rows/s")
    print(f"ratio daemon / raw SQLite: {rate / raw:.3f}")
    # CPU time is what other processes on a shared machine disturb least: the figure to compare across trees
    print(f"daemon CPU per durable submission (user+system, uvloop): median {statistics.median(CPU_MS):.3f} ms")


def bench_latency(tmp: Path, n: int) -> None:
    d = Daemon(tmp / "lat")
    d.start()
    out = tmp / "lat" / "t.out"
    lat = []
    try:
        for _ in range(n):
            t0 = time.time()
            tid = d.submit({"command": ["/bin/date", "+%s.%N"], "require_result": False})
            d.wait(tid)
            _, text = d.request("GET", f"/v1/tasks/{tid}/logs")
            lat.append((float(text.strip()) - t0) * 1000)
    finally:
        d.stop()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    print(f"submit -> process start on an idle node, {n} tasks: p50 {statistics.median(lat):.1f} ms, "
          f"p99 {p99:.1f} ms")


def bench_rss(tmp: Path, pending: int) -> None:
    d = blocked_daemon(tmp / "rss")
    try:
        secs, ok = asyncio.run(submit_many(d.port, pending, 32))
        live = psutil.Process(d.proc.pid).memory_info().rss / 2**20
        d.stop(signal.SIGKILL)
        started = time.perf_counter()
        d.start(timeout=300)
        recover = time.perf_counter() - started
        after = psutil.Process(d.proc.pid).memory_info().rss / 2**20
        status, health = d.request("GET", "/healthz")
    finally:
        d.stop(signal.SIGKILL)
    print(f"RSS with {ok:,} pending tasks: {live:.0f} MB live; after kill -9 and restart "
          f"({recover:.1f} s to healthy, {health['pending']:,} queued): {after:.0f} MB")


SUBSCRIBERS = """
import asyncio, sys
async def one(port, token, ready, done, expected):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /v1/events HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer {token}\\r\\n\\r\\n".encode())
    head = await r.readuntil(b"\\r\\n\\r\\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    ready.append(1)
    seen, tail = 0, b""
    while chunk := await r.read(65536):
        seen += (tail + chunk).count(b"event: state")
        tail = chunk[-16:].rpartition(b"event: state")[2]  # never count one twice
        if seen >= expected:
            done.append(1)
            break
    while await r.read(65536):
        pass
async def main(port, token, n, expected):
    ready, done = [], []
    tasks = [asyncio.create_task(one(port, token, ready, done, expected)) for _ in range(n)]
    while len(ready) < n:
        await asyncio.sleep(0.05)
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
    print("ready", flush=True)
    while len(done) < n:
        await asyncio.sleep(0.01)
    print("delivered", flush=True)
    await asyncio.gather(*tasks)
asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""
SSE_LIMITS = ("max_subscribers = 2000\nmax_subscribers_per_user = 2000\nmax_connections = 4000\n"
              "max_connections_per_peer = 4000\n")


def submissions_with_subscribers(tmp: Path, total: int, subscribers: int) -> tuple[float, float]:
    """(submissions/s, seconds until every stream had every event) while ``subscribers`` follow /v1/events.

    32 clients of one non-admin user submit; the streams are that user's, so each sees every event.
    """
    d = Daemon(tmp, '[[nodes]]\nname = "one"\ncpus = 1\nmemory_mb = 1000\n' + USERS)
    d.server_extra = SSE_LIMITS
    try:
        d.start()
    except RuntimeError:  # a daemon without these [server] keys (the baseline commit)
        d.server_extra = ""
        d.start()
    listeners, delivered = None, 0.0
    try:
        if subscribers:
            listeners = subprocess.Popen([sys.executable, "-c", SUBSCRIBERS, str(d.port), TOKEN, str(subscribers),
                                          str(total)], stdout=subprocess.PIPE, text=True)
            assert listeners.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        secs, ok = asyncio.run(submit_many(d.port, total, 32, TOKEN))
        if listeners is not None:
            assert listeners.stdout.readline().strip() == "delivered"
            delivered = time.perf_counter() - started
    finally:
        if listeners is not None:
            listeners.kill()
            listeners.wait()
        d.stop()
    assert ok == total, f"only {ok} of {total} answered 201"
    return total / secs, delivered


def bench_sse(tmp: Path, total: int, subscribers: int, runs: int) -> None:
    total -= total % 32
    alone, followed, fanned = [], [], []
    for i in range(runs):
        alone.append(submissions_with_subscribers(tmp / f"sse0-{i}", total, 0)[0])
        rate, delivered = submissions_with_subscribers(tmp / f"sse{subscribers}-{i}", total, subscribers)
        followed.append(rate)
        fanned.append(delivered)
    a, f = statistics.median(alone), statistics.median(followed)
    print(f"submissions/s, {total} per run, {runs} runs, one non-admin user: median {a:,.0f}/s with no "
          f"subscriber, {f:,.0f}/s with {subscribers} SSE subscribers (ratio {f / a:.2f}; "
          f"runs {', '.join(f'{x:,.0f}' for x in alone)} / {', '.join(f'{x:,.0f}' for x in followed)}); "
          f"every event on every stream {statistics.median(fanned):.2f} s after the first submit "
          f"(median; runs {', '.join(f'{x:.2f}' for x in fanned)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--sse-only", action="store_true", help="only the SSE fan-out variant (4)")
    parser.add_argument("--throughput-only", action="store_true", help="only the submissions/s figures (1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "var" if (REPO / "var").is_dir() else None) as tmp:
        tmp = Path(tmp)
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
        if args.sse_only:
            bench_sse(tmp, 640, 500, 1 if args.quick else 3)
            return
        bench_throughput(tmp, 2000 if args.quick else 10000, 1 if args.quick else 3)
        if args.throughput_only:
            return
        bench_latency(tmp, 20 if args.quick else 100)
        bench_rss(tmp, 5000 if args.quick else 100_000)
        bench_sse(tmp, 640, 500, 1 if args.quick else 3)


if __name__ == "__main__":
    main()
