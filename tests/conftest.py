"""Test helpers: the real daemon as a subprocess on loopback, a small HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Daemon:
    """One real oaasd process with its own state dir and config."""

    def __init__(self, tmp: Path, config: str = "", port: int | None = None):
        self.dir = tmp
        self.port = port or free_port()
        self.state_dir = tmp / "var"
        self.config_path = tmp / "oaasd.toml"
        self.config_body = config
        self.proc: subprocess.Popen | None = None
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "daemon.log"
        self.server_extra = ""

    def write_config(self, body: str | None = None) -> None:
        """(Re)write the config file: server section plus ``body``."""
        if body is not None:
            self.config_body = body
        server = (f'[server]\nlisten = "127.0.0.1:{self.port}"\nstate_dir = "{self.state_dir}"\n'
                  f"kill_grace_s = 1.0\n{self.server_extra}")
        self.config_path.write_text(server + self.config_body)

    def start(self, timeout: float = 15.0, env: dict[str, str] | None = None) -> "Daemon":
        """Start and wait until /healthz answers (a new port if ours was taken meanwhile)."""
        for attempt in range(3):
            try:
                return self._start(timeout, env)
            except RuntimeError as exc:
                if "address already in use" not in str(exc).lower() or attempt == 2:  # the log says "Address"
                    raise
                self.port = free_port()
        return self

    def _start(self, timeout: float, env: dict[str, str] | None) -> "Daemon":
        self.write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oaasd", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=log, cwd=self.dir, env={**os.environ, **(env or {})})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = self.request("GET", "/healthz", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the daemon and wait for it to exit; return its code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
        """One HTTP request; returns (status, decoded JSON or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            conn.request(method, path, body=data, headers=headers or {})
            resp = conn.getresponse()
            payload = resp.read()
            self.last_headers = dict(resp.getheaders())
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, json.loads(payload) if "json" in ctype else payload.decode(errors="replace")

    def submit(self, spec: dict[str, Any]) -> int:
        """Submit a task and return its id (asserting 201)."""
        status, body = self.request("POST", "/v1/tasks", spec)
        assert status == 201, body
        return body["id"]

    def task(self, task_id: int) -> dict[str, Any]:
        status, body = self.request("GET", f"/v1/tasks/{task_id}")
        assert status == 200, body
        return body

    def wait(self, task_id: int, states: set[str] | None = None, timeout: float = 30) -> dict[str, Any]:
        """Poll until the task is in one of ``states`` (default: any final)."""
        states = states or FINAL
        deadline = time.time() + timeout
        while time.time() < deadline:
            view = self.task(task_id)
            if view["state"] in states:
                return view
            time.sleep(0.05)
        raise AssertionError(f"task {task_id} stuck in {view['state']}: {view}")


DEFAULT_TASK_USER = "oaasd-task"  # launch.default_user: tasks of a daemon with [[users]] run as it


@pytest.fixture(scope="session", autouse=True)
def default_task_account():
    """The unprivileged account tasks of a shared daemon run as (the systemd unit makes it in production)."""
    import pwd
    try:
        pwd.getpwnam(DEFAULT_TASK_USER)
    except KeyError:
        if os.geteuid() == 0:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", DEFAULT_TASK_USER], capture_output=True)


@pytest.fixture
def daemon_factory(tmp_path):
    """Start daemons on demand; every one is stopped (SIGKILL if needed) after the test."""
    made: list[Daemon] = []

    def make(config: str = "", start: bool = True, sub: str = "d") -> Daemon:
        d = Daemon(tmp_path / f"{sub}{len(made)}", config)
        d.dir.mkdir(parents=True, exist_ok=True)
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        try:
            d.stop(signal.SIGTERM, timeout=10)
        except subprocess.TimeoutExpired:
            d.stop(signal.SIGKILL)
        kill_tasks_of(d.state_dir)
        remove_cgroups_of(d.state_dir)


def cgroup_v1_writable() -> bool:
    """Whether this host gives root writable cgroup v1 controllers (the probe leaves no directory)."""
    from oaasd.launchers.cgroups import detect
    if os.geteuid() != 0:
        return False
    enf = detect("auto", "oaasd-probe", "probe")
    for d in set(enf.dirs.values()):
        for level in (d, d.parent):
            try:
                level.rmdir()
            except OSError:
                pass
    return enf.kind == "cgroup1"


def remove_cgroups_of(state_dir: Path) -> None:
    """Remove the attempt cgroups a test daemon left (its tasks were killed after it stopped)."""
    from oaasd.launchers.binding import instance_of
    from oaasd.launchers.cgroups import MOUNTS, OWN, _mounts, _own, parent_dir
    try:
        v2, v1 = _mounts(MOUNTS.read_text())
        own = _own(OWN.read_text())
    except OSError:
        return
    roots = [parent_dir(m, own.get(c, "/"), "oaasd", instance_of(state_dir)) for c, m in v1.items()]
    roots += [parent_dir(v2, own.get("", "/"), "oaasd", instance_of(state_dir))] if v2 else []
    for root in roots:
        for group in (root.glob("a*") if root.is_dir() else []):
            for _ in range(100):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    for pid in (group / "cgroup.procs").read_text().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    time.sleep(0.01)
        try:
            root.rmdir()
        except OSError:
            pass


def kill_tasks_of(state_dir: Path) -> None:
    """Kill every task process a test daemon left running (they outlive it on purpose)."""
    import psutil
    mark = str(state_dir)
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("OAAS_EXIT_FILE", "").startswith(mark):
                os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_file(path: Path, timeout: float = 15) -> str:
    """Wait for a file to exist with content; return it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")
