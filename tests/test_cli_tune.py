"""``oaasd tune``: the console script run as a subprocess against the real daemon."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oaasd.client.tune import sparkline

SCRIPT = Path(sys.executable).parent / "oaasd"
NODES = ('[[nodes]]\nname = "n1"\ncpus = 2\nmemory_mb = 2000\n'
         '[[nodes]]\nname = "n2"\ncpus = 2\nmemory_mb = 2000\n')

TRIAL = r'''
import json, os, time
c = json.loads(os.environ["OAAS_TRIAL_CONFIG"])
time.sleep(float(os.environ.get("PAUSE", "0")))
print("OAAS_RESULT " + json.dumps({"objs.0": (c["x"] - 0.3) ** 2 + (0.1 if c["kind"] == "b" else 0.0),
                                   "constraints.0": c["x"] - 0.9}), flush=True)
'''


def openbox(trials: int = 6, pause: float = 0.0) -> dict:
    return {"parameter": {"x": {"type": "float", "bound": [0.0, 1.0]},
                          "kind": {"type": "cat", "choice": ["a", "b"]},
                          "depth": {"type": "int", "bound": [1, 4]}},
            "condition": [{"type": "equal", "parent": "kind", "child": "depth", "value": "b"}],
            "name": "cli", "number_of_trials": trials, "num_constraints": 1, "worker_num": 2, "sampler": "random", "seed": 3,
            "trial": {"command": ["/usr/bin/python3", "-c", TRIAL], "cpu_milli": 1000, "memory_mb": 100,
                      "time_limit_s": 120, "env": {"PAUSE": str(pause)}}}


@pytest.fixture
def cli(tmp_path):
    """Run ``oaasd`` with a clean environment (no token, empty config dir, 100 columns)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OAAS_")}
    base.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), COLUMNS="100")

    def run(*args: str, url: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
        env = {**base, **({"OAAS_URL": url} if url else {})}
        return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)
    return run


def url_of(d) -> str:
    return f"http://127.0.0.1:{d.port}"


def write(tmp_path: Path, body: dict) -> str:
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(body))
    return str(path)


def test_create_wait_status_best_trials(daemon_factory, cli, tmp_path):
    d = daemon_factory(NODES)
    url = url_of(d)
    made = cli("tune", "create", write(tmp_path, openbox()), url=url)
    assert made.returncode == 0, made.stderr
    tid = int(made.stdout)
    waited = cli("tune", "wait", str(tid), url=url)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == f"tuning {tid} COMPLETED (NumberOfTrials)"
    assert f"tuning {tid}" in waited.stderr and "6/6 trials" in waited.stderr and "[" in waited.stderr
    view = d.request("GET", f"/v1/tunings/{tid}")[1]

    best = cli("tune", "best", str(tid), "--json", url=url)
    assert best.returncode == 0 and json.loads(best.stdout) == view["best"]
    text = cli("tune", "best", str(tid), url=url)
    assert text.returncode == 0
    assert text.stdout.startswith(f"trial #{view['best']['number']} (id {view['best']['trial_id']}): objs.0 = ")

    status = cli("tune", "status", str(tid), url=url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith(f"tuning {tid} cli: COMPLETED (NumberOfTrials), 6/6 trials")
    assert lines[1].startswith("best: objs.0 = ") and lines[2].startswith("best so far: ")
    header = next(i for i, line in enumerate(lines) if line.startswith("number"))
    assert len(lines) - header - 1 == 6 and all(len(line) <= 100 for line in lines)

    trials = cli("tune", "trials", str(tid), "--csv", url=url)
    assert trials.returncode == 0
    rows = list(csv.DictReader(io.StringIO(trials.stdout)))
    assert [int(r["number"]) for r in rows] == list(range(6))
    assert {r["trial_id"] for r in rows} == {str(t["trial_id"]) for t in view["trials"]}
    for r in rows:  # the inactive child is an empty cell, the active one a value
        assert (r["depth"] != "") == (r["kind"] == "b"), r
        assert float(r["objs.0"]) >= 0 and r["state"] == "COMPLETED"
    table = cli("tune", "trials", str(tid), url=url)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:4] == ["number", "trial_id", "state", "reason"]


def test_cancel_wait_timeout_and_errors(daemon_factory, cli, tmp_path):
    d = daemon_factory(NODES)
    url = url_of(d)
    tid = int(cli("tune", "create", write(tmp_path, openbox(trials=4, pause=60)), url=url).stdout)
    assert cli("tune", "best", str(tid), url=url).returncode == 3  # nothing completed yet
    timed = cli("tune", "wait", str(tid), "--timeout", "0.5", url=url)
    assert timed.returncode == 3 and "still RUNNING" in timed.stderr
    cancelled = cli("tune", "cancel", str(tid), url=url)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"tuning {tid}: CANCELLED (CancelledByUser)"
    again = cli("tune", "cancel", str(tid), url=url)
    assert again.returncode == 4 and "409" in again.stderr
    assert cli("tune", "wait", str(tid), url=url).returncode == 2

    bad = openbox()
    bad["parameter"]["x"]["bound"] = [1.0, 0.0]
    refused = cli("tune", "create", write(tmp_path, bad), url=url)
    assert refused.returncode == 4 and "parameter.x.bound" in refused.stderr, refused.stderr
    missing = cli("tune", "status", "999", url=url)
    assert missing.returncode == 4 and "404" in missing.stderr
    (tmp_path / "broken.json").write_text("{")
    assert cli("tune", "create", str(tmp_path / "broken.json"), url=url).returncode == 4
    unreachable = cli("tune", "status", str(tid), url="http://127.0.0.1:1")
    assert unreachable.returncode == 4 and "cannot reach" in unreachable.stderr


def test_native_description_and_token_from_config(daemon_factory, cli, tmp_path):
    d = daemon_factory(NODES)
    native = {"parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
              "objectives": [{"metric": "loss"}], "number_of_trials": 3, "sampler": "random",
              "trial": {"command": ["/usr/bin/python3", "-c",
                                    "import json,os; c=json.loads(os.environ['OAAS_TRIAL_CONFIG']); "
                                    "print('OAAS_RESULT '+json.dumps({'loss': c['x']}))"],
                        "cpu_milli": 500, "memory_mb": 50}}
    cfg = tmp_path / "xdg" / "oaasd"
    cfg.mkdir(parents=True)
    (cfg / "client.toml").write_text(f'url = "{url_of(d)}"\n')
    made = cli("tune", "create", write(tmp_path, native))  # the URL comes from the config file
    assert made.returncode == 0, made.stderr
    assert cli("tune", "wait", made.stdout.strip()).returncode == 0
    best = json.loads(cli("tune", "best", made.stdout.strip(), "--json").stdout)
    assert best["metric"] == "loss" and best["number"] in (0, 1, 2)


def test_sparkline_scales_low_to_high():
    assert sparkline([3.0, 2.0, 1.0], 10) == "█▅▁"
    assert sparkline([1.0, 1.0], 10) == "▁▁" and sparkline([], 5) == ""
    assert len(sparkline([float(i) for i in range(50)], 8)) == 8
