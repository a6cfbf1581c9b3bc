"""Isolation of tasks on a shared daemon: accounts, environment, files, signals.

A daemon with ``[[users]]`` runs alice's tasks as ``oaas-alice``, bob's as
``oaas-bob`` and carol's (no ``unix_user``) as ``oaasd-task``, each from a
clean environment. Bob's task then tries what the attack of issue 12 did:
read alice's logs and the SQLite file, kill alice's task's process group.
The same on a real OpenSSH node, where the tasks run through ``sudo -n -u``
by the node's login user. A missing workdir (or one not the user's to enter)
ends the task FAILED with ``BadWorkdir``, never retried.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from realnodes import TEST_USER, node_toml, ssh_nodes  # noqa: F401  (fixture)

ALICE, BOB, DEFAULT = "oaas-alice", "oaas-bob", "oaasd-task"
TOKENS = {"alice": "alice-token-isolation-0123", "bob": "bob-token-isolation-0123",
          "carol": "carol-token-isolation-0123"}
MARKER = "DAEMON_ONLY_MARKER"  # set in the daemon's environment; no task may see it

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, tasks as other accounts)")


def users_toml(mapping: dict[str, str | None]) -> str:
    """[[users]] for alice, bob and carol with their unix_user (None: unmapped)."""
    out = []
    for name, token in TOKENS.items():
        line = f'[[users]]\nname = "{name}"\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        if mapping.get(name):
            line += f'unix_user = "{mapping[name]}"\n'
        out.append(line)
    return "".join(out)


SHARED = users_toml({"alice": ALICE, "bob": BOB, "carol": None})


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def ensure_account(name: str) -> pwd.struct_passwd:
    """A plain test account (reused when it exists: other runs may hold it)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], capture_output=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="module")
def accounts():
    """oaas-alice, oaas-bob and the default task account."""
    return {name: ensure_account(name) for name in (ALICE, BOB, DEFAULT)}


def kill_account_procs(*names: str) -> None:
    """Kill whatever the test accounts still run (only these tests use them)."""
    uids = {pwd.getpwnam(n).pw_uid for n in names}
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"].real in uids:
                proc.kill()
        except (psutil.Error, TypeError):
            pass


@pytest.fixture
def open_root():
    """A state-dir parent every account can traverse (pytest's tmp is 0700 root)."""
    root = Path(tempfile.mkdtemp(prefix="oaas-iso-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield root
    kill_account_procs(ALICE, BOB, DEFAULT)
    shutil.rmtree(root, ignore_errors=True)


def shared_daemon(daemon_factory, root: Path, config: str):
    d = daemon_factory(config, start=False)
    d.state_dir = root / "var"
    return d.start(env={MARKER: "leaked"})


def submit(d, who: str, spec: dict) -> int:
    status, body = d.request("POST", "/v1/tasks", {"require_result": False, **spec}, headers=bearer(who))
    assert status == 201, body
    return body["id"]


def task(d, who: str, task_id: int) -> dict:
    status, body = d.request("GET", f"/v1/tasks/{task_id}", headers=bearer(who))
    assert status == 200, body
    return body


def wait_state(d, who: str, task_id: int, states: set[str], timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = task(d, who, task_id)
        if view["state"] in states:
            return view
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} stayed {view['state']}: {view}")


def wait_text(path: Path, needle: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never appeared in {path}: {text!r}")


def task_process(task_id: int, exit_prefix: str) -> psutil.Process:
    """The wrapper (group leader) of a running task, found by its protocol variables."""
    deadline = time.time() + 20
    while time.time() < deadline:
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                if env.get("OAAS_TASK_ID") == str(task_id) and env.get("OAAS_EXIT_FILE", "").startswith(exit_prefix):
                    if os.getpgid(proc.pid) == proc.pid:
                        return proc
            except (psutil.Error, ProcessLookupError):
                continue
        time.sleep(0.05)
    raise AssertionError(f"no process of task {task_id}")


def env_of(text: str) -> dict[str, str]:
    """NAME=value lines of an ``env`` dump between the BEGIN/END markers."""
    body = text.split("BEGIN\n", 1)[1].split("END\n", 1)[0]
    return dict(line.split("=", 1) for line in body.splitlines() if "=" in line)


SELF_REPORT = 'echo "uid=$(id -u) gid=$(id -g)"; echo BEGIN; env; echo END; echo READY; sleep 60'
# What bob's task tries against alice's (paths and pgid given in its env).
ATTACK = ('for f in "$ALICE_LOG" "$DB" "$DB-wal"; do cat "$f" >/dev/null 2>&1; echo "read $? $f"; done; '
          'ls "$STATE" >/dev/null 2>&1; echo "list-state $?"; '
          'ls "$STATE/attempts" >/dev/null 2>&1; echo "list-attempts $?"; '
          'kill -s KILL -- "-$PGID" 2>/dev/null; echo "kill $?"')


def attack_results(text: str) -> dict[str, str]:
    """``{"read PATH": rc, "list-state": rc, "list-attempts": rc, "kill": rc}`` from the attack's lines."""
    out = {}
    for line in text.splitlines():
        words = line.split(" ", 2)
        if words[0] == "read":
            out[f"read {words[2]}"] = words[1]
        elif words[0] in ("list-state", "list-attempts", "kill"):
            out[words[0]] = words[1]
    return out


def test_tasks_of_a_shared_daemon_run_as_their_accounts_and_cannot_touch_each_other(
        daemon_factory, accounts, open_root):
    d = shared_daemon(daemon_factory, open_root, SHARED)
    assert "tasks run as their users' unix_user" in d.log()
    state = d.state_dir
    alice = submit(d, "alice", {"command": ["/bin/sh", "-c", SELF_REPORT], "env": {"SECRET": "alice-secret"}})
    alice_dir = state / "attempts" / str(alice) / "1"
    text = wait_text(alice_dir / "stdout.log", "READY")
    leader = task_process(alice, str(state))
    alice_uid = accounts[ALICE].pw_uid
    assert f"uid={alice_uid} gid={accounts[ALICE].pw_gid}" in text
    env = env_of(text)
    assert MARKER not in env and "PYTHONPATH" not in env  # nothing of the daemon's environment
    assert env["SECRET"] == "alice-secret" and env["USER"] == ALICE and env["HOME"] == accounts[ALICE].pw_dir
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and env["LANG"] == "C.UTF-8"
    assert {k for k in env if not k.startswith("OAAS_")} - {"PWD", "OLDPWD", "SHLVL", "_"} == {
        "PATH", "LANG", "HOME", "USER", "SECRET"}

    # Files: nothing of the daemon or of alice is readable by another task account.
    db = state / "oaasd.sqlite3"
    assert stat.S_IMODE(state.stat().st_mode) == 0o711
    assert [stat.S_IMODE(p.stat().st_mode) for p in (db, Path(f"{db}-wal"))] == [0o600, 0o600]
    for path, mode in ((alice_dir, 0o700), (alice_dir / "stdout.log", 0o600), (alice_dir / "stderr.log", 0o600)):
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (alice_uid, mode), path

    bob = submit(d, "bob", {"command": ["/bin/sh", "-c", ATTACK + "; id -u"], "env": {
        "ALICE_LOG": str(alice_dir / "stdout.log"), "DB": str(db), "STATE": str(state), "PGID": str(leader.pid)}})
    assert wait_state(d, "bob", bob, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    out = (state / "attempts" / str(bob) / "1" / "stdout.log").read_text()
    assert out.splitlines()[-1] == str(accounts[BOB].pw_uid)
    assert attack_results(out) == {f"read {alice_dir / 'stdout.log'}": "1", f"read {db}": "1", f"read {db}-wal": "1",
                                   "list-state": "2", "list-attempts": "2", "kill": "1"}, out
    assert leader.is_running() and task(d, "alice", alice)["state"] == "RUNNING"  # her task lives on

    carol = submit(d, "carol", {"command": ["/bin/sh", "-c", "id -u"]})
    assert wait_state(d, "carol", carol, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    assert (state / "attempts" / str(carol) / "1" / "stdout.log").read_text().strip() == str(accounts[DEFAULT].pw_uid)

    assert d.request("DELETE", f"/v1/tasks/{alice}", headers=bearer("alice"))[0] == 202
    assert wait_state(d, "alice", alice, {"CANCELLED"})["state"] == "CANCELLED"  # the daemon may still kill it


def test_a_workdir_the_user_may_not_enter_fails_the_task_without_retry(daemon_factory, accounts, open_root):
    d = shared_daemon(daemon_factory, open_root, SHARED)
    locked = open_root / "alice-only"
    locked.mkdir(mode=0o700)
    os.chown(locked, accounts[ALICE].pw_uid, accounts[ALICE].pw_gid)
    ok = submit(d, "alice", {"command": ["/bin/pwd"], "workdir": str(locked)})
    bad = submit(d, "bob", {"command": ["/bin/pwd"], "workdir": str(locked), "max_retries": 3})
    assert wait_state(d, "alice", ok, {"COMPLETED", "FAILED", "NODE_FAIL"})["state"] == "COMPLETED"
    assert (d.state_dir / "attempts" / str(ok) / "1" / "stdout.log").read_text() == f"{locked}\n"
    view = wait_state(d, "bob", bad, {"COMPLETED", "FAILED", "NODE_FAIL"})
    assert (view["state"], view["reason"], view["attempt_count"], view["node_failures"]) == (
        "FAILED", "BadWorkdir", 1, 0), view
    assert "cannot enter workdir" in (d.state_dir / "attempts" / str(bad) / "1" / "stderr.log").read_text()


def test_a_missing_workdir_fails_the_task_without_retry(daemon_factory):
    d = daemon_factory()
    assert "no [[users]]: tasks run as the daemon's own account" in d.log()
    task_id = d.submit({"command": ["/bin/pwd"], "workdir": "/nonexistent/oaas-dir", "max_retries": 3})
    view = d.wait(task_id)
    assert (view["state"], view["reason"], view["attempt_count"], view["node_failures"]) == (
        "FAILED", "BadWorkdir", 1, 0), view


def test_a_single_user_daemon_gives_tasks_a_clean_environment(daemon_factory):
    d = daemon_factory(start=False)
    d.start(env={MARKER: "leaked"})
    task_id = d.submit({"command": ["/bin/sh", "-c", "echo BEGIN; env; echo END"], "env": {"MINE": "1"},
                        "require_result": False})
    assert d.wait(task_id)["state"] == "COMPLETED"
    env = env_of((d.state_dir / "attempts" / str(task_id) / "1" / "stdout.log").read_text())
    assert MARKER not in env and "PYTHONPATH" not in env and env["MINE"] == "1"
    assert env["USER"] == pwd.getpwuid(os.geteuid()).pw_name and env["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_a_shared_daemon_that_cannot_isolate_refuses_to_start(daemon_factory, accounts):
    d = daemon_factory(users_toml({"alice": "oaas-nosuch-user"}), start=False)
    with pytest.raises(RuntimeError) as refused:
        d.start()
    assert "daemon exited 2" in str(refused.value)
    assert "users[alice].unix_user: no Unix account 'oaas-nosuch-user'" in d.log()


# ---- the same on a real OpenSSH node, through sudo -n -u ------------------

@pytest.fixture
def sudo_node(ssh_nodes, accounts):
    """One node whose login user may run /bin/sh as the test accounts (a sudoers.d rule)."""
    if shutil.which("sudo") is None:
        pytest.skip("sudo is missing (apt-get install sudo)")
    cluster = ssh_nodes(1)
    node = cluster.nodes[0]
    rule = Path(f"/etc/sudoers.d/oaas-iso-{secrets.token_hex(4)}")
    rule.write_text(f"{TEST_USER} ALL=({ALICE},{BOB},{DEFAULT}) NOPASSWD: /bin/sh\n")
    os.chmod(rule, 0o440)
    # Every account makes its attempt dirs under the node's work_root: sticky and open, like /tmp.
    Path(node.work_root).mkdir(parents=True, exist_ok=True)
    os.chmod(Path(node.work_root).parent, 0o755)
    os.chmod(node.work_root, 0o1777)
    yield cluster, node
    rule.unlink()
    kill_account_procs(ALICE, BOB, DEFAULT)


def test_tasks_on_an_ssh_node_run_as_their_accounts_through_sudo(daemon_factory, sudo_node, open_root, accounts):
    cluster, node = sudo_node
    d = shared_daemon(daemon_factory, open_root, node_toml(cluster) + SHARED)
    alice = submit(d, "alice", {"command": ["/bin/sh", "-c", SELF_REPORT], "env": {"SECRET": "alice-secret"}})
    text = wait_text(d.state_dir / "attempts" / str(alice) / "1" / "stdout.log", "READY")  # streamed back
    leader = task_process(alice, node.work_root)
    remote_dir = Path(leader.environ()["OAAS_EXIT_FILE"]).parent
    assert f"uid={accounts[ALICE].pw_uid} " in text and leader.uids().real == accounts[ALICE].pw_uid
    env = env_of(text)
    assert MARKER not in env and "SSH_CONNECTION" not in env and "SUDO_USER" not in env  # env -i on the node
    assert (env["USER"], env["HOME"], env["SECRET"]) == (ALICE, accounts[ALICE].pw_dir, "alice-secret")
    assert (remote_dir.stat().st_uid, stat.S_IMODE(remote_dir.stat().st_mode)) == (accounts[ALICE].pw_uid, 0o700)

    bob = submit(d, "bob", {"command": ["/bin/sh", "-c", ATTACK], "env": {
        "ALICE_LOG": str(remote_dir / "stdout.log"), "DB": "/nonexistent", "STATE": str(remote_dir),
        "PGID": str(leader.pid)}})
    assert wait_state(d, "bob", bob, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    out = (d.state_dir / "attempts" / str(bob) / "1" / "stdout.log").read_text()
    results = attack_results(out)
    assert (results[f"read {remote_dir / 'stdout.log'}"], results["list-state"], results["kill"]) == ("1", "2", "1"), out
    assert leader.is_running() and task(d, "alice", alice)["state"] == "RUNNING"

    carol = submit(d, "carol", {"command": ["/bin/sh", "-c", "id -u"]})  # unmapped: the default account
    assert wait_state(d, "carol", carol, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    assert (d.state_dir / "attempts" / str(carol) / "1" / "stdout.log").read_text().strip() == str(
        accounts[DEFAULT].pw_uid)

    bad = submit(d, "bob", {"command": ["/bin/pwd"], "workdir": "/root",
                            "max_retries": 3})
    view = wait_state(d, "bob", bad, {"COMPLETED", "FAILED", "NODE_FAIL"})
    assert (view["state"], view["reason"], view["attempt_count"]) == ("FAILED", "BadWorkdir", 1), view

    assert d.request("DELETE", f"/v1/tasks/{alice}", headers=bearer("alice"))[0] == 202
    assert wait_state(d, "alice", alice, {"CANCELLED"})["state"] == "CANCELLED"
    deadline = time.time() + 10
    while leader.is_running() and leader.status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.05)  # the kill went through sudo as alice too
    assert not leader.is_running() or leader.status() == psutil.STATUS_ZOMBIE


async def test_a_relative_work_root_is_under_the_task_accounts_home(sudo_node, tmp_path, accounts):
    from oaasd.config import UserConfig
    from oaasd.launchers.accounts import Accounts
    from oaasd.launchers.ssh import SshLauncher
    from oaasd.ports import Host, LaunchJob

    cluster, node = sudo_node
    alice = UserConfig(name="alice", token_sha256="0" * 64, unix_user=ALICE)
    launcher = SshLauncher({node.name: node.conn(work_root=".oaasd/iso-attempts")}, accounts=Accounts(users=lambda: [alice]))
    (tmp_path / "a").mkdir()
    job = LaunchJob(task_id=1, attempt_id=7, argv=["/bin/sh", "-c", 'echo "$OAAS_EXIT_FILE $(id -un)"'], env={},
                    workdir=None, attempt_dir=tmp_path / "a", hosts=[Host(node.name, node.host, 1)], workers=1,
                    user="alice")
    try:
        exit = await (await launcher.start(job)).wait()
    finally:
        await launcher.close()
    assert exit.exit_code == 0, job.stderr_path.read_text()
    assert job.stdout_path.read_text() == f"{accounts[ALICE].pw_dir}/.oaasd/iso-attempts/7/exit {ALICE}\n"
    assert not Path(accounts[ALICE].pw_dir, ".oaasd/iso-attempts/7").exists()  # removed as alice, after the fetch
