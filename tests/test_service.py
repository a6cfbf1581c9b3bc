"""Running as a service: systemd notify, SIGHUP reload, users/tokens/roles, limits."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid

from oaasd.service.auth import token_hash
from tests.conftest import REPO

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "root": "root-token-0123456789"}


def users_toml(**limits: str) -> str:
    """[[users]] for alice and bob (users) and root (admin), with extra per-user lines."""
    out = []
    for name, token in TOKENS.items():
        role = "admin" if name == "root" else "user"
        out.append(f'[[users]]\nname = "{name}"\nrole = "{role}"\ntoken_sha256 = "{token_hash(token)}"\n'
                   f"{limits.get(name, '')}\n")
    return "".join(out)


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def poll(check, timeout: float = 15.0, what: str = "condition"):
    """Call ``check`` until it returns something truthy; return it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


# ---- systemd notify ---------------------------------------------------
class NotifyListener:
    """A datagram socket standing in for systemd's notify socket (abstract namespace)."""

    def __init__(self):
        self.name = f"@oaasd-test-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 15.0) -> list[str]:
        """Read datagrams until one carries ``line``; return every line seen so far."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            if line in self.messages[-1].splitlines():
                return self.messages
        raise AssertionError(f"{line!r} never sent; got {self.messages}")


def test_notify_ready_status_watchdog_reload_stopping(daemon_factory):
    listener = NotifyListener()
    d = daemon_factory(start=False)
    d.start(env={"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "400000"})
    first = listener.wait_for("READY=1")[-1].splitlines()
    assert any(x.startswith("STATUS=") and "pending" in x and "running" in x for x in first)
    assert f"MAINPID={d.proc.pid}" in first
    listener.wait_for("WATCHDOG=1", timeout=5)
    listener.wait_for("WATCHDOG=1", timeout=5)  # petted again: it keeps coming
    d.proc.send_signal(signal.SIGHUP)
    listener.wait_for("RELOADING=1")
    listener.wait_for("READY=1")
    assert d.stop() == 0
    listener.wait_for("STOPPING=1")


def test_without_notify_socket_the_daemon_runs_as_before(daemon_factory):
    d = daemon_factory()
    status, body = d.request("GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    assert d.stop() == 0


# ---- SIGHUP reload ------------------------------------------------------
NODES = """
[[nodes]]
name = "a"
cpus = 2
memory_mb = 1024
labels = {{ part = "a" }}

[[nodes]]
name = "{second}"
cpus = 2
memory_mb = 1024
labels = {{ part = "{second}" }}
"""


def node_states(d) -> dict[str, str]:
    status, body = d.request("GET", "/v1/nodes")
    assert status == 200, body
    return {n["name"]: n["state"] for n in body["items"]}


def test_sighup_adds_drains_and_later_drops_nodes_without_touching_tasks(daemon_factory):
    d = daemon_factory('[scheduler]\nfit = "best"\n' + NODES.format(second="b"))
    task = d.submit({"name": "on-b", "command": ["sleep", "60"], "labels": {"part": "b"},
                     "resources": {"cpus": 1}})
    assert d.wait(task, {"RUNNING"})["attempts"][-1]["node"] == "b"
    d.write_config('[scheduler]\nfit = "worst"\n' + NODES.format(second="c"))
    d.proc.send_signal(signal.SIGHUP)
    poll(lambda: "c" in node_states(d), what="node c added")
    assert node_states(d) == {"a": "IDLE", "b": "DRAINING", "c": "IDLE"}
    assert d.task(task)["state"] == "RUNNING"
    status, body = d.request("GET", "/v1/nodes/b")
    assert body["reason"] == "removed from oaasd.toml"
    blocked = d.submit({"name": "wants-b", "command": ["true"], "require_result": False, "labels": {"part": "b"}})
    on_c = d.submit({"name": "on-c", "command": ["true"], "require_result": False, "labels": {"part": "c"}})
    assert d.wait(on_c)["state"] == "COMPLETED"
    assert d.task(blocked)["state"] == "PENDING"
    assert d.request("DELETE", f"/v1/tasks/{task}")[0] == 202
    d.wait(task)
    d.proc.send_signal(signal.SIGHUP)
    poll(lambda: "b" not in node_states(d), what="drained node b dropped")
    assert "reload: node b drained and idle: removed" in d.log()
    assert "reload: scheduler, users and limits reloaded" in d.log()


def test_sighup_with_a_broken_file_keeps_the_old_settings(daemon_factory):
    d = daemon_factory(NODES.format(second="b"))
    d.config_path.write_text("[server\nthis is not toml")
    d.proc.send_signal(signal.SIGHUP)
    poll(lambda: "reload refused" in d.log(), what="refusal logged")
    d.write_config(NODES.format(second="b") + "\n[[nodes]]\nname = \"a\"\n")  # duplicate name
    d.proc.send_signal(signal.SIGHUP)
    poll(lambda: d.log().count("reload refused") == 2, what="second refusal logged")
    assert "duplicate node names" in d.log()
    assert node_states(d) == {"a": "IDLE", "b": "IDLE"}
    task = d.submit({"name": "still-works", "command": ["true"], "require_result": False})
    assert d.wait(task)["state"] == "COMPLETED"


def test_sighup_reloads_users(daemon_factory):
    d = daemon_factory(users_toml())
    assert d.request("GET", "/v1/tasks", headers=bearer("alice"))[0] == 200
    d.write_config(_users_without("alice"))
    d.proc.send_signal(signal.SIGHUP)
    poll(lambda: d.request("GET", "/v1/tasks", headers=bearer("alice"))[0] == 401, what="alice refused")
    assert d.request("GET", "/v1/tasks", headers=bearer("bob"))[0] == 200


def test_sighup_never_weakens_auth(daemon_factory):
    """An empty or cut-off oaasd.toml parses as "no users": a reload must refuse it, not turn auth off."""
    d = daemon_factory(users_toml())
    full = d.config_path.read_text()
    bad_files = [
        ("", "turn auth off"),
        (full[: full.index("[[users]]")], "turn auth off"),  # cut off before the users
        (_users_without("root"), "no admin"),
    ]
    for n, (text, why) in enumerate(bad_files, start=1):
        d.config_path.write_text(text)
        d.proc.send_signal(signal.SIGHUP)
        poll(lambda: d.log().count("reload refused") == n, what=f"refusal {n} logged")
        assert why in d.log().split("reload refused")[-1].splitlines()[0]
        status, body = d.request("GET", "/v1/tasks")
        assert status == 401, body  # auth stayed on
        assert d.request("GET", "/v1/tasks", headers=bearer("alice"))[0] == 200
        assert d.request("GET", "/v1/nodes", headers=bearer("root"))[0] == 200
    assert "users and limits reloaded" not in d.log()


def _users_without(name: str) -> str:
    out = []
    for user, token in TOKENS.items():
        if user != name:
            role = "admin" if user == "root" else "user"
            out.append(f'[[users]]\nname = "{user}"\nrole = "{role}"\ntoken_sha256 = "{token_hash(token)}"\n')
    return "\n".join(out)


# ---- users, tokens, roles --------------------------------------------------
def test_auth_matrix(daemon_factory):
    d = daemon_factory(users_toml())
    status, body = d.request("GET", "/v1/tasks")
    assert status == 401 and body["error"] == "Unauthorized" and body["detail"][0]["field"] == "Authorization"
    status, body = d.request("GET", "/v1/tasks", headers={"Authorization": "Bearer not-a-token"})
    assert status == 401 and body["message"] == "unknown token"
    status, body = d.request("GET", "/v1/tasks", headers={"Authorization": f"Basic {TOKENS['alice']}"})
    assert status == 401
    assert d.request("GET", "/healthz")[0] == 200  # probes need no token

    quick = {"command": ["true"], "require_result": False}
    status, body = d.request("POST", "/v1/tasks", {"name": "mine", **quick}, headers=bearer("alice"))
    assert status == 201 and body["user"] == "alice"
    mine = body["id"]
    status, body = d.request("POST", "/v1/tasks", {"name": "x", **quick, "user": "bob"},
                             headers=bearer("alice"))
    assert status == 403 and body["detail"][0]["field"] == "user"
    status, body = d.request("POST", "/v1/tasks", {"name": "for-bob", **quick, "user": "bob"},
                             headers=bearer("root"))
    assert status == 201 and body["user"] == "bob"

    assert d.request("GET", f"/v1/tasks/{mine}", headers=bearer("alice"))[0] == 200
    for method, path in (("GET", f"/v1/tasks/{mine}"), ("DELETE", f"/v1/tasks/{mine}"),
                         ("GET", f"/v1/tasks/{mine}/logs")):
        status, body = d.request(method, path, headers=bearer("bob"))
        assert status == 404 and body["error"] == "NotFound", (method, path, body)
    status, body = d.request("GET", "/v1/tasks?user=alice", headers=bearer("bob"))
    assert status == 200 and {t["user"] for t in body["items"]} == {"bob"}
    status, body = d.request("GET", "/v1/tasks", headers=bearer("root"))
    assert {t["user"] for t in body["items"]} == {"alice", "bob"}
    assert d.request("GET", f"/v1/tasks/{mine}", headers=bearer("root"))[0] == 200

    patch = {"state": "DRAIN", "reason": "maintenance"}
    status, body = d.request("PATCH", "/v1/nodes/local", patch, headers=bearer("alice"))
    assert status == 403 and body["error"] == "Forbidden"
    assert d.request("POST", "/v1/nodes", {"name": "extra", "cpus": 1}, headers=bearer("bob"))[0] == 403
    assert d.request("DELETE", "/v1/nodes/local", headers=bearer("bob"))[0] == 403
    assert d.request("GET", "/v1/nodes", headers=bearer("bob"))[0] == 200
    status, body = d.request("PATCH", "/v1/nodes/local", patch, headers=bearer("root"))
    assert status == 200 and body["state"] in ("DRAINING", "DRAINED") and body["intent"]["user"] == "root"


def test_limits_pending_and_rate(daemon_factory):
    limits = {"alice": "max_pending = 2\n", "bob": "submit_rate = 0.5\nsubmit_burst = 2\n"}
    d = daemon_factory(users_toml(**limits))
    assert d.request("PATCH", "/v1/nodes/local", {"state": "DRAIN", "reason": "hold the queue"},
                     headers=bearer("root"))[0] == 200
    spec = {"name": "held", "command": ["true"], "require_result": False}
    first = [d.request("POST", "/v1/tasks", spec, headers=bearer("alice")) for _ in range(2)]
    assert [s for s, _ in first] == [201, 201]
    status, body = d.request("POST", "/v1/tasks", spec, headers=bearer("alice"))
    assert status == 429 and body["error"] == "RateLimited" and body["detail"][0]["field"] == "max_pending"
    assert int(d.last_headers["Retry-After"]) >= 1
    assert d.request("DELETE", f"/v1/tasks/{first[0][1]['id']}", headers=bearer("alice"))[0] == 202
    assert d.request("POST", "/v1/tasks", spec, headers=bearer("alice"))[0] == 201
    status, body = d.request("GET", "/v1/tasks?state=PENDING", headers=bearer("alice"))
    assert len(body["items"]) == 2  # nothing already queued was touched

    codes = [d.request("POST", "/v1/tasks", spec, headers=bearer("bob"))[0] for _ in range(3)]
    assert codes == [201, 201, 429]
    assert d.request("POST", "/v1/tasks", spec, headers=bearer("root"))[0] == 201  # limits are per user

    status, body = d.request("POST", "/v1/tasks", raw=b"x" * (2 << 20), headers=bearer("alice"))
    assert status == 413 and body["error"] == "TooLarge"
    assert d.stop(timeout=5) == 0  # the unread body is not drained for aiohttp's 10 s default first


def test_beyond_loopback_needs_users(tmp_path):
    cfg = tmp_path / "oaasd.toml"
    cfg.write_text(f'[server]\nlisten = "0.0.0.0:1"\nstate_dir = "{tmp_path / "var"}"\n')
    proc = subprocess.run([sys.executable, "-m", "oaasd", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2
    assert "beyond loopback" in proc.stderr and not (tmp_path / "var").exists()
    cfg.write_text('[server]\nlisten = "127.0.0.1:1"\n[auth]\nenabled = true\n')
    proc = subprocess.run([sys.executable, "-m", "oaasd", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2 and "no [[users]]" in proc.stderr


def test_token_new_and_hash_cli():
    run = [sys.executable, "-m", "oaasd", "token"]
    made = subprocess.run([*run, "new"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    fields = dict(line.split(":", 1) for line in made.splitlines())
    token, digest = fields["token"].strip(), fields["token_sha256"].strip()
    assert len(token) >= 40 and digest == token_hash(token)
    by_arg = subprocess.run([*run, "hash", token], capture_output=True, text=True, check=True, cwd=REPO).stdout
    by_stdin = subprocess.run([*run, "hash"], input=token + "\n", capture_output=True, text=True, check=True,
                              cwd=REPO).stdout
    assert by_arg.strip() == by_stdin.strip() == digest
    empty = subprocess.run([*run, "hash"], input="", capture_output=True, text=True, cwd=REPO)
    assert empty.returncode == 2 and "no token" in empty.stderr


def test_json_log_has_one_line_per_state_change_with_task_and_node(daemon_factory):
    d = daemon_factory(start=False)
    d.server_extra = 'log_format = "json"\n'
    d.start()
    task = d.submit({"name": "logged", "command": ["true"], "require_result": False})
    assert d.wait(task)["state"] == "COMPLETED"
    d.stop()
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    mine = [x for x in lines if x.get("task") == task]
    assert [x["msg"].split(": ", 1)[1].split(" (")[0] for x in mine] == ["PENDING -> RUNNING", "RUNNING -> COMPLETED"]
    assert {x["node"] for x in mine} == {"local"} and all(x["level"] == "INFO" for x in mine)


def test_nodes_show_other_users_tasks_as_counts(daemon_factory):
    d = daemon_factory(users_toml())
    status, body = d.request("POST", "/v1/tasks", {"command": ["sleep", "30"], "require_result": False},
                             headers=bearer("alice"))
    assert status == 201
    tid = body["id"]
    poll(lambda: d.request("GET", f"/v1/tasks/{tid}", headers=bearer("alice"))[1]["state"] == "RUNNING",
         what="alice's task running")
    seen = {}
    for who in ("alice", "bob", "root"):
        listing = d.request("GET", "/v1/nodes", headers=bearer(who))[1]["items"]
        one = d.request("GET", "/v1/nodes/local", headers=bearer(who))[1]
        assert [(n["running"], n["running_count"]) for n in listing] == [(one["running"], one["running_count"])]
        seen[who] = (one["running"], one["running_count"])
    assert seen == {"alice": ([tid], 1), "bob": ([], 1), "root": ([tid], 1)}
    assert d.request("DELETE", f"/v1/tasks/{tid}", headers=bearer("alice"))[0] == 202
