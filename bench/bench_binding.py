"""What carrying out a binding costs per attempt (issue 14), on this host's real cgroups.

1. cgroup set-up and tear-down alone: ``AttemptGroup.create`` (mkdir per
   hierarchy, limits written) then ``remove`` of the empty group, memory
   only and memory + CPU quota.
2. One local attempt of ``/bin/true``, start to reaped exit, through the
   local launcher: enforcement ``none`` beside ``cgroup`` (memory limit and
   one core), interleaved in the same run.
3. Submit -> process start through the real daemon (``/bin/date`` as the
   task), ``[binding] enforce = "none"`` beside ``"auto"`` (a cgroup with the
   task's ``memory_mb`` and the read of accounting at the end), interleaved.

    .venv/bin/python bench/bench_binding.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from conftest import Daemon, remove_cgroups_of  # noqa: E402  (the same harness the tests use)

from oaasd.launchers.binding import Enforcer, instance_of  # noqa: E402
from oaasd.launchers.cgroups import AttemptGroup  # noqa: E402
from oaasd.launchers.local import LocalLauncher  # noqa: E402
from oaasd.ports import Binding, Host, LaunchJob  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def bench_setup(n: int) -> None:
    enforcer = Enforcer("auto", "oaasd-bench", "b" + str(int(time.time())))
    enf = enforcer.enforcement
    print(f"enforcement: {enf.kind} ({enf.why})")
    if not enf.kind.startswith("cgroup"):
        print("no writable cgroups here: nothing to measure")
        return

    async def one(binding: Binding, i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        group = AttemptGroup.create(enf, f"a{i}", binding)
        t1 = time.perf_counter()
        group.usage()
        assert await group.remove()
        return (t1 - t0) * 1e6, (time.perf_counter() - t1) * 1e6

    async def run() -> None:
        for label, binding in (("memory", Binding(memory_mb=100)),
                               ("memory + cpu quota", Binding(memory_mb=100, cpu_quota=0.5))):
            made, gone = zip(*[await one(binding, i) for i in range(n)])
            print(f"cgroup {label}: set-up median {statistics.median(made):.0f} us (p99 {pct(made, .99):.0f}), "
                  f"accounting read + tear-down median {statistics.median(gone):.0f} us (p99 {pct(gone, .99):.0f}), "
                  f"{n} attempts")
    asyncio.run(run())
    enforcer.close()


def bench_launch(tmp: Path, n: int) -> None:
    launchers = {"none": LocalLauncher(enforcer=Enforcer("none")),
                 "cgroup": LocalLauncher(enforcer=Enforcer("auto", "oaasd-bench", instance_of(tmp)))}
    times: dict[str, list[float]] = {k: [] for k in launchers}

    async def run() -> None:
        for i in range(n):
            for kind, launcher in launchers.items():
                adir = tmp / f"{kind}{i}"
                adir.mkdir(parents=True)
                job = LaunchJob(task_id=1, attempt_id=i, argv=["/bin/true"], env={}, workdir=None, attempt_dir=adir,
                                hosts=[Host("local", "127.0.0.1", 1, Binding(cores=(0,), memory_mb=100))], workers=1)
                t0 = time.perf_counter()
                exit_ = await (await launcher.start(job)).wait()
                times[kind].append((time.perf_counter() - t0) * 1000)
                assert exit_.exit_code == 0
    asyncio.run(run())
    launchers["cgroup"].enforcer.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"local attempt of /bin/true, start to reaped exit, {n} each interleaved: none {med['none']:.2f} ms, "
          f"cgroup + affinity {med['cgroup']:.2f} ms (+{med['cgroup'] - med['none']:.2f} ms)")


def bench_daemon(tmp: Path, n: int) -> None:
    node = '[[nodes]]\nname = "one"\ncpus = 2\nmemory_mb = 2000\n'
    daemons = {mode: Daemon(tmp / mode, f'[binding]\nenforce = "{mode}"\n' + node) for mode in ("none", "auto")}
    lat: dict[str, list[float]] = {m: [] for m in daemons}
    try:
        for d in daemons.values():
            d.start()
        for i in range(n):
            for mode, d in sorted(daemons.items(), reverse=bool(i % 2)):  # alternate which goes first
                t0 = time.time()
                tid = d.submit({"command": ["/bin/date", "+%s.%N"], "require_result": False,
                                "resources": {"cpus": 1, "memory_mb": 100}})
                view = d.wait(tid)
                _, text = d.request("GET", f"/v1/tasks/{tid}/logs")
                lat[mode].append((float(text.strip()) - t0) * 1000)
                assert (view["attempts"][0]["enforced"] is not None) == (mode == "auto"), view
    finally:
        for d in daemons.values():
            d.stop()
            remove_cgroups_of(d.state_dir)
    for mode, values in lat.items():
        print(f"daemon submit -> process start, enforce = {mode}, {n} tasks: p50 {statistics.median(values):.1f} ms, "
              f"p99 {pct(values, .99):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=["setup", "launch", "daemon"], help="one part only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "setup"):
            bench_setup(50 if args.quick else 500)
        if args.only in (None, "launch"):
            bench_launch(Path(tmp) / "launch", 20 if args.quick else 200)
        if args.only in (None, "daemon"):
            bench_daemon(Path(tmp) / "daemon", 10 if args.quick else 100)


if __name__ == "__main__":
    main()
