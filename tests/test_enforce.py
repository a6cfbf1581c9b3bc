"""A placement's binding carried out on the node: affinity, cgroups, OOM, accounting (real cgroups here)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from conftest import cgroup_v1_writable

from oaasd.launchers.binding import Enforcer, gpu_env, instance_of
from oaasd.launchers.cgroups import AttemptGroup, CgroupError, Enforcement, detect
from oaasd.launchers.local import LocalLauncher
from oaasd.launchers.wrap import exit_from_record
from oaasd.ports import Binding, Host, LaunchJob

PY = "/usr/bin/python3"
TOUCH = ("import os, sys; n = int(sys.argv[1]) << 20; x = bytearray(n)\n"
         "for i in range(0, n, 4096): x[i] = 1\n"
         "print('OAAS_RESULT', sorted(os.sched_getaffinity(0)))")

needs_cgroup = pytest.mark.skipif(not cgroup_v1_writable(),
                                  reason="needs writable cgroup v1 controllers as root (this machine has them)")


@pytest.fixture
def enforcer(tmp_path):
    enf = Enforcer("auto", "oaasd-test", instance_of(tmp_path))
    yield enf
    enf.close()


def job_of(tmp_path: Path, attempt_id: int, argv: list[str], binding: Binding) -> LaunchJob:
    adir = tmp_path / f"att{attempt_id}"
    adir.mkdir()
    return LaunchJob(task_id=1, attempt_id=attempt_id, argv=argv, env={}, workdir=None, attempt_dir=adir,
                     hosts=[Host("local", "127.0.0.1", 1, binding)], workers=1)


async def run(launcher: LocalLauncher, job: LaunchJob):
    handle = await launcher.start(job)
    dirs = [Path(d) for d in handle.locator.extra.get("cgroups", {}).values()]
    assert all(d.is_dir() for d in dirs), "the cgroup exists while the attempt runs"
    exit_ = await handle.wait()
    return exit_, job.stdout_path.read_text(), dirs


@needs_cgroup
def test_two_tasks_bound_to_distinct_cores_see_them(tmp_path, enforcer):
    async def main():
        launcher = LocalLauncher(enforcer=enforcer)
        jobs = [job_of(tmp_path, 10 + c, [PY, "-c", TOUCH, "1"], Binding(cores=(c,))) for c in (0, 1)]
        return await asyncio.gather(*(run(launcher, j) for j in jobs))
    (e0, out0, _), (e1, out1, _) = asyncio.run(main())
    assert e0.exit_code == 0 and e1.exit_code == 0
    assert "OAAS_RESULT [0]" in out0 and "OAAS_RESULT [1]" in out1


@needs_cgroup
def test_allocation_over_the_limit_is_an_oom_kill_and_the_cgroup_goes(tmp_path, enforcer):
    job = job_of(tmp_path, 20, [PY, "-c", TOUCH, "400"], Binding(memory_mb=100))
    exit_, _, dirs = asyncio.run(run(LocalLauncher(enforcer=enforcer), job))
    assert exit_.oom and exit_.signal == "SIGKILL"
    assert exit_.max_rss_mb is not None and 90 <= exit_.max_rss_mb <= 101
    assert dirs and not any(d.exists() for d in dirs)


@needs_cgroup
def test_accounting_of_a_task_touching_200_mb(tmp_path, enforcer):
    job = job_of(tmp_path, 30, [PY, "-c", TOUCH, "200"], Binding(memory_mb=1000))
    exit_, _, dirs = asyncio.run(run(LocalLauncher(enforcer=enforcer), job))
    assert exit_.exit_code == 0 and not exit_.oom
    assert exit_.max_rss_mb >= 150 and exit_.cpu_s > 0
    assert not any(d.exists() for d in dirs)


@needs_cgroup
def test_killed_attempt_and_its_escaped_children_leave_no_cgroup(tmp_path, enforcer):
    script = "setsid sleep 300 & echo $! > child; exec sleep 300"
    job = job_of(tmp_path, 40, ["/bin/sh", "-c", script], Binding(memory_mb=50))

    async def main():
        launcher = LocalLauncher(enforcer=enforcer)
        handle = await launcher.start(job)
        dirs = [Path(d) for d in handle.locator.extra["cgroups"].values()]
        child = job.attempt_dir / "child"
        for _ in range(200):
            if child.exists() and child.read_text().strip():
                break
            await asyncio.sleep(0.02)
        pid = int(child.read_text())
        await handle.kill(0.2)
        exit_ = await handle.wait()
        return exit_, dirs, pid
    exit_, dirs, pid = asyncio.run(main())
    assert exit_.signal is not None and not exit_.oom
    assert not any(d.exists() for d in dirs)
    with open(f"/proc/{pid}/stat") as f:  # the setsid'd child was in the cgroup: killed (a zombie at most)
        assert f.read().rsplit(")", 1)[1].split()[0] == "Z"


@needs_cgroup
def test_a_cgroup_that_cannot_be_made_names_its_path_and_leaves_nothing(tmp_path, enforcer):
    enf = enforcer.enforcement
    blocker = enf.dirs["cpuacct"] / "a50"  # memory is made first; cpuacct then fails: memory must go again
    blocker.mkdir()
    try:
        job = job_of(tmp_path, 50, ["/bin/true"], Binding(memory_mb=10))
        with pytest.raises(CgroupError, match=str(blocker)):
            asyncio.run(LocalLauncher(enforcer=enforcer).start(job))
        assert not (enf.dirs["memory"] / "a50").exists()
        assert not job.stdout_path.exists() or job.stdout_path.read_text() == ""
    finally:
        blocker.rmdir()


@needs_cgroup
def test_sweep_removes_only_stale_attempt_cgroups(tmp_path, enforcer):
    enf = enforcer.enforcement
    stale = AttemptGroup.create(enf, "a60", Binding(memory_mb=10))
    live = AttemptGroup.create(enf, "a61", Binding(memory_mb=10))
    gone = asyncio.run(enforcer.sweep({61}))
    assert gone == ["a60"]
    assert not any(d.exists() for d in stale.dirs.values()) and all(d.exists() for d in live.dirs.values())
    asyncio.run(live.remove())


def test_rlimit_mode_limits_address_space_and_uses_rusage(tmp_path):
    enforcer = Enforcer("rlimit")
    assert enforcer.enforcement.kind == "rlimit" and "RLIMIT_AS" in enforcer.enforcement.why
    launcher = LocalLauncher(enforcer=enforcer)
    over, _, dirs = asyncio.run(run(launcher, job_of(tmp_path, 70, [PY, "-c", TOUCH, "400"], Binding(memory_mb=100))))
    assert over.exit_code not in (0, None) and not over.oom and dirs == []
    fine, out, _ = asyncio.run(run(launcher, job_of(tmp_path, 71, [PY, "-c", TOUCH, "60"],
                                                    Binding(cores=(0,), memory_mb=300))))
    assert fine.exit_code == 0 and "OAAS_RESULT [0]" in out
    assert fine.max_rss_mb >= 50 and fine.cpu_s > 0  # wait4's rusage


def test_none_mode_changes_nothing(tmp_path):
    launcher = LocalLauncher(enforcer=Enforcer("none"))
    exit_, out, dirs = asyncio.run(run(launcher, job_of(tmp_path, 80, [PY, "-c", TOUCH, "1"], Binding(cores=(0,)))))
    assert exit_.exit_code == 0 and dirs == [] and f"OAAS_RESULT {sorted(os.sched_getaffinity(0))}" in out


def test_cgroup_v2_by_the_same_code_path_on_a_fake_tree(tmp_path):
    """v2 on paper: the same functions over a directory tree laid out like a unified hierarchy."""
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    mounts = f"cgroup2 {root} cgroup2 rw 0 0\n"
    own = "0::/\n"
    (root / "oaasd").mkdir()
    (root / "oaasd" / "cgroup.subtree_control").write_text("")
    (root / "oaasd" / "d1").mkdir()
    (root / "oaasd" / "d1" / "cgroup.subtree_control").write_text("")
    enf = detect("auto", "/oaasd", "d1", mounts=mounts, own=own)
    assert enf.kind == "cgroup2" and enf.dirs["memory"] == root / "oaasd" / "d1"
    for level in (root, root / "oaasd", root / "oaasd" / "d1"):  # every level hands memory and cpu down
        assert (level / "cgroup.subtree_control").read_text() == "+memory +cpu"
    # A real cgroupfs makes the interface files with mkdir; here the group's files are written as plain files.
    group_dir = enf.dirs["memory"] / "a5"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        real_mkdir(self, *a, **k)
        if self == group_dir:
            (self / "cgroup.procs").write_text("")
    Path.mkdir = mkdir
    try:
        group = AttemptGroup.create(enf, "a5", Binding(memory_mb=64, cpu_quota=0.5))
    finally:
        Path.mkdir = real_mkdir
    assert (group_dir / "memory.max").read_text() == str(64 << 20)
    assert (group_dir / "cpu.max").read_text() == "50000 100000"
    assert group.procs_files() == [str(group_dir / "cgroup.procs")]
    (group_dir / "memory.peak").write_text(str(150 << 20))
    (group_dir / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (group_dir / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    used = group.usage()
    assert (used.max_rss_mb, used.cpu_s, used.oom_kills) == (150.0, 2.5, 1)


def test_detect_falls_back_or_fails_as_configured():
    no_memory = "cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n"
    auto = detect("auto", "oaasd", "d1", mounts=no_memory, own="1:pids:/\n")
    assert auto.kind == "rlimit" and "memory controller" in auto.why and not auto.required
    strict = detect("cgroup", "oaasd", "d1", mounts=no_memory, own="1:pids:/\n")
    assert strict.kind == "none" and strict.required
    with pytest.raises(CgroupError, match="memory controller"):
        _prepare_with(strict)
    assert isinstance(strict, Enforcement) and strict.view()["enforcement"] == "none"


def _prepare_with(enf: Enforcement) -> None:
    e = Enforcer()
    e._enforcement = enf
    e.prepare(1, Binding(memory_mb=10))


def test_gpu_env_lists_the_bound_devices_or_none_on_a_gpu_node():
    assert gpu_env(Binding(gpus=(1, 0)), True) == {"CUDA_VISIBLE_DEVICES": "1,0"}
    assert gpu_env(Binding(gpus=(2,), gpu_vendor="amd"), True) == {"ROCR_VISIBLE_DEVICES": "2",
                                                                   "HIP_VISIBLE_DEVICES": "2"}
    assert gpu_env(Binding(), True) == {"CUDA_VISIBLE_DEVICES": ""}
    assert gpu_env(Binding(), False) == {}


def test_exit_record_carries_cpu_time_and_bind_failures():
    rec = exit_from_record("0\n0m0.010000s 0m0.000000s\n1m2.500000s 0m0.250000s\n")
    assert rec.exit_code == 0 and rec.cpu_s == 62.75
    assert exit_from_record("7\n").exit_code == 7 and exit_from_record("7\n").cpu_s is None
    bad = exit_from_record("bind cgroup /sys/fs/cgroup/memory/x/cgroup.procs\n")
    assert bad.lost and "/sys/fs/cgroup/memory/x/cgroup.procs" in bad.reason and bad.reason.startswith("launch failed")
