"""OpenBox's task description through the real daemon: accepted, normalized, its conditions respected."""

from __future__ import annotations

import time

NODES = ('[[nodes]]\nname = "n1"\ncpus = 2\nmemory_mb = 2000\n'
         '[[nodes]]\nname = "n2"\ncpus = 2\nmemory_mb = 2000\n')
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}

# Reports OpenBox's objs.0 and constraints.0 (feasible when <= 0).
TRIAL = r'''
import json, os
c = json.loads(os.environ["OAAS_TRIAL_CONFIG"])
loss = (c["lr"] - 0.01) ** 2 + (c.get("alpha", 0.5) - 0.3) ** 2 + 0.01 * c.get("n", 0)
print("OAAS_RESULT " + json.dumps({"objs.0": loss, "constraints.0": c["lr"] - 0.05}), flush=True)
'''

OPENBOX = {
    "parameter": {
        "method": {"type": "cat", "choice": ["minmax", "smoothquant", "awq"], "default": "minmax"},
        "alpha": {"type": "float", "bound": [0.1, 0.9], "default": 0.5},
        "bits": {"type": "ord", "choice": [4, 8, 16], "default": 8},
        "n": {"type": "int", "bound": [1, 8]},
        "lr": {"type": "float", "bound": [1e-4, 1e-1], "log": True},
    },
    "condition": {
        "alpha_if_smoothquant": {"type": "equal", "parent": "method", "child": "alpha", "value": "smoothquant"},
        "n_if_wide": {"type": "in", "parent": "bits", "child": "n", "value": [8, 16]},
    },
    "number_of_trials": 10,
    "time_budget": 300,
    "task_type": "soc",
    "num_objectives": 1,
    "num_constraints": 1,
    "parallel_strategy": "async",
    "worker_num": 2,
    "use_history": False,
}


def active_as_conditioned(config: dict) -> bool:
    """Every parameter present exactly when its condition holds."""
    base = {"method", "bits", "lr"} <= config.keys()
    alpha_ok = ("alpha" in config) == (config.get("method") == "smoothquant")
    n_ok = ("n" in config) == (config.get("bits") in (8, 16))
    return base and alpha_ok and n_ok and config.keys() <= {"method", "alpha", "bits", "n", "lr"}


def wait_view(d, tuning_id: int, until, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, view = d.request("GET", f"/v1/tunings/{tuning_id}")
        assert status == 200, view
        if until(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"tuning {tuning_id} stuck: {view}")


def test_openbox_description_runs_on_the_daemon_and_respects_conditions(daemon_factory):
    d = daemon_factory(NODES)
    body = {**OPENBOX, "sampler": "random", "seed": 5,
            "trial": {"command": ["/usr/bin/python3", "-c", TRIAL], "cpu_milli": 1000, "memory_mb": 100,
                      "time_limit_s": 60}}
    status, view = d.request("POST", "/v1/tunings", body)
    assert status == 201, view
    desc = view["description"]
    assert "parameter" not in desc and [p["name"] for p in desc["parameters"]] == list(OPENBOX["parameter"])
    assert desc["objectives"] == [{"metric": "objs.0", "sense": "minimize"}]
    assert desc["constraints"] == [{"metric": "constraints.0", "op": "<=", "value": 0.0}]
    assert (desc["time_budget_s"], desc["worker_num"], desc["parallel_strategy"]) == (300.0, 2, "async")
    view = wait_view(d, view["id"], lambda v: v["state"] in FINAL)
    assert (view["state"], view["reason"]) == ("COMPLETED", "NumberOfTrials"), view
    trials = view["trials"]
    assert len(trials) == 10 and all(t["state"] == "COMPLETED" for t in trials), trials
    assert [t["number"] for t in sorted(trials, key=lambda t: t["trial_id"])] == list(range(10))
    bad = [t["config"] for t in trials if not active_as_conditioned(t["config"])]
    assert not bad, bad
    assert view["best"]["feasible"] and view["best"]["config"]["lr"] <= 0.05, view["best"]
    assert view["objectives"] == [{"metric": "objs.0", "sense": "minimize"}]


def test_gp_suggestions_to_a_worker_respect_conditions(daemon_factory):
    d = daemon_factory(NODES)
    status, view = d.request("POST", "/v1/tunings", {**OPENBOX, "number_of_trials": 14, "worker_num": 1})
    assert status == 201, view
    tid = view["id"]
    status, w = d.request("POST", f"/v1/tunings/{tid}/workers", {"name": "ob"})
    assert status == 201, w
    seen, handed, obs_numbers = [], [], []
    for _ in range(14):
        status, s = d.request("POST", f"/v1/tunings/{tid}/suggest", {"worker_id": w["worker_id"]})
        assert status == 200 and not s["done"], s
        c = s["config"]
        seen.append(c)
        handed.append(s)
        again = d.request("POST", f"/v1/tunings/{tid}/suggest", {"worker_id": w["worker_id"]})[1]
        assert (again["trial_id"], again["number"]) == (s["trial_id"], s["number"])  # the open trial, same number
        loss = (c["lr"] - 0.01) ** 2 + (c.get("alpha", 0.5) - 0.3) ** 2
        status, obs = d.request("POST", f"/v1/tunings/{tid}/observations", {
            "trial_id": s["trial_id"], "objectives": {"objs.0": loss}, "constraints": {"constraints.0": c["lr"] - 0.05}})
        assert status == 200, obs
        obs_numbers.append(obs["number"])
    assert [c for c in seen if not active_as_conditioned(c)] == []
    # both sides of each condition were suggested, so the check above saw active and inactive children
    assert {"alpha" in c for c in seen} == {True, False} and {"n" in c for c in seen} == {True, False}, seen
    view = wait_view(d, tid, lambda v: v["state"] in FINAL)
    assert view["state"] == "COMPLETED", view
    # per-tuning numbers: handed out 0..13, shown beside the global ids in creation order
    assert [s["number"] for s in handed] == list(range(14))
    assert [(t["trial_id"], t["number"]) for t in view["trials"]] == [(s["trial_id"], s["number"]) for s in handed]
    assert obs_numbers == list(range(14))
    assert view["best"]["number"] == next(t["number"] for t in view["trials"] if t["trial_id"] == view["best"]["trial_id"])


def test_malformed_openbox_descriptions_are_422_naming_the_field(daemon_factory):
    d = daemon_factory(NODES)
    own = {"optimizer": "SMBO", "task_id": "hp1", "max_runs": 5,
           "parameters": {"x1": {"type": "float", "bound": [-5, 10], "default": 0},
                          "x2": {"type": "float", "bound": [0, 15]}}}
    status, view = d.request("POST", "/v1/tunings", own)  # OpenBox's own task config, as it writes it
    assert status == 201 and view["name"] == "hp1" and view["number_of_trials"] == 5, view
    assert [p["name"] for p in view["description"]["parameters"]] == ["x1", "x2"]
    status, answer = d.request("POST", "/v1/tunings", {**own, "parameters": {"x1": {"type": "float", "bound": [1, 0]}}})
    assert status == 422 and answer["detail"][0]["field"] == "parameters.x1.bound", answer
    d.request("DELETE", f"/v1/tunings/{view['id']}")
    cases = [
        ({**OPENBOX, "parameter": {**OPENBOX["parameter"], "lr": {"type": "float", "bound": [0.1, 0.01]}}},
         "parameter.lr.bound"),
        ({**OPENBOX, "parameter": {**OPENBOX["parameter"], "bits": {"type": "ord", "choice": [4, 4]}}},
         "parameter.bits.choice"),
        ({**OPENBOX, "condition": {"x": {"type": "equal", "parent": "method", "child": "alpha", "value": "gptq"}}},
         "condition.x.value"),
        ({**OPENBOX, "condition": {"x": {"type": "same", "parent": "method", "child": "alpha", "value": "awq"}}},
         "condition.x.type"),
        ({**OPENBOX, "task_type": "moc"}, "task_type"),
        ({**OPENBOX, "time_budget": -1}, "time_budget"),
    ]
    for body, field in cases:
        status, answer = d.request("POST", "/v1/tunings", body)
        assert status == 422, (field, answer)
        assert field in [e["field"] for e in answer["detail"]], (field, answer)
    native = {"parameters": [{"name": "lr", "type": "float", "low": 0.1, "high": 0.01}],
              "objectives": [{"metric": "loss"}]}
    status, answer = d.request("POST", "/v1/tunings", native)
    assert status == 422 and answer["error"] == d.request("POST", "/v1/tunings", cases[0][0])[1]["error"]
    assert [t["id"] for t in d.request("GET", "/v1/tunings")[1]["items"]] == [view["id"]]  # no other was made
