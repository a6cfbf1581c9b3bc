"""SSH and MPI launchers against real OpenSSH sshd nodes and real mpirun.

Every node is a private sshd on its own loopback address (see realnodes);
the launchers are driven through the seam (start/wait/kill/adopt) and the
remote side is checked in /proc: no test trusts the launcher's own report
that nothing was left behind.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import socket
import time
from pathlib import Path

import psutil
import pytest

try:
    from realnodes import missing_components, node_accounts, ssh_nodes  # noqa: F401  (fixture)
except ImportError:  # run as a package
    from tests.realnodes import missing_components, node_accounts, ssh_nodes  # noqa: F401

from oaasd.errors import ValidationFailedError
from oaasd.launchers.mpi import MpiLauncher, MpiOptions
from oaasd.launchers.pool import NodeError, SshOptions, SshPool
from oaasd.launchers.ssh import SshLauncher
from oaasd.ports import Host, LaunchJob, Locator

pytestmark = pytest.mark.skipif(missing_components() is not None, reason=str(missing_components()))

FAST = SshOptions(connect_timeout_s=2.0, keepalive_interval_s=0.3, keepalive_count_max=2,
                  command_timeout_s=10.0, backoff_initial_s=0.1, lost_grace_s=1.0)
_ids = itertools.count(1)


def make_job(tmp_path: Path, argv, *, env=None, hosts=(), workers=1, workdir=None) -> LaunchJob:
    attempt = next(_ids)
    attempt_dir = tmp_path / f"attempt-{attempt}"
    attempt_dir.mkdir()
    return LaunchJob(task_id=attempt, attempt_id=attempt, argv=list(argv), env=dict(env or {}),
                     workdir=workdir, attempt_dir=attempt_dir, hosts=list(hosts), workers=workers)


def host(node) -> Host:
    return Host(node=node.name, address=node.host, slots=2)


async def wait_for(predicate, timeout: float = 5.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(step)


async def no_leftovers(*nodes, timeout: float = 2.0) -> None:
    """No process of the nodes' attempts is alive (within the time of a cleanup chore)."""
    deadline = time.monotonic() + timeout
    while any(n.leftovers() for n in nodes) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [n.leftovers() for n in nodes] == [[] for _ in nodes]


def sh(script: str, *args: str) -> list[str]:
    return ["/bin/sh", "-c", script, "task", *args]


@pytest.fixture
async def one(ssh_nodes):
    cluster = ssh_nodes(1)
    launcher = SshLauncher(cluster.node_conns(), FAST, accounts=node_accounts())
    yield cluster.nodes[0], launcher
    await launcher.close()


async def test_runs_streams_while_running_and_reports_exit(one, tmp_path):
    node, launcher = one
    job = make_job(tmp_path, sh('echo first; echo oops >&2; sleep 1.5; echo \'{"a": 1}\' > "$OAAS_RESULT_FILE"; '
                                'echo last; exit 3'), hosts=[host(node)])
    started = time.perf_counter()
    handle = await launcher.start(job)
    assert time.perf_counter() - started < 0.5  # returns once the pid is known, not at the end
    waiting = asyncio.ensure_future(handle.wait())
    await wait_for(lambda: (job.stdout_path.read_bytes(), job.stderr_path.read_bytes()) == (b"first\n", b"oops\n"),
                   timeout=1.2)
    assert not waiting.done()  # the bytes arrived while the task still ran
    exit = await waiting
    assert (exit.exit_code, exit.signal, exit.lost) == (3, None, False)
    assert job.stdout_path.read_bytes() == b"first\nlast\n"  # drained, nothing twice
    assert job.result_path.read_text().strip() == '{"a": 1}'
    assert job.exit_path.read_text().splitlines()[0] == "3"  # then the wrapper's times lines
    assert not Path(node.work_root, str(job.attempt_id)).exists()  # removed by the fetch itself
    await no_leftovers(node)


async def test_signal_is_reported(one, tmp_path):
    node, launcher = one
    job = make_job(tmp_path, sh("kill -USR1 $$"), hosts=[host(node)])
    exit = await (await launcher.start(job)).wait()
    assert (exit.exit_code, exit.signal, exit.lost) == (138, "SIGUSR1", False)


async def test_argv_and_env_reach_the_node_literally(one, tmp_path):
    node, launcher = one
    canary = Path(f"/tmp/oaas-pwned-{secrets.token_hex(4)}")
    args = ["two words", "it's \"quoted\"", f"$(touch {canary})", f"; touch {canary}", f"`touch {canary}`",
            "*", "line\nbreak", "-n", ""]
    env = {"USER_VAR": "a b $HOME 'q' \"d\" `x` ;|&", "OAAS_TASK_ID": "42", "MULTI": "x\ny"}
    job = make_job(tmp_path, sh('for a; do printf "[%s]" "$a"; done; printf "\\n%s|%s|%s|%s" '
                                '"$USER_VAR" "$OAAS_TASK_ID" "$MULTI" "$OAAS_TEST_NODE"', *args),
                   env=env, hosts=[host(node)])
    exit = await (await launcher.start(job)).wait()
    assert exit.exit_code == 0
    expected = "".join(f"[{a}]" for a in args) + "\n" + f"{env['USER_VAR']}|42|x\ny|{node.marker}"
    assert job.stdout_path.read_text() == expected
    assert not canary.exists()
    with pytest.raises(ValidationFailedError):
        await launcher.start(make_job(tmp_path, ["/bin/true"], env={"BAD-NAME": "1"}, hosts=[host(node)]))


async def test_workdir_missing_fails_the_task_not_the_node(one, tmp_path):
    node, launcher = one
    job = make_job(tmp_path, ["/bin/pwd"], hosts=[host(node)], workdir="/tmp")
    exit = await (await launcher.start(job)).wait()
    assert exit.exit_code == 0 and job.stdout_path.read_text() == "/tmp\n"
    job = make_job(tmp_path, ["/bin/pwd"], hosts=[host(node)], workdir="/nonexistent/dir")
    exit = await (await launcher.start(job)).wait()
    assert (exit.fault, exit.lost) == ("BadWorkdir", False)
    assert "cannot enter workdir /nonexistent/dir" in job.stderr_path.read_text()


async def test_cancel_leaves_no_remote_process(one, tmp_path):
    node, launcher = one
    # A TERM-deaf process, a background child and a child in its own session.
    job = make_job(tmp_path, sh("sleep 60 & setsid /bin/sleep 61 & trap '' TERM; echo ready; "
                                "/bin/sh -c 'trap \"\" TERM; sleep 62'; wait"), hosts=[host(node)])
    handle = await launcher.start(job)
    await wait_for(lambda: job.stdout_path.read_bytes() == b"ready\n")
    await wait_for(lambda: len(node.leftovers()) >= 4)
    started = time.monotonic()
    await handle.kill(grace_s=0.5)
    exit = await asyncio.wait_for(handle.wait(), 5)
    assert time.monotonic() - started < 3
    assert exit.exit_code is None and exit.signal == "SIGKILL" and not exit.lost
    await no_leftovers(node)


async def test_cancel_with_cooperative_task_reports_sigterm(one, tmp_path):
    node, launcher = one
    job = make_job(tmp_path, ["/bin/sleep", "60"], hosts=[host(node)])
    handle = await launcher.start(job)
    await wait_for(lambda: len(node.leftovers()) >= 2)
    await handle.kill(grace_s=5)
    exit = await handle.wait()
    assert exit.signal == "SIGTERM"
    await no_leftovers(node)


async def test_crashed_node_is_lost_quickly(one, tmp_path):
    node, launcher = one
    handle = await launcher.start(make_job(tmp_path, ["/bin/sleep", "60"], hosts=[host(node)]))
    await asyncio.sleep(0.3)
    node.kill()
    started = time.monotonic()
    exit = await asyncio.wait_for(handle.wait(), 10)
    assert exit.lost and exit.exit_code is None and "node1" in exit.reason
    assert time.monotonic() - started < FAST.lost_grace_s + 2


async def test_hung_node_is_lost_by_keepalive(one, tmp_path):
    node, launcher = one
    handle = await launcher.start(make_job(tmp_path, ["/bin/sleep", "60"], hosts=[host(node)]))
    await asyncio.sleep(0.3)
    node.freeze()  # TCP stays open, nothing answers: only keepalive can tell
    started = time.monotonic()
    exit = await asyncio.wait_for(handle.wait(), 15)
    keepalive = FAST.keepalive_interval_s * (FAST.keepalive_count_max + 1)
    assert exit.lost and exit.exit_code is None
    assert time.monotonic() - started < keepalive + FAST.lost_grace_s + FAST.connect_timeout_s + 2


async def test_probe_reports_the_node(one):
    node, launcher = one
    info = await launcher.probe("node1")
    assert info["reachable"] and info["node"] == "node1"
    for key in ("load_1m", "load_5m", "load_15m", "cpus", "memory_total_mb", "memory_available_mb",
                "disk_total_mb", "disk_free_mb", "rtt_ms", "connect_ms", "work_root"):
        assert key in info
    assert info["cpus"] >= 1 and info["memory_available_mb"] > 0 and info["disk_free_mb"] > 0


async def probe_error(conn, options=FAST) -> NodeError:
    launcher = SshLauncher({"n": conn}, options)
    try:
        with pytest.raises(NodeError) as caught:
            await launcher.probe("n")
        return caught.value
    finally:
        await launcher.close()


async def test_probe_errors_have_distinct_reasons(ssh_nodes, tmp_path):
    node = ssh_nodes(1).nodes[0]
    with socket.socket() as s:
        s.bind((node.host, 0))
        closed_port = s.getsockname()[1]
    err = await probe_error(node.conn(port=closed_port))
    assert err.reason == "NodeUnreachable" and "refused" in err.message.lower()

    with socket.socket() as silent:  # accepts TCP, never says a word
        silent.bind((node.host, 0))
        silent.listen(8)
        err = await probe_error(node.conn(port=silent.getsockname()[1]),
                                SshOptions(connect_timeout_s=0.5, keepalive_interval_s=0.3))
        assert err.reason == "NodeUnreachable" and "did not answer" in err.message

    stranger = tmp_path / "stranger"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {stranger}")
    assert (await probe_error(node.conn(key_path=str(stranger)))).reason == "AuthRefused"
    assert (await probe_error(node.conn(key_path=str(tmp_path / "missing")))).reason == "KeyUnreadable"

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    assert (await probe_error(node.conn(known_hosts=str(empty)))).reason == "HostKeyUnknown"
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[{node.host}]:{node.port} {Path(str(stranger) + '.pub').read_text()}")
    err = await probe_error(node.conn(known_hosts=str(changed)))
    assert err.reason == "HostKeyChanged"
    # accept_unknown_hosts trusts a host with no entry, never a changed one.
    launcher = SshLauncher({"n": node.conn(known_hosts=str(empty), accept_unknown_hosts=True)}, FAST)
    assert (await launcher.probe("n"))["reachable"]
    await launcher.close()
    err = await probe_error(node.conn(known_hosts=str(changed), accept_unknown_hosts=True))
    assert err.reason == "HostKeyChanged"


async def test_adopt_after_restart_refinds_and_resumes(ssh_nodes, tmp_path):
    cluster = ssh_nodes(1)
    node = cluster.nodes[0]
    launcher = SshLauncher(cluster.node_conns(), FAST, accounts=node_accounts())
    job = make_job(tmp_path, sh("echo one; sleep 1; echo two; exit 5"), hosts=[host(node)])
    handle = await launcher.start(job)
    await wait_for(lambda: job.stdout_path.read_bytes() == b"one\n")
    locator = handle.locator
    await launcher.close()  # the daemon stops; the attempt must not
    assert len(node.leftovers()) >= 2

    restarted = SshLauncher(cluster.node_conns(), FAST, accounts=node_accounts())
    wrong = Locator(pid=locator.pid, start_time=locator.start_time + 1, extra=locator.extra)
    assert await restarted.adopt(job, wrong) is None
    adopted = await restarted.adopt(job, locator)
    assert adopted is not None
    exit = await adopt_wait(adopted)
    assert exit.exit_code == 5
    assert job.stdout_path.read_bytes() == b"one\ntwo\n"

    # An attempt that ended while the daemon was down is still adopted for its exit record.
    job2 = make_job(tmp_path, sh("echo done; exit 7"), hosts=[host(node)])
    handle2 = await restarted.start(job2)
    locator2 = handle2.locator
    await restarted.close()
    await asyncio.sleep(0.3)
    again = SshLauncher(cluster.node_conns(), FAST, accounts=node_accounts())
    job2.stdout_path.write_bytes(b"")
    exit2 = await adopt_wait(await again.adopt(job2, locator2))
    assert exit2.exit_code == 7 and job2.stdout_path.read_bytes() == b"done\n"
    await again.close()
    await no_leftovers(node)


async def adopt_wait(handle):
    assert handle is not None
    return await asyncio.wait_for(handle.wait(), 10)


@pytest.fixture
async def mpi(ssh_nodes):
    cluster = ssh_nodes(2)
    pool = SshPool(cluster.node_conns(), FAST)
    launcher = MpiLauncher(pool, MpiOptions(extra_args=cluster.mpi_args(), env={"PMIX_MCA_gds": "hash"},
                                            reap_grace_s=0.5))
    yield cluster, launcher
    await launcher.close()
    await pool.close()


RANK_REPORT = ('echo "rank=$OMPI_COMM_WORLD_RANK node=$OAAS_TEST_NODE via=${SSH_CONNECTION##* } '
               'user=$USER_VAR tag=${OAAS_LAUNCH_TAG:+yes}"')


async def test_mpi_one_rank_per_slot_on_the_expected_hosts(mpi, tmp_path):
    cluster, launcher = mpi
    n1, n2 = cluster.nodes
    rank0_result = '[ "$OMPI_COMM_WORLD_RANK" = 0 ] && echo \'{"r": 0}\' > "$OAAS_RESULT_FILE"; true'
    job = make_job(tmp_path, sh(RANK_REPORT + "; " + rank0_result),
                   env={"USER_VAR": "v w"}, hosts=[host(n1), host(n2)], workers=4)
    exit = await asyncio.wait_for((await launcher.start(job)).wait(), 30)
    assert exit.exit_code == 0, job.stderr_path.read_text()
    assert (job.attempt_dir / "hostfile").read_text() == f"{n1.host} slots=2\n{n2.host} slots=2\n"
    lines = sorted(job.stdout_path.read_text().split("\n")[:-1])
    port = cluster.port
    assert lines == [f"rank={r} node={n.marker} via={port} user=v w tag=yes" for r, n in
                     ((0, n1), (1, n1), (2, n2), (3, n2))]
    assert job.result_path.read_text().strip() == '{"r": 0}'
    await no_leftovers(n1, n2)


def local_mpirun_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_mpi_cancel_ends_every_rank_on_every_node(mpi, tmp_path):
    cluster, launcher = mpi
    n1, n2 = cluster.nodes
    job = make_job(tmp_path, sh("trap '' TERM; echo up; exec /bin/sleep 60"), hosts=[host(n1), host(n2)], workers=4)
    handle = await launcher.start(job)
    await wait_for(lambda: job.stdout_path.read_text().count("up") == 4, timeout=15)
    group = [p.pid for p in psutil.Process(handle.locator.pid).children(recursive=True)]
    started = time.monotonic()
    await handle.kill(grace_s=0.5)
    exit = await asyncio.wait_for(handle.wait(), 10)
    assert time.monotonic() - started < 5
    assert exit.exit_code != 0 or exit.signal
    await no_leftovers(n1, n2)
    assert not any(local_mpirun_alive(pid) for pid in group)


async def test_mpi_cut_off_node_is_lost_and_swept_when_back(mpi, tmp_path):
    cluster, launcher = mpi
    n1, n2 = cluster.nodes
    job = make_job(tmp_path, sh("echo up; exec /bin/sleep 60"), hosts=[host(n1), host(n2)], workers=4)
    handle = await launcher.start(job)
    await wait_for(lambda: job.stdout_path.read_text().count("up") == 4, timeout=15)
    group = [p.pid for p in psutil.Process(handle.locator.pid).children(recursive=True)]
    n2.freeze(tasks=True)  # sshd, orted and ranks stop answering: mpirun cannot end them
    exit = await asyncio.wait_for(handle.wait(), 15)
    assert exit.lost and "node2" in exit.reason
    assert not any(local_mpirun_alive(pid) for pid in group)
    await no_leftovers(n1)
    n2.thaw()
    await launcher.sweep_deferred()
    await no_leftovers(n2)


async def test_attempts_beyond_max_streams_poll_instead(ssh_nodes, tmp_path):
    cluster = ssh_nodes(1)
    node = cluster.nodes[0]
    options = SshOptions(**{**FAST.__dict__, "max_streams": 1, "poll_interval_s": 0.2})
    launcher = SshLauncher(cluster.node_conns(), options, accounts=node_accounts())
    jobs = [make_job(tmp_path, sh(f"echo a{i}; sleep 0.6; echo b{i}; exit {i}"), hosts=[host(node)]) for i in range(3)]
    handles = [await launcher.start(job) for job in jobs]
    await wait_for(lambda: all(job.stdout_path.read_bytes() == f"a{i}\n".encode() for i, job in enumerate(jobs)),
                   timeout=0.55)  # the polled ones too, before they end
    exits = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 10)
    assert [e.exit_code for e in exits] == [0, 1, 2]
    assert [job.stdout_path.read_bytes() for job in jobs] == [f"a{i}\nb{i}\n".encode() for i in range(3)]
    await launcher.close()


async def test_dropped_connection_resumes_without_loss(one, tmp_path):
    node, launcher = one
    job = make_job(tmp_path, sh("echo a; sleep 1.2; echo b; exit 4"), hosts=[host(node)])
    handle = await launcher.start(job)
    await wait_for(lambda: job.stdout_path.read_bytes() == b"a\n")
    node.drop_connections()
    exit = await asyncio.wait_for(handle.wait(), 10)
    assert (exit.exit_code, exit.lost) == (4, False)
    assert job.stdout_path.read_bytes() == b"a\nb\n"


async def test_mpi_adopt_after_restart(mpi, tmp_path):
    cluster, launcher = mpi
    n1, n2 = cluster.nodes
    job = make_job(tmp_path, sh("sleep 1; echo rank=$OMPI_COMM_WORLD_RANK"), hosts=[host(n1), host(n2)], workers=2)
    handle = await launcher.start(job)
    restarted = MpiLauncher(launcher.pool, launcher.options)
    adopted = await restarted.adopt(job, handle.locator)
    assert adopted is not None
    exit = await asyncio.wait_for(adopted.wait(), 20)
    assert exit.exit_code == 0, job.stderr_path.read_text()
    assert sorted(job.stdout_path.read_text().split()) == ["rank=0", "rank=1"]
    # Ended while "the daemon was down": adopted from its exit record; without one, gone.
    ended = Locator(pid=handle.locator.pid, start_time=handle.locator.start_time + 5, extra=handle.locator.extra)
    assert (await asyncio.wait_for((await restarted.adopt(job, ended)).wait(), 10)).exit_code == 0
    job.exit_path.unlink()
    assert await restarted.adopt(job, ended) is None
    await no_leftovers(n1, n2)
