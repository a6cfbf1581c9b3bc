"""The state disk fills up: on a real small filesystem (tmpfs) holding the daemon's state dir.

Intake answers 507 with a JSON body while it is full; tasks running meanwhile keep running,
their ends wait until they can be written, the daemon stays up, and nothing runs twice.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

FS_SIZE = "16m"
NODE = '[[nodes]]\nname = "big"\ncpus = 12\nmemory_mb = 12000\n'


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MB tmpfs for a state dir; unmounted after the test (request it before daemon_factory)."""
    mount = tmp_path / "statefs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(fs: Path) -> Path:
    """Write a ballast file until the filesystem refuses more; return it."""
    ballast = fs / "ballast"
    chunk = b"\0" * (1 << 16)
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    for size in (4096, 512, 1):  # the last partial pages too
        try:
            with open(ballast, "ab", buffering=0) as f:
                while True:
                    f.write(b"\0" * size)
        except OSError:
            pass
    return ballast


def on_fs(daemon_factory, fs: Path, config: str = NODE):
    d = daemon_factory(config, start=False)
    d.state_dir = fs / "var"
    return d.start()


def assert_507(d) -> None:
    status, body = d.request("POST", "/v1/tasks", {"command": ["true"], "require_result": False})
    assert status == 507, (status, body)
    assert body["error"] == "InsufficientStorage" and "full" in body["message"], body
    assert body["detail"] == [{"field": "storage", "problem": "state disk full (ENOSPC)"}]


def test_intake_answers_507_while_the_state_disk_is_full(small_fs, daemon_factory):
    d = on_fs(daemon_factory, small_fs)
    ballast = fill(small_fs)
    for _ in range(3):
        assert_507(d)
    status, health = d.request("GET", "/healthz")
    assert status == 200 and health["pending"] == 0
    assert d.request("GET", "/v1/tasks")[1]["items"] == [], "nothing of a refused submission was stored"
    ballast.unlink()
    tid = d.submit({"script": "echo 'OAAS_RESULT {\"after\": true}'"})
    assert d.wait(tid)["result"] == {"after": True}
    assert d.proc.poll() is None
    assert "state disk full" in d.log() and "Traceback" not in d.log()


def test_tasks_ending_while_the_disk_is_full_end_exactly_once(small_fs, daemon_factory, tmp_path):
    d = on_fs(daemon_factory, small_fs)
    pid = d.proc.pid
    gate, marks = tmp_path / "gate", tmp_path / "marks"  # outside the full filesystem
    marks.mkdir()
    script = (f"echo started\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n"
              f"echo ran >> {marks}/$OAAS_TASK_ID\necho 'after the fill: this line cannot be stored'\nexit 0\n")
    ids = [d.submit({"script": script, "require_result": False, "resources": {"cpus": 1}}) for _ in range(10)]
    for tid in ids:
        d.wait(tid, {"RUNNING"})
    ballast = fill(small_fs)
    gate.touch()  # every task ends now, while its end cannot be written
    deadline = time.time() + 20
    while len(list(marks.iterdir())) < len(ids):
        assert time.time() < deadline, "the tasks did not keep running"
        time.sleep(0.05)
    time.sleep(2.0)  # a few refused writes of their ends
    assert {d.task(t)["state"] for t in ids} == {"RUNNING"}, "an end was stored on a full disk?"
    assert_507(d)
    assert d.proc.poll() is None and d.request("GET", "/healthz")[0] == 200, "the daemon must stay up"
    ballast.unlink()
    for tid in ids:
        view = d.wait(tid, timeout=30)
        assert (view["state"], view["attempt_count"]) == ("COMPLETED", 1), view
    time.sleep(1.0)  # a second run, if there were one, would have left its mark by now
    assert sorted(int(p.name) for p in marks.iterdir()) == ids
    assert all(p.read_text() == "ran\n" for p in marks.iterdir()), "a task ran twice"
    assert d.proc.pid == pid and d.proc.poll() is None, "the daemon restarted"
    assert "state disk writable again" in d.log() and "Traceback" not in d.log()
