"""Tunings driven by the real daemon: trials are tasks, placed and launched like any other."""

from __future__ import annotations

import signal
import sys
import time

NODES = ('[[nodes]]\nname = "n1"\ncpus = 2\nmemory_mb = 2000\n'
         '[[nodes]]\nname = "n2"\ncpus = 2\nmemory_mb = 2000\n')
TUNING_FINAL = {"COMPLETED", "FAILED", "CANCELLED"}

# A trial: loss (x - 0.8)^2 + 0.1 k, reported per step then as the result;
# k == 3 fails; it waits for $GATE (when set) before reporting its result.
TRIAL = r'''
import json, os, sys, time
c = json.loads(os.environ["OAAS_TRIAL_CONFIG"])
x, k = c.get("x", 0.0), c.get("k", 0)
if k == 3:
    sys.exit(3)
loss = (x - 0.8) ** 2 + 0.1 * k
for s in range(1, int(os.environ.get("STEPS", "1")) + 1):
    print("OAAS_METRIC " + json.dumps({"step": s, "loss": loss * (1 + 1.0 / s)}), flush=True)
    time.sleep(float(os.environ.get("PAUSE", "0")))
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.05)
print("OAAS_RESULT " + json.dumps({"loss": loss, "margin": 0.5 - x}), flush=True)
'''


def tuning(**over) -> dict:
    """A small 2-D tuning whose best feasible point has x <= 0.5."""
    env = over.pop("env", {})
    body = {"name": "toy",
            "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0},
                           {"name": "k", "type": "int", "low": 0, "high": 3}],
            "objectives": [{"metric": "loss", "sense": "minimize"}],
            "constraints": [{"metric": "margin", "op": ">=", "value": 0.0}],
            "number_of_trials": 8, "worker_num": 2, "parallel_strategy": "async", "sampler": "random",
            "seed": 1,
            "trial": {"command": [sys.executable, "-c", TRIAL], "cpu_milli": 1000, "memory_mb": 100,
                      "time_limit_s": 60, "env": env}}
    return body | over


def create(d, body: dict) -> int:
    status, view = d.request("POST", "/v1/tunings", body)
    assert status == 201, view
    assert d.last_headers["Location"] == f"/v1/tunings/{view['id']}"
    return view["id"]


def show(d, tuning_id: int) -> dict:
    status, view = d.request("GET", f"/v1/tunings/{tuning_id}")
    assert status == 200, view
    return view


def wait_tuning(d, tuning_id: int, until=lambda v: v["state"] in TUNING_FINAL, timeout: float = 40) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = show(d, tuning_id)
        if until(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"tuning {tuning_id} stuck: {view}")


def test_tuning_completes_and_reports_best_feasible(daemon_factory):
    d = daemon_factory(NODES)
    tid = create(d, tuning())
    view = wait_tuning(d, tid)
    assert (view["state"], view["reason"]) == ("COMPLETED", "NumberOfTrials"), view
    trials = view["trials"]
    assert len(trials) == 8 and all(t["state"] in ("COMPLETED", "FAILED") for t in trials)
    assert {t["node"] for t in trials} <= {"n1", "n2"}
    for t in trials:
        task = d.task(t["task_id"])
        assert task["state"] == t["state"] and t["duration_s"] is not None
        assert (t["config"]["k"] == 3) == (t["state"] == "FAILED")  # a failed trial does not stop it
    feasible = [t for t in trials if t["state"] == "COMPLETED" and t["metrics"]["margin"] >= 0]
    assert feasible, "the seed gives feasible trials"
    want = min(feasible, key=lambda t: t["metrics"]["loss"])
    best = view["best"]
    assert best["feasible"] and best["task_id"] == want["task_id"]
    assert best["config"]["x"] <= 0.5 and best["value"] == want["metrics"]["loss"]
    assert view["pareto_front"] is None
    status, listed = d.request("GET", "/v1/tunings")
    assert status == 200 and [t["id"] for t in listed["items"]] == [tid]
    status, tasks = d.request("GET", "/v1/tasks?limit=1000")
    assert len(tasks["items"]) == 8


def test_early_stopping_prunes_bad_trials(daemon_factory):
    d = daemon_factory(NODES)
    body = tuning(number_of_trials=5, worker_num=1, parallel_strategy="sync",
                  parameters=[{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
                  constraints=[], env={"STEPS": "6", "PAUSE": "0.15"},
                  early_stopping={"rule": "median", "grace_steps": 1, "min_trials": 1})
    view = wait_tuning(d, create(d, body))
    assert view["state"] == "COMPLETED", view
    pruned = [t for t in view["trials"] if t["state"] == "PRUNED"]
    assert pruned, view["trials"]
    for t in pruned:
        task = d.task(t["task_id"])
        assert (task["state"], task["reason"]) == ("CANCELLED", "EarlyStopped")
        earlier = [u for u in view["trials"] if u["task_id"] < t["task_id"]]
        # pruned only when worse than what ran before it
        assert abs(t["config"]["x"] - 0.8) > min(abs(u["config"]["x"] - 0.8) for u in earlier)
    assert view["best"]["task_id"] not in {t["task_id"] for t in pruned}


def test_delete_cancels_running_trials(daemon_factory, tmp_path):
    d = daemon_factory(NODES)
    tid = create(d, tuning(env={"GATE": str(tmp_path / "never")}, number_of_trials=6,
                           parameters=[{"name": "x", "type": "float", "low": 0.0, "high": 1.0}]))
    view = wait_tuning(d, tid, lambda v: v["trial_counts"].get("RUNNING", 0) == 2)
    status, view = d.request("DELETE", f"/v1/tunings/{tid}")
    assert status == 202 and (view["state"], view["reason"]) == ("CANCELLED", "CancelledByUser")
    view = wait_tuning(d, tid, lambda v: all(t["state"] == "CANCELLED" for t in v["trials"]), timeout=15)
    assert len(view["trials"]) == 2 and view["state"] == "CANCELLED"
    for t in view["trials"]:
        assert d.wait(t["task_id"])["reason"] == "CancelledByUser"


def test_invalid_tunings_are_refused(daemon_factory):
    d = daemon_factory(NODES)
    bad = tuning(parameters=[{"name": "xray", "type": "float", "low": 1.0, "high": 0.0}])
    status, body = d.request("POST", "/v1/tunings", bad)
    assert status == 422 and "xray" in str(body["detail"]), body
    status, body = d.request("POST", "/v1/tunings", tuning(trial={"command": ["true"], "trial_config": {}}))
    assert status == 422 and body["detail"][0]["field"] == "trial.trial_config", body
    status, body = d.request("POST", "/v1/tunings", tuning(trial={"command": ["true"], "workers": 0}))
    assert status == 422 and body["detail"][0]["field"] == "trial.workers", body
    status, body = d.request("POST", "/v1/tunings", tuning(trial={"command": ["true"], "cpu_milli": 64000}))
    assert status == 422 and body["error"] == "Unsatisfiable", body
    status, body = d.request("POST", "/v1/tasks", {"command": ["true"], "trial_config": {"x": 1}})
    assert status == 422 and body["detail"][0]["field"] == "trial_config", body
    status, body = d.request("GET", "/v1/tunings/99")
    assert status == 404
    assert d.request("GET", "/v1/tunings")[1]["items"] == []


def test_kill9_mid_tuning_finishes_with_every_trial(daemon_factory, tmp_path):
    d = daemon_factory(NODES)
    gate = tmp_path / "gate"
    tid = create(d, tuning(number_of_trials=6, env={"STEPS": "2", "PAUSE": "0.1", "GATE": str(gate)},
                           parameters=[{"name": "x", "type": "float", "low": 0.0, "high": 1.0}]))
    view = wait_tuning(d, tid, lambda v: v["trial_counts"].get("RUNNING", 0) == 2)
    running = [t["task_id"] for t in view["trials"]]
    d.stop(signal.SIGKILL)
    d.start()
    view = show(d, tid)
    assert view["state"] == "RUNNING" and [t["state"] for t in view["trials"]] == ["RUNNING"] * 2
    gate.touch()
    view = wait_tuning(d, tid)
    assert (view["state"], view["reason"]) == ("COMPLETED", "NumberOfTrials"), view
    assert len(view["trials"]) == 6 and all(t["state"] == "COMPLETED" for t in view["trials"])
    tasks = [d.task(t["task_id"]) for t in view["trials"]]
    assert [t["attempt_count"] for t in tasks] == [1] * 6, "the running trials were re-adopted"
    assert [t["task_id"] for t in view["trials"][:2]] == running
    assert view["best"]["feasible"] and view["best"]["config"]["x"] <= 0.5


def test_stop_reasons_and_pareto_front(daemon_factory, tmp_path):
    d = daemon_factory(NODES)
    failing = create(d, tuning(number_of_trials=10, trial={"command": ["false"], "cpu_milli": 500}))
    budget = create(d, tuning(time_budget_s=1.0, env={"GATE": str(tmp_path / "never")},
                              parameters=[{"name": "x", "type": "float", "low": 0.0, "high": 1.0}]))
    multi = create(d, tuning(number_of_trials=4, parallel_strategy="sync", constraints=[],
                             parameters=[{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
                             objectives=[{"metric": "loss", "sense": "minimize"},
                                         {"metric": "margin", "sense": "maximize"}]))
    view = wait_tuning(d, failing)
    assert (view["state"], view["reason"]) == ("FAILED", "AllTrialsFailed") and len(view["trials"]) < 10
    view = wait_tuning(d, budget, timeout=15)
    assert (view["state"], view["reason"]) == ("COMPLETED", "TimeBudget"), view
    assert view["trials"] and all(t["state"] == "CANCELLED" for t in view["trials"])
    assert {d.task(t["task_id"])["reason"] for t in view["trials"]} == {"TimeBudget"}
    view = wait_tuning(d, multi)
    assert (view["state"], view["reason"]) == ("COMPLETED", "NumberOfTrials"), view
    front = view["pareto_front"]
    assert front and {t["task_id"] for t in front} <= {t["task_id"] for t in view["trials"]}
    status, listed = d.request("GET", "/v1/tunings?state=FAILED")
    assert status == 200 and [t["id"] for t in listed["items"]] == [failing]


def test_quantize_example_is_accepted_as_is():
    from conftest import REPO

    from oaasd.tuning.trials import parse_description
    raw, desc, template = parse_description((REPO / "examples/quantize/tuning.json").read_bytes())
    assert desc.number_of_trials == 24 and raw["trial"]["cpu_milli"] == 1000
    assert (template.resources.cpu_milli, template.resources.memory_mb, template.time_limit_s) == (1000, 512, 120)
