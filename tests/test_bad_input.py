"""Bad input gets a 4xx JSON error naming the field; never a 500, nothing queued."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    from conftest import Daemon
    d = Daemon(tmp_path_factory.mktemp("bad"))
    d.start()
    yield d
    d.stop()


CASES = [
    # (raw body, status, field named in detail)
    (b"{", 400, "body"),
    (b"[]", 400, "body"),
    (b"", 400, "body"),
    (b"null", 400, "body"),
    (b'"text"', 400, "body"),
    (b'{"command": "echo hi"}', 422, "command"),
    (b'{"command": []}', 422, "command"),
    (b'{"command": [""]}', 422, "command"),
    (b'{"command": ["a\\u0000b"]}', 422, "command"),
    (b'{"name": "x\\u0000", "command": ["true"]}', 422, "name"),
    (b'{"command": ["true"], "script": "true"}', 422, "body"),
    (b'{}', 422, "body"),
    (b'{"command": ["true"], "surprise": 1}', 422, "surprise"),
    (b'{"command": ["true"], "workers": 0}', 422, "workers"),
    (b'{"command": ["true"], "workers": "2"}', 422, "workers"),
    (b'{"command": ["true"], "workers": 1.5}', 422, "workers"),
    (b'{"command": ["true"], "priority": true}', 422, "priority"),
    (b'{"command": ["true"], "resources": {"cpus": -1}}', 422, "resources.cpus"),
    (b'{"command": ["true"], "resources": {"memory_mb": -5}}', 422, "resources.memory_mb"),
    (b'{"command": ["true"], "resources": {"gpus": 1e9}}', 422, "resources.gpus"),
    (b'{"command": ["true"], "resources": {"disk": 1}}', 422, "resources.disk"),
    (b'{"command": ["true"], "time_limit_s": 0}', 422, "time_limit_s"),
    (b'{"command": ["true"], "max_retries": -1}', 422, "max_retries"),
    (b'{"command": ["true"], "env": {"BAD-NAME": "x"}}', 422, "env"),
    (b'{"command": ["true"], "env": {"OAAS_TASK_ID": "7"}}', 422, "env"),
    (b'{"command": ["true"], "env": {"A": 1}}', 422, "env.A"),
    (b'{"command": ["true"], "workdir": "relative/dir"}', 422, "workdir"),
    (b'{"command": ["true"], "workdir": "/tmp/../etc"}', 422, "workdir"),
    (b'{"command": ["true"], "user": "a b"}', 422, "user"),
    (b'{"command": ["true"], "labels": {"k": ""}}', 422, "labels"),
    (b'{"command": ["true"], "placement": "scatter"}', 422, "placement"),
    (b'{"command": ["true"], "resources": {"cpus": 100000}}', 422, "resources"),
]


@pytest.mark.parametrize("raw, status, field", CASES)
def test_bad_submission(daemon, raw, status, field):
    got, body = daemon.request("POST", "/v1/tasks", raw=raw, headers={"Content-Type": "application/json"})
    assert got == status, body
    assert isinstance(body, dict) and body["error"] and body["detail"], body
    fields = [d["field"] for d in body["detail"]]
    assert any(f == field or f.startswith(field + ".") or f.startswith(field) for f in fields), fields


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/tasks/999999", 404),
    ("GET", "/v1/tasks/abc", 400),
    ("GET", "/v1/tasks/-1", 400),
    ("GET", "/v1/tasks/99999999999999999999999", 400),
    ("GET", "/v1/tasks/1%2F..%2F..%2Fetc", 400),
    ("GET", "/v1/tasks/../../etc/passwd", 404),
    ("DELETE", "/v1/tasks/424242", 404),
    ("GET", "/v1/tasks/999999/logs", 404),
    ("GET", "/v1/tasks?limit=0", 400),
    ("GET", "/v1/tasks?limit=abc", 400),
    ("GET", "/v1/tasks?state=SLEEPING", 400),
    ("GET", "/v1/tasks?cursor=-3", 400),
    ("PUT", "/v1/tasks", 405),
    ("GET", "/nope", 404),
])
def test_bad_paths(daemon, method, path, status):
    got, body = daemon.request(method, path)
    assert got == status, body
    assert isinstance(body, dict) and body["error"], body


def test_bad_log_parameters(daemon):
    tid = daemon.submit({"command": ["true"], "require_result": False})
    daemon.wait(tid)
    for query, field in (("stream=stdin", "stream"), ("follow=maybe", "follow"), ("attempt=7", "attempt")):
        got, body = daemon.request("GET", f"/v1/tasks/{tid}/logs?{query}")
        assert got == 400 and body["detail"][0]["field"] == field, body


def test_oversized_body_is_413_and_nothing_is_queued(daemon):
    before = daemon.request("GET", "/v1/tasks")[1]["items"]
    big = b'{"command": ["echo", "' + b"x" * (2 << 20) + b'"]}'
    got, body = daemon.request("POST", "/v1/tasks", raw=big)
    assert got == 413 and body["error"] == "TooLarge"
    assert daemon.request("GET", "/v1/tasks")[1]["items"] == before
    assert daemon.request("GET", "/healthz")[0] == 200


@pytest.mark.parametrize("config, key", [
    ('[server]\nlisten = "nowhere"\n', "server.listen"),
    ('[server]\nlisten = "127.0.0.1:99999"\n', "server.listen"),
    ('[server]\nlistne = "127.0.0.1:1"\n', "server.listne"),
    ('[scheduler]\nfit = "perfect"\n', "scheduler.fit"),
    ('[scheduler]\npolicy = "lottery"\n', "scheduler.policy"),
    ('[scheduler]\npolicy = "lottery"\n', "'fair' or 'priority'"),
    ('[scheduler]\nqos = {alice = 2}\n', "scheduler.qos.alice"),
    ('[scheduler]\nhalf_life_s = 0\n', "scheduler.half_life_s"),
    ('[scheduler]\ndefault_time_limit_s = -5\n', "scheduler.default_time_limit_s"),
    ('[server]\nkill_grace_s = "soon"\n', "server.kill_grace_s"),
    ('[[nodes]]\nname = "a"\ncpus = -2\n', "nodes.0.cpus"),
    ('[[nodes]]\nname = "a"\ncore_capacity = [1000, -500]\n', "nodes.0.core_capacity.1"),
    ('[[nodes]]\nname = "a"\ncpus = 4\ncore_capacity = [1000]\n', "core_capacity sums to 1000"),
    ('[[users]]\nname = "a"\ntoken_sha256 = "abc"\n', "users.0.token_sha256"),
    ('[limits]\nsubmit_rate = -1\n', "limits.submit_rate"),
    ("this is not toml", "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path, config, key):
    path = tmp_path / "bad.toml"
    path.write_text(config)
    proc = subprocess.run([sys.executable, "-m", "oaasd", "serve", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert key in proc.stderr, proc.stderr
