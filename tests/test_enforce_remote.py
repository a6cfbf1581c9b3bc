"""The binding on an SSH node (real OpenSSH sshd, login user ``oaastest``): what the node reports and
enforces, without a writable cgroup (RLIMIT_AS) and with a cgroup delegated to the login user."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from pathlib import Path

import pytest

try:
    from realnodes import missing_components, node_accounts, ssh_nodes  # noqa: F401  (fixture)
except ImportError:  # run as a package
    from tests.realnodes import missing_components, node_accounts, ssh_nodes  # noqa: F401
from conftest import cgroup_v1_writable

from oaasd.launchers.cgroups import OWN, CgroupError, _own
from oaasd.launchers.pool import SshOptions, SshPool
from oaasd.launchers.remote_binding import RemoteBinder
from oaasd.launchers.ssh import SshLauncher
from oaasd.ports import Binding, Host, LaunchJob

pytestmark = pytest.mark.skipif(missing_components() is not None, reason=str(missing_components()))

FAST = SshOptions(connect_timeout_s=2.0, keepalive_interval_s=0.3, keepalive_count_max=2,
                  command_timeout_s=10.0, backoff_initial_s=0.1, lost_grace_s=1.0)
PY = "/usr/bin/python3"
TOUCH = ("import os, sys; n = int(sys.argv[1]) << 20; x = bytearray(n)\n"
         "for i in range(0, n, 4096): x[i] = 1\n"
         "print('OAAS_RESULT', sorted(os.sched_getaffinity(0)))")


def job_on(tmp_path: Path, node, attempt_id: int, argv, binding: Binding) -> LaunchJob:
    adir = tmp_path / f"att{attempt_id}"
    adir.mkdir()
    return LaunchJob(task_id=attempt_id, attempt_id=attempt_id, argv=list(argv), env={}, workdir=None,
                     attempt_dir=adir, hosts=[Host(node.name, node.host, 1, binding)], workers=1)


async def launch(binder: RemoteBinder, cluster, tmp_path, jobs):
    pool = SshPool(cluster.node_conns(), FAST)
    launcher = SshLauncher(pool, accounts=node_accounts(), binder=binder)
    try:
        probe = await launcher.probe(cluster.nodes[0].name)
        handles = [await launcher.start(j) for j in jobs]
        exits = await asyncio.gather(*(h.wait() for h in handles))
        return probe, [h.locator.extra for h in handles], exits
    finally:
        await launcher.close()
        await pool.close()


def test_node_without_writable_cgroups_reports_rlimit_and_enforces_it(ssh_nodes, tmp_path):
    cluster = ssh_nodes(1)
    node = cluster.nodes[0]
    binder = RemoteBinder("auto", "oaasd-r" + secrets.token_hex(3), "d1")
    jobs = [job_on(tmp_path, node, 1, [PY, "-c", TOUCH, "400"], Binding(cores=(1,), memory_mb=100)),
            job_on(tmp_path, node, 2, [PY, "-c", TOUCH, "50"], Binding(cores=(0,), memory_mb=300))]
    probe, extras, (over, fine) = asyncio.run(launch(binder, cluster, tmp_path, jobs))
    assert probe["enforcement"] == "rlimit" and "cannot make" in probe["enforcement_reason"]
    assert "oaastest" in probe["enforcement_reason"]
    assert extras[0].get("cgroups") is None
    assert over.exit_code not in (0, None) and not over.oom  # RLIMIT_AS: the allocation fails, no OOM kill
    assert fine.exit_code == 0 and "OAAS_RESULT [0]" in jobs[1].stdout_path.read_text()
    assert fine.cpu_s is not None and fine.cpu_s > 0  # the wrapper's times, back with the exit record


def test_remote_cgroup_set_up_failure_names_the_path(ssh_nodes, tmp_path):
    cluster = ssh_nodes(1)
    node = cluster.nodes[0]
    binder = RemoteBinder("cgroup", "oaasd-r" + secrets.token_hex(3), "d1")
    job = job_on(tmp_path, node, 3, ["/bin/true"], Binding(memory_mb=100))
    with pytest.raises(CgroupError, match="cannot make /sys/fs/cgroup/"):
        asyncio.run(launch(binder, cluster, tmp_path, [job]))


@pytest.fixture
def delegated():
    """A cgroup parent handed to the test login user in the v1 memory and cpuacct hierarchies."""
    if not cgroup_v1_writable():
        pytest.skip("needs writable cgroup v1 controllers as root")
    import pwd
    uid = pwd.getpwnam("oaastest").pw_uid
    own = _own(OWN.read_text())
    name = "oaasd-deleg-" + secrets.token_hex(3)
    made = []
    for c in ("memory", "cpuacct"):
        d = Path("/sys/fs/cgroup") / c / own.get(c, "/").lstrip("/") / name
        d.mkdir()
        made.append(d)
        for f in [d, *d.iterdir()]:
            os.chown(f, uid, -1)
    yield name, made
    for d in made:
        for sub in sorted(d.rglob("*"), reverse=True):
            if sub.is_dir():
                sub.rmdir()
        d.rmdir()


def test_delegated_cgroup_on_the_node_enforces_memory_and_accounts(ssh_nodes, tmp_path, delegated):
    name, made = delegated
    cluster = ssh_nodes(1)
    node = cluster.nodes[0]
    binder = RemoteBinder("auto", name, "d1")
    jobs = [job_on(tmp_path, node, 4, [PY, "-c", TOUCH, "400"], Binding(cores=(1,), memory_mb=100)),
            job_on(tmp_path, node, 5, [PY, "-c", TOUCH, "200"], Binding(cores=(0,), memory_mb=1000))]
    probe, extras, (over, fine) = asyncio.run(launch(binder, cluster, tmp_path, jobs))
    assert probe["enforcement"] == "cgroup1", probe
    assert extras[0]["cgroup"] == "cgroup1" and set(extras[0]["cgroups"]) == {"memory", "cpuacct"}
    assert over.oom and over.signal == "SIGKILL"
    assert fine.exit_code == 0 and not fine.oom and fine.max_rss_mb >= 150 and fine.cpu_s > 0
    assert "OAAS_RESULT [0]" in jobs[1].stdout_path.read_text()
    for extra in extras:  # removed on the node once the attempts ended
        assert not any(Path(d).exists() for d in extra["cgroups"].values())
    assert shutil.which("taskset")


RANK = ("import os; r = os.environ['OMPI_COMM_WORLD_RANK']; "
        "mem = [l for l in open('/proc/self/cgroup') if ':memory:' in l][0].strip().rsplit('/', 1)[-1]; "
        "print('RANK', r, os.environ.get('OAAS_TEST_NODE'), sorted(os.sched_getaffinity(0)), mem)")


def test_mpi_ranks_take_their_hosts_binding(ssh_nodes, tmp_path, delegated):
    from oaasd.launchers.mpi import MpiLauncher, MpiOptions
    name, made = delegated
    cluster = ssh_nodes(2)
    n1, n2 = cluster.nodes
    adir = tmp_path / "mpi"
    adir.mkdir()
    job = LaunchJob(task_id=9, attempt_id=9, argv=[PY, "-c", RANK], env={}, workdir=None, attempt_dir=adir,
                    hosts=[Host(n1.name, n1.host, 1, Binding(cores=(0,), memory_mb=300)),
                           Host(n2.name, n2.host, 1, Binding(cores=(1,), memory_mb=300))], workers=2)

    async def main():
        pool = SshPool(cluster.node_conns(), FAST)
        launcher = MpiLauncher(pool, MpiOptions(extra_args=cluster.mpi_args(), env={"PMIX_MCA_gds": "hash"}),
                               binder=RemoteBinder("auto", name, "d1"))
        try:
            handle = await launcher.start(job)
            binds = handle.locator.extra["binds"]
            return binds, await asyncio.wait_for(handle.wait(), 60)
        finally:
            await launcher.close()
            await pool.close()
    binds, exit_ = asyncio.run(main())
    assert exit_.exit_code == 0, job.stderr_path.read_text()
    lines = sorted(x for x in job.stdout_path.read_text().splitlines() if x.startswith("RANK"))
    assert lines == [f"RANK 0 {n1.marker} [0] a9-0", f"RANK 1 {n2.marker} [1] a9-1"]
    assert set(binds) == {n1.name, n2.name}
    assert exit_.cpu_s is not None and exit_.max_rss_mb is not None
    for bind in binds.values():
        assert not any(Path(d).exists() for d in bind["cgroups"].values())
