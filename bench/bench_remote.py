"""Launch latency over SSH: warm pooled asyncssh vs fresh connections, side by side.

Starts one real sshd node (tests/realnodes), then for each round launches
the same remote command three ways, interleaved so that they share the
machine's noise:

- ``warm``: ``SshLauncher.start`` over the pooled, already open connection;
- ``fresh-asyncssh``: a new asyncssh connection per launch, then the same
  launch command;
- ``fresh-ssh``: a new ``ssh`` client process per launch (the CLI), same
  launch command.

The task is ``/bin/date +%s.%N``: its output, read back from the remote
stdout file (same kernel, same clock), says when the remote process really
started. Reported per way: "start" = launch call -> remote process running,
"pid" = launch call -> pid known (when the launch returns). For warm
launches also "exit" = launch call -> ``wait()`` returned the Exit (exit
detection, leftover kill, drain, exit/result fetch).

Run: ``.venv/bin/python bench/bench_remote.py --rounds 60 [--write bench/RESULTS-remote.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import realnodes  # noqa: E402

from oaasd.launchers.pool import SshOptions  # noqa: E402
from oaasd.launchers.ssh import SshLauncher, new_tag, remote_command, remote_dir  # noqa: E402
from oaasd.launchers.wrap import wrap_argv  # noqa: E402
from oaasd.ports import Host, LaunchJob  # noqa: E402

TASK = ["/bin/date", "+%s.%N"]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (ms)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def remote_started(node, attempt: int) -> float:
    """The epoch time the remote ``date`` printed into its stdout file."""
    path = Path(node.work_root) / str(attempt) / "stdout.log"
    for _ in range(200):
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return float(text)
        time.sleep(0.005)
    raise RuntimeError(f"no output in {path}")


class Bench:
    """Holds the node, the warm launcher and the samples."""

    def __init__(self, node, cluster):
        self.node = node
        self.cluster = cluster
        self.options = SshOptions(keep_remote_dirs=True)
        self.launcher = SshLauncher(cluster.node_conns(), self.options)
        self.tmp = Path(tempfile.mkdtemp(prefix="oaas-bench-"))
        self.attempt = 0
        self.samples: dict[str, list[float]] = {}

    def job(self) -> LaunchJob:
        self.attempt += 1
        d = self.tmp / str(self.attempt)
        d.mkdir()
        return LaunchJob(1, self.attempt, TASK, {"OAAS_TASK_ID": "1"}, None, d,
                         [Host(self.node.name, self.node.host, 1)], 1)

    def add(self, key: str, value_s: float) -> None:
        self.samples.setdefault(key, []).append(value_s * 1000)

    def launch_command(self, job: LaunchJob) -> str:
        return remote_command("launch", remote_dir(self.launcher.pool, self.node.name, job), new_tag(job),
                              "env", *[f"{k}={v}" for k, v in job.env.items()], *wrap_argv(TASK))

    async def warm(self) -> None:
        job = self.job()
        t0 = time.time()
        handle = await self.launcher.start(job)
        self.add("warm pid", time.time() - t0)
        await handle.wait()
        self.add("warm exit", time.time() - t0)
        self.add("warm start", remote_started(self.node, job.attempt_id) - t0)

    async def fresh_asyncssh(self) -> None:
        job = self.job()
        nc = self.node.conn()
        t0 = time.time()
        async with asyncssh.connect(nc.host, nc.port, username=nc.user, client_keys=[nc.key_path],
                                    known_hosts=nc.known_hosts, config=None, agent_path=None) as conn:
            await conn.run(self.launch_command(job), check=True)
            self.add("fresh-asyncssh pid", time.time() - t0)
        self.add("fresh-asyncssh start", remote_started(self.node, job.attempt_id) - t0)

    async def fresh_ssh(self) -> None:
        job = self.job()
        nc = self.node.conn()
        argv = ["ssh", "-F", "/dev/null", "-p", str(nc.port), "-i", nc.key_path, "-l", nc.user,
                "-o", f"UserKnownHostsFile={nc.known_hosts}", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                nc.host, self.launch_command(job)]
        t0 = time.time()
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE)
        await proc.communicate()
        self.add("fresh-ssh pid", time.time() - t0)
        assert proc.returncode == 0
        self.add("fresh-ssh start", remote_started(self.node, job.attempt_id) - t0)


async def run(rounds: int) -> tuple[dict[str, list[float]], str]:
    """Measure ``rounds`` interleaved rounds; returns the samples and the ssh version."""
    cluster = realnodes.start_cluster(1)
    bench = Bench(cluster.nodes[0], cluster)
    try:
        await bench.launcher.probe(bench.node.name)  # open the pooled connection once
        for _ in range(3):  # warm-up, not counted
            await bench.warm()
            await bench.fresh_ssh()
        bench.samples.clear()
        for _ in range(rounds):
            await bench.warm()
            await bench.fresh_asyncssh()
            await bench.fresh_ssh()
        return bench.samples, os.popen("ssh -V 2>&1").read().strip()
    finally:
        await bench.launcher.close()
        cluster.stop()
        shutil.rmtree(bench.tmp, ignore_errors=True)


def table(samples: dict[str, list[float]]) -> str:
    """Markdown table of p50/p99/min/max per way and measure."""
    rows = ["| way | measure | n | p50 ms | p99 ms | min ms | max ms |", "|---|---|---|---|---|---|---|"]
    for key, values in samples.items():
        way, measure = key.rsplit(" ", 1)
        rows.append(f"| {way} | {measure} | {len(values)} | {pct(values, 50):.1f} | {pct(values, 99):.1f} "
                    f"| {min(values):.1f} | {max(values):.1f} |")
    return "\n".join(rows)


def verdict(samples: dict[str, list[float]]) -> str:
    """One line: the warm p50 against the 50 ms target and the ratios to fresh connections."""
    warm = pct(samples["warm start"], 50)
    fresh = pct(samples["fresh-asyncssh start"], 50)
    cli = pct(samples["fresh-ssh start"], 50)
    met = "met" if warm <= 50 else "NOT met"
    return (f"Warm pooled launch -> remote start p50 {warm:.1f} ms (target <= 50 ms: {met}); "
            f"a fresh asyncssh connection costs {fresh / warm:.1f}x, a fresh ssh client {cli / warm:.1f}x.")


def main() -> None:
    """Run the benchmark and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--write", help="append the results as markdown to this file")
    args = parser.parse_args()
    reason = realnodes.missing_components()
    if reason:
        sys.exit(f"cannot run: {reason}")
    load_before = os.getloadavg()[0]
    samples, ssh_version = asyncio.run(run(args.rounds))
    load = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    text = table(samples) + "\n\n" + verdict(samples)
    print(text)
    if args.write:
        cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_remote.py", *sys.argv[1:]])
        Path(args.write).write_text(RESULTS.format(cmd=cmd, rounds=args.rounds, table=text, ssh=ssh_version,
                                                   asyncssh=asyncssh.__version__, load=load))


RESULTS = """# Remote launch latency (ssh launcher)

- command: `{cmd}`
- machine: 2 cores, Debian 12, one real OpenSSH sshd node on loopback (127.0.0.2), user `oaastest`
- date: 2026-11-23; {ssh}; asyncssh {asyncssh}
- {rounds} rounds, the three ways interleaved in each round (same noise for all); 1-minute
  load average {load} (the machine is shared: trust the ratios more than the milliseconds)

"start" is launch call -> remote process running (the task is `/bin/date +%s.%N`; its
printed time, on the same clock, marks its start). "pid" is launch call -> pid known, i.e.
when `start()` returns. "exit" (warm only) is launch call -> `wait()` returned the Exit:
exit detection (remote poll backs off from 20 ms), leftover kill + log drain, exit/result
fetch (two round trips); removing the remote dir runs after `wait()` returns (and is
skipped here, to read the task's stdout file).

{table}
"""


if __name__ == "__main__":
    main()
