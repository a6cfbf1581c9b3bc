"""End-to-end throughput over real sshd nodes (issue 4).

200 short tasks across 4 loopback nodes (127.0.0.x, one real sshd each,
one pooled asyncssh connection per node), submitted at once through the
daemon's API: tasks/s from the first submission to the last COMPLETED.
Beside it, in the same run, the same 200 tasks on 4 local-launcher nodes,
so the cost of the SSH path is a ratio.

    .venv/bin/python bench/bench_cluster.py [--tasks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import Daemon  # noqa: E402
from realnodes import start_cluster  # noqa: E402

SPEC = {"command": ["/bin/sh", "-c", 'echo "OAAS_RESULT {\\"n\\": 1}"'], "resources": {"cpus": 1}}


async def run_batch(port: int, n: int) -> float:
    """Submit n tasks at once; return seconds until every one is COMPLETED."""
    base = f"http://127.0.0.1:{port}"
    # 32 pooled connections: the daemon refuses more than [server]
    # max_connections_per_peer (64) from one address, as it should.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
        t0 = time.perf_counter()

        async def submit() -> int:
            async with s.post(f"{base}/v1/tasks", json=SPEC) as r:
                assert r.status == 201, await r.text()
                return (await r.json())["id"]

        ids = await asyncio.gather(*(submit() for _ in range(n)))
        pending = set(ids)
        while pending:
            async with s.get(f"{base}/v1/tasks?state=COMPLETED&limit=1000") as r:
                done = {t["id"] for t in (await r.json())["items"]}
            async with s.get(f"{base}/v1/tasks?state=FAILED&limit=10") as r:
                failed = (await r.json())["items"]
            assert not failed, failed
            pending -= done
            await asyncio.sleep(0.05)
        return time.perf_counter() - t0


def phases(d: Daemon) -> tuple[float, float]:
    """Medians of submit -> RUNNING and RUNNING -> final over the daemon's tasks."""
    status, body = d.request("GET", "/v1/tasks?limit=1000")
    assert status == 200, body
    items = [t for t in body["items"] if t["ended_at"]]
    return (statistics.median(t["started_at"] - t["submitted_at"] for t in items),
            statistics.median(t["ended_at"] - t["started_at"] for t in items))


def nodes_toml(cluster=None, count: int = 4) -> str:
    out = "[health]\ninterval_s = 5.0\n"
    for i in range(count):
        if cluster is None:
            out += f'[[nodes]]\nname = "l{i}"\ncpus = 4\nmemory_mb = 4000\n'
        else:
            n = cluster.nodes[i]
            out += (f'[[nodes]]\nname = "{n.name}"\nlauncher = "ssh"\nhost = "{n.host}"\nport = {n.port}\n'
                    f'user = "{n.user}"\nkey = "{n.key_path}"\nknown_hosts = "{n.known_hosts}"\n'
                    f'work_root = "{n.work_root}"\ncpus = 4\nmemory_mb = 4000\n')
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    cluster = start_cluster(4)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = {}
            for label, body in (("local x4", nodes_toml()), ("ssh x4", nodes_toml(cluster))):
                d = Daemon(Path(tmp) / label.replace(" ", ""), body)
                d.start()
                try:
                    secs = asyncio.run(run_batch(d.port, args.tasks))
                    wait, run = phases(d)
                finally:
                    d.stop()
                results[label] = args.tasks / secs
                print(f"{label}: {args.tasks} tasks in {secs:.2f} s = {results[label]:.1f} tasks/s; "
                      f"median queued {wait * 1e3:.0f} ms, median RUNNING (launch to recorded end) {run * 1e3:.0f} ms")
            print(f"ssh / local throughput ratio: {results['ssh x4'] / results['local x4']:.2f}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
