"""The client commands of the ``oaasd`` console script, run as subprocesses against the real daemon."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port

from oaasd.client.commands import progress_of

SCRIPT = Path(sys.executable).parent / "oaasd"
PY = sys.executable


def py(code: str) -> list[str]:
    """An argv running ``code`` with this interpreter."""
    return [PY, "-c", code]


REPORTS = py("print('hello out'); print('OAAS_RESULT {\"accuracy\": 0.97}')")
SLEEPS = py("import time; time.sleep(60)")


@pytest.fixture
def cli(tmp_path):
    """Run the console script with a clean environment: no token, an empty config dir, 100 columns."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OAAS_")}
    base.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), COLUMNS="100")

    def run(*args: str, env: dict[str, str] | None = None, url: str | None = None,
            timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
        full = {**base, **({"OAAS_URL": url} if url else {}), **(env or {})}
        return subprocess.run([str(SCRIPT), *args], env=full, capture_output=True, text=True, timeout=timeout,
                              cwd=cwd)
    return run


@pytest.fixture
def d(daemon_factory):
    return daemon_factory()


def url_of(d) -> str:
    return f"http://127.0.0.1:{d.port}"


def until(check, timeout: float = 15):
    """Poll ``check`` until it returns something true; return that."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def one_error_line(proc: subprocess.CompletedProcess, code: int = 4) -> str:
    """Assert a failure reported as exactly one line on stderr, no traceback; return it."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_submit_with_command_and_from_file(cli, d, tmp_path):
    out = ok(cli("submit", "--name", "hello", "--cpus", "0.5", "--memory-mb", "64", "--time-limit", "30",
                 "--", *REPORTS, url=url_of(d)))
    first = int(out)
    spec = d.task(first)["spec"]
    assert spec["command"] == REPORTS and spec["name"] == "hello"
    assert spec["resources"]["cpus"] == 0.5 and spec["resources"]["memory_mb"] == 64 and spec["time_limit_s"] == 30
    assert d.wait(first)["state"] == "COMPLETED"

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "from-file", "command": REPORTS, "priority": 3}))
    answer = json.loads(ok(cli("submit", "--json", str(job), "--workers", "1", "--gpus", "0", url=url_of(d))))
    assert answer["name"] == "from-file" and answer["state"] == "PENDING" and answer["id"] > first
    spec = d.task(answer["id"])["spec"]
    assert spec["priority"] == 3 and spec["workers"] == 1 and spec["resources"]["gpus"] == 0

    no_result = int(ok(cli("submit", "--no-result-required", "--", PY, "-c", "pass", url=url_of(d))))
    assert d.wait(no_result)["state"] == "COMPLETED"


def test_submit_runs_where_it_was_called_with_the_env_asked_for(cli, d, tmp_path):
    project = tmp_path / "my project"  # a space: the folder reaches the node as one word
    project.mkdir()
    (project / "run.sh").write_text('echo "ran in $PWD"\n')
    (project / "run.sh").chmod(0o755)
    task = int(ok(cli("submit", "--no-result-required", "--", "pwd", url=url_of(d), cwd=project)))
    assert d.wait(task)["state"] == "COMPLETED"
    assert ok(cli("logs", str(task), url=url_of(d))) == f"{project}\n"
    assert d.task(task)["spec"]["workdir"] == str(project)
    # a relative program path resolves in the working directory
    task = int(ok(cli("submit", "--no-result-required", "--", "./run.sh", url=url_of(d), cwd=project)))
    assert d.wait(task)["state"] == "COMPLETED"
    assert ok(cli("logs", str(task), url=url_of(d))) == f"ran in {project}\n"
    # --workdir wins, relative to where the client runs
    (project / "sub").mkdir()
    task = int(ok(cli("submit", "--workdir", "sub", "--no-result-required", "--", "pwd", url=url_of(d),
                      cwd=project)))
    assert d.wait(task)["state"] == "COMPLETED"
    assert ok(cli("logs", str(task), url=url_of(d))) == f"{project / 'sub'}\n"
    # --env sets, --export passes this shell's variables, never OAAS_* (the caller's token among them)
    show = ["/bin/sh", "-c", 'echo "$A|$B|$SECRETISH|${OAAS_TOKEN-unset}"']
    env = {"B": "from-shell", "SECRETISH": "s", "OAAS_TOKEN": "t0ken"}
    task = int(ok(cli("submit", "--env", "A=1=2", "--export", "B", "--no-result-required", "--", *show,
                      url=url_of(d), env=env)))
    assert d.wait(task)["state"] == "COMPLETED"
    assert ok(cli("logs", str(task), url=url_of(d))) == "1=2|from-shell||unset\n"
    task = int(ok(cli("submit", "--export", "--no-result-required", "--", *show, url=url_of(d), env=env)))
    assert d.wait(task)["state"] == "COMPLETED"
    assert ok(cli("logs", str(task), url=url_of(d))) == "|from-shell|s|unset\n"
    # a folder that does not exist on the node: the attempt fails with a reason, never retried
    task = int(ok(cli("submit", "--workdir", str(tmp_path / "gone"), "--", "pwd", url=url_of(d))))
    view = d.wait(task)
    assert (view["state"], view["reason"]) == ("FAILED", "BadWorkdir"), view
    assert one_error_line(cli("submit", "--env", "1X=2", "--", "pwd", url=url_of(d))).startswith(
        "oaasd: --env '1X=2': expected NAME=VALUE")


def test_status_table_json_and_details(cli, d):
    long_name = "a-very-long-task-name-" * 5
    done = d.submit({"name": long_name, "command": REPORTS})
    failed = d.submit({"name": "fails", "command": py("raise SystemExit(3)")})
    d.wait(done)
    d.wait(failed)

    lines = ok(cli("status", url=url_of(d))).splitlines()
    assert lines[0].split() == ["ID", "NAME", "USER", "STATE", "REASON", "ATTEMPTS", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[str(failed)][1:5] == ["fails", "anonymous", "FAILED", "NonZeroExitCode"]
    assert rows[str(done)][3] == "COMPLETED"

    narrow = ok(cli("status", env={"COLUMNS": "60"}, url=url_of(d))).splitlines()
    assert all(len(line) <= 60 for line in narrow), narrow
    assert any("…" in line and line.split()[0] == str(done) for line in narrow)

    items = json.loads(ok(cli("status", "--json", url=url_of(d))))
    assert [t["id"] for t in items] == [failed, done]
    assert [t["id"] for t in json.loads(ok(cli("status", "--json", "--state", "FAILED", url=url_of(d))))] == [failed]

    detail = ok(cli("status", str(done), url=url_of(d))).splitlines()
    assert "state       COMPLETED (Exited)" in detail
    assert 'result      {"accuracy": 0.97}' in detail
    assert any(line.startswith("attempt     1 on local: COMPLETED exit 0") for line in detail)
    assert json.loads(ok(cli("status", "--json", str(failed), url=url_of(d))))["state"] == "FAILED"


def test_logs_and_follow(cli, d):
    code = ("import time\nfor i in range(4):\n    print('line', i, flush=True); time.sleep(0.2)\n"
            "print('OAAS_RESULT {}')")
    task = int(ok(cli("submit", "--", *py(code), url=url_of(d))))
    followed = ok(cli("logs", "-f", str(task), url=url_of(d)))  # returns only when the task has ended
    assert [l for l in followed.splitlines() if l.startswith("line")] == [f"line {i}" for i in range(4)]
    assert d.task(task)["state"] == "COMPLETED"
    assert ok(cli("logs", str(task), url=url_of(d))) == followed

    noisy = d.submit({"command": py("import sys; sys.stderr.write('to stderr\\n'); print('OAAS_RESULT {}')")})
    d.wait(noisy)
    assert ok(cli("logs", "--stderr", str(noisy), url=url_of(d))) == "to stderr\n"


def test_logs_into_a_closed_pipe_end_quietly(d, tmp_path):
    big = d.submit({"command": py("for i in range(300000): print(i)"), "require_result": False})
    d.wait(big)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OAAS_")}, "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.Popen([str(SCRIPT), "logs", "--url", url_of(d), str(big)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "0\n"
    proc.stdout.close()  # like `| head -1`: far more than a pipe's buffer is still to come
    assert proc.wait(60) == 141
    assert proc.stderr.read() == ""


def test_wait_exit_codes_follow_the_final_state(cli, d):
    good = d.submit({"command": REPORTS})
    bad = d.submit({"command": py("raise SystemExit(3)")})
    proc = cli("wait", str(good), url=url_of(d))
    assert proc.returncode == 0 and proc.stdout == f"task {good} COMPLETED (Exited)\n"
    assert cli("wait", str(bad), url=url_of(d)).returncode == 1

    slow = d.submit({"command": SLEEPS})
    d.wait(slow, {"RUNNING"})
    early = cli("wait", "--timeout", "0.5", str(slow), url=url_of(d))
    assert early.returncode == 3 and f"task {slow} still RUNNING after 0.5s" in early.stderr
    assert ok(cli("cancel", str(slow), url=url_of(d))).startswith(f"task {slow}: ")
    cancelled = cli("wait", str(slow), url=url_of(d))
    assert cancelled.returncode == 2 and "CANCELLED (CancelledByUser)" in cancelled.stdout

    timed_out = d.submit({"command": SLEEPS, "time_limit_s": 0.5})
    assert cli("wait", str(timed_out), url=url_of(d)).returncode == 3
    assert d.task(timed_out)["state"] == "TIMEOUT"


def test_wait_shows_progress_from_metrics(cli, d):
    code = ("import time\nfor p in (0.25, 0.5, 0.75, 1.0):\n"
            "    print('OAAS_METRIC {\"progress\": %s}' % p, flush=True); time.sleep(0.3)\n"
            "print('OAAS_RESULT {}')")
    task = d.submit({"command": py(code)})
    proc = cli("wait", str(task), url=url_of(d))
    assert proc.returncode == 0, proc.stderr
    shown = proc.stderr.splitlines()
    assert shown[-1] == f"task {task} COMPLETED [{'#' * 40}] 100%"
    assert all(line.startswith(f"task {task} ") for line in shown)

    steps = d.submit({"command": py("print('OAAS_METRIC {\"step\": 3, \"total\": 4}'); print('OAAS_RESULT {}')")})
    d.wait(steps)
    assert cli("wait", str(steps), url=url_of(d)).stderr.strip().endswith("75% step 3/4")


@pytest.mark.parametrize("metrics, expected", [
    ([], None),
    ([{"attempt": 1, "accuracy": 0.9}], None),
    ([{"attempt": 1, "progress": 0.4}], (0.4, "")),
    ([{"attempt": 1, "step": 2, "total": 8}], (0.25, "step 2/8")),
    ([{"attempt": 1, "progress": 0.5}, {"attempt": 1, "loss": 3}], (0.5, "")),
    ([{"attempt": 1, "progress": 1.7}], (1.0, "")),
    ([{"attempt": 1, "step": 5, "total": 0}], None),
    ([{"attempt": 1, "progress": True}], None),
    ([{"attempt": 1, "progress": 0.9}, {"attempt": 2, "step": 1}], None),  # a retry starts again
])
def test_progress_of_metrics(metrics, expected):
    assert progress_of(metrics) == expected


def test_nodes_drain_and_resume(cli, d):
    lines = ok(cli("nodes", url=url_of(d))).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "CPUS", "MEMORY_MB", "GPUS", "RUNNING", "REASON"]
    name, state, cpus, _, gpus, running = lines[1].split()[:6]
    assert (name, state, running) == ("local", "IDLE", "0") and cpus.split("/")[0] == cpus.split("/")[1]

    assert ok(cli("drain", "local", "--reason", "kernel update", url=url_of(d))) == \
        "node local: DRAINED (kernel update)\n"
    assert ok(cli("nodes", url=url_of(d))).splitlines()[1].split()[1:2] == ["DRAINED"]
    assert "kernel update" in ok(cli("nodes", url=url_of(d)))
    waiting = d.submit({"command": REPORTS})
    view = until(lambda: d.task(waiting).get("nodes_rejected") and d.task(waiting))
    assert view["state"] == "PENDING" and view["nodes_rejected"] == {"NodeNotSchedulable": 1}
    assert 'rejected    {"NodeNotSchedulable": 1}' in ok(cli("status", str(waiting), url=url_of(d))).splitlines()

    assert ok(cli("resume", "local", url=url_of(d))) in ("node local: IDLE\n", "node local: MIXED\n",
                                                          "node local: ALLOCATED\n")
    assert d.wait(waiting)["state"] == "COMPLETED"
    assert json.loads(ok(cli("nodes", "--json", url=url_of(d))))[0]["name"] == "local"


def test_errors_are_one_line(cli, d, tmp_path):
    line = one_error_line(cli("submit", "--cpus", "0", "--", "true", url=url_of(d)))
    assert line.startswith("oaasd: 422 ValidationFailed: resources.cpus: ")
    assert one_error_line(cli("status", "999", url=url_of(d))) == "oaasd: 404 NotFound: id: unknown task id"
    assert one_error_line(cli("drain", "nosuch", "--reason", "x", url=url_of(d))).startswith("oaasd: 404 NotFound")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert one_error_line(cli("submit", str(bad), url=url_of(d))).startswith(f"oaasd: {bad}: not valid JSON")

    nobody = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["nodes"], ["wait", "1"], ["logs", "-f", "1"]):
        line = one_error_line(cli(*args, url=nobody))
        assert line == f"oaasd: cannot reach {nobody}: Connection refused"
    assert one_error_line(cli("status", url="ftp://x")).startswith("oaasd: bad server URL")
    assert cli("submit", url=url_of(d)).returncode == 2  # usage errors are argparse's
    assert cli("drain", "local", url=url_of(d)).returncode == 2


class Recorder(BaseHTTPRequestHandler):
    """Answers GET /v1/nodes with no nodes and records each request's path and Authorization."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"items": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    """A tiny HTTP server on loopback; yields (url, list of (path, Authorization))."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Rec", (Recorder,), {"seen": []}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.RequestHandlerClass.seen
    server.shutdown()
    server.server_close()


def test_url_and_token_from_flags_env_and_config_file(cli, recorder, tmp_path):
    url, seen = recorder
    ok(cli("nodes", env={"OAAS_URL": url, "OAAS_TOKEN": "env-token"}))
    assert seen[-1] == ("/v1/nodes", "Bearer env-token")
    ok(cli("nodes", "--token", "flag-token", env={"OAAS_URL": url, "OAAS_TOKEN": "env-token"}))
    assert seen[-1][1] == "Bearer flag-token"
    ok(cli("nodes", "--url", url))
    assert seen[-1] == ("/v1/nodes", None)

    config = tmp_path / "xdg" / "oaasd" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{url}"\ntoken = "file-token"\n')
    ok(cli("nodes"))
    assert seen[-1] == ("/v1/nodes", "Bearer file-token")
    ok(cli("nodes", env={"OAAS_TOKEN": "env-token"}))
    assert seen[-1][1] == "Bearer env-token"
    count = len(seen)
    assert one_error_line(cli("nodes", url=f"http://127.0.0.1:{free_port()}")).startswith("oaasd: cannot reach")
    assert len(seen) == count  # OAAS_URL beat the file's url

    config.write_text('url = "http://x"\ncolour = "blue"\n')
    assert one_error_line(cli("nodes")) == f"oaasd: {config}: unknown key 'colour' (expected url, token)"


def test_token_is_accepted_by_a_daemon_with_users(cli, daemon_factory):
    alice = hashlib.sha256(b"alice-token").hexdigest()
    d = daemon_factory(f'[[users]]\nname = "alice"\nrole = "user"\ntoken_sha256 = "{alice}"\n')
    assert one_error_line(cli("status", url=url_of(d))).startswith("oaasd: 401 Unauthorized: Authorization: ")
    assert one_error_line(cli("status", "--token", "wrong", url=url_of(d))).startswith("oaasd: 401 Unauthorized")
    task = int(ok(cli("submit", "--", *REPORTS, env={"OAAS_TOKEN": "alice-token"}, url=url_of(d))))
    assert d.request("GET", f"/v1/tasks/{task}", headers={"Authorization": "Bearer alice-token"})[1]["user"] == "alice"
    line = one_error_line(cli("drain", "local", "--reason", "x", env={"OAAS_TOKEN": "alice-token"}, url=url_of(d)))
    assert line == "oaasd: 403 Forbidden: Authorization: admin role required"


def test_global_options_work_before_and_after_the_sub_command(cli, daemon_factory):
    alice = hashlib.sha256(b"alice-token").hexdigest()
    d = daemon_factory(f'[[users]]\nname = "alice"\nrole = "user"\ntoken_sha256 = "{alice}"\n')
    task = int(ok(cli("--url", url_of(d), "--token", "alice-token", "submit", "--", *REPORTS)))
    assert d.request("GET", f"/v1/tasks/{task}", headers={"Authorization": "Bearer alice-token"})[1]["user"] == "alice"
    lines = ok(cli("--url", url_of(d), "status", "--token", "alice-token")).splitlines()
    assert lines[0].split()[0] == "ID" and lines[1].split()[0] == str(task)
    dead = f"http://127.0.0.1:{free_port()}"
    ok(cli("--url", dead, "--token", "wrong", "status", "--url", url_of(d), "--token", "alice-token"))  # last wins
    assert one_error_line(cli("--token", "wrong", "status", url=url_of(d))).startswith("oaasd: 401 Unauthorized")
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == "oaasd 0.1.0", version


def test_control_characters_in_tables_are_escaped(cli, d):
    evil = "\x1b[2J\x1b[H\nFAKE  99  root  COMPLETED\r\x07\u202eok"
    task = d.submit({"name": evil, "command": REPORTS})
    d.wait(task)
    escaped = "\\x1b[2J\\x1b[H\\nFAKE  99  root  COMPLETED\\r\\x07\\u202eok"
    for out in (ok(cli("status", env={"COLUMNS": "200"}, url=url_of(d))),
                ok(cli("status", str(task), url=url_of(d)))):
        assert not any(c in out for c in "\x1b\r\x07\u202e"), repr(out)
        assert escaped in out, out
    lines = ok(cli("status", env={"COLUMNS": "200"}, url=url_of(d))).splitlines()
    assert len(lines) == 2 and lines[1].split()[0] == str(task)  # the newline could not fake a row
    ok(cli("drain", "local", "--reason", "maint\x1b]0;pwned\x07\nlocal  IDLE", url=url_of(d)))
    nodes = ok(cli("nodes", env={"COLUMNS": "200"}, url=url_of(d)))
    assert "\x1b" not in nodes and "maint\\x1b]0;pwned\\x07\\nlocal  IDLE" in nodes and len(nodes.splitlines()) == 2


def test_status_priority_shows_each_pending_tasks_factors_by_score(cli, daemon_factory):
    d = daemon_factory('[scheduler]\npolicy = "priority"\n'
                       'priority_weights = {age = 0, fair_share = 0, size = 0, priority = 1, qos = 0}\n'
                       '[[nodes]]\nname = "one"\ncpus = 1\nmemory_mb = 1000\n')
    blocker = d.submit({"command": ["sleep", "60"], "require_result": False, "resources": {"cpus": 1}})
    until(lambda: d.task(blocker)["state"] == "RUNNING")
    low = d.submit({"name": "low", "command": ["true"], "priority": 1, "resources": {"cpus": 1}})
    high = d.submit({"name": "high", "command": ["true"], "priority": 9, "resources": {"cpus": 1}})
    view = until(lambda: d.task(high).get("priority_factors") and d.task(high))
    factors = view["priority_factors"]
    assert set(factors) == {"age", "fair_share", "size", "priority", "qos", "score"}, factors
    assert factors["score"] == factors["priority"] == pytest.approx(0.5 + 9 / 38)  # own 9, weight 1
    assert d.task(low)["priority_factors"]["score"] == pytest.approx(0.5 + 1 / 22)  # the same whatever is queued
    lines = ok(cli("status", "--priority", url=url_of(d))).splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "USER", "AGE"]
    assert [line.split()[1] for line in lines[1:]] == ["high", "low"]  # highest score first; the running one not listed
    # under another policy there are no factors, and the command says so
    fifo = daemon_factory()
    assert "no pending task has priority factors" in ok(cli("status", "--priority", url=url_of(fifo)))
