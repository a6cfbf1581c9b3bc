"""Start-up failures of the real ``oaasd serve``: exit at once, non-zero, one line naming the cause.

Each case runs the console script as a subprocess and asserts what systemd
and the sysadmin see: the exit code, within seconds (no thread left keeping
the process alive), and exactly one line on stderr that is not an INFO log
line, naming the address or path, with no traceback.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

NOBODY = 65534


def serve(config: Path, as_nobody: bool = False, timeout: float = 15.0) -> tuple[int, list[str], float]:
    """Run ``oaasd serve --config``; return (rc, stderr lines, seconds), failing if it stays up."""
    argv = [sys.executable, "-m", "oaasd", "serve", "--config", str(config)]
    if as_nobody:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=config.parent)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"still running after {timeout}s with {threads} threads; stderr:\n{err}")
    return proc.returncode, err.splitlines(), time.monotonic() - started


def the_one_line(lines: list[str]) -> str:
    """The single stderr line that is not an INFO log line (asserting there is exactly one)."""
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    problems = [line for line in lines if " INFO " not in line]
    assert len(problems) == 1, "\n".join(lines)
    return problems[0]


def write_config(tmp: Path, state_dir: Path, port: int | None = None, extra: str = "") -> Path:
    cfg = tmp / "oaasd.toml"
    cfg.write_text(f'[server]\nlisten = "127.0.0.1:{port or free_port()}"\nstate_dir = "{state_dir}"\n{extra}')
    return cfg


def test_taken_port_exits_at_once_naming_the_address(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        rc, lines, seconds = serve(write_config(tmp_path, tmp_path / "var", port))
    line = the_one_line(lines)
    assert rc == 3 and seconds < 10
    assert f"127.0.0.1:{port}" in line and "in use" in line.lower()
    assert not (tmp_path / "var" / "oaasd.sqlite3").exists()  # bound before the store opened


def test_state_dir_not_writable_names_the_dir():
    # root may write anywhere, so the daemon runs as nobody in a dir it may read but not write.
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)
        rc, lines, seconds = serve(write_config(tmp_path, tmp_path / "var"), as_nobody=True)
    line = the_one_line(lines)
    assert rc == 3 and seconds < 10
    assert f"{tmp_path / 'var'}" in line and "Permission denied" in line


def test_state_dir_that_is_a_file_names_the_dir(tmp_path):
    (tmp_path / "var").write_text("not a directory")
    rc, lines, _ = serve(write_config(tmp_path, tmp_path / "var"))
    line = the_one_line(lines)
    assert rc == 3 and f"state dir {tmp_path / 'var'}" in line


def test_unreadable_database_names_the_file(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "oaasd.sqlite3").write_bytes(b"this is not an sqlite database\n" * 200)
    rc, lines, seconds = serve(write_config(tmp_path, tmp_path / "var"))
    line = the_one_line(lines)
    assert rc == 3 and seconds < 10
    assert str(tmp_path / "var" / "oaasd.sqlite3") in line and "not a database" in line


def test_database_of_a_newer_schema_is_refused(tmp_path):
    (tmp_path / "var").mkdir()
    db = tmp_path / "var" / "oaasd.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=999")
    rc, lines, seconds = serve(write_config(tmp_path, tmp_path / "var"))
    line = the_one_line(lines)
    assert rc == 3 and seconds < 10
    assert str(db) in line and "schema version 999" in line
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (999,)  # left as it was


@pytest.mark.parametrize("body, words", [
    ("[server\n", "not valid TOML"),
    ('[server]\nlisten = "127.0.0.1:1"\nno_such_key = 1\n', "server.no_such_key"),
    ('[server]\nheader_timeout_s = -1\n', "server.header_timeout_s"),
])
def test_config_error_is_one_line(tmp_path, body, words):
    cfg = tmp_path / "oaasd.toml"
    cfg.write_text(body)
    rc, lines, _ = serve(cfg)
    line = the_one_line(lines)
    assert rc == 2 and words in line and str(cfg) in line


def test_second_daemon_on_the_same_state_dir_exits_naming_dir_and_pid(daemon_factory, tmp_path):
    first = daemon_factory()
    task = first.submit({"name": "before", "command": ["true"], "require_result": False})
    rc, lines, seconds = serve(write_config(tmp_path, first.state_dir))
    line = the_one_line(lines)
    assert rc == 3 and seconds < 10
    assert str(first.state_dir) in line and f"pid {first.proc.pid}" in line
    assert first.wait(task)["state"] == "COMPLETED"  # the first one is untouched and still serves
    second = first.submit({"name": "after", "command": ["true"], "require_result": False})
    assert first.wait(second)["state"] == "COMPLETED"
    assert first.stop() == 0
    restarted = daemon_factory(start=False)  # the lock dies with its process: a restart is not blocked
    restarted.state_dir = first.state_dir
    restarted.start()
    assert restarted.task(second)["state"] == "COMPLETED"
