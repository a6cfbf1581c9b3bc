"""Starvation of a wide task, through the real daemon: overtaken under ``fifo``, not under ``backfill``.

A 2-core local node runs two 1-cpu tasks with time limits (one ends after
2 s, the other after 5 s); a 2-cpu task is submitted next, then six 1-cpu
tasks. Under ``fifo`` the first freed core goes to a small task, so the wide
one is overtaken. Under ``backfill`` the wide task holds a reservation from
the running tasks' limits; the small ones (whose limits would end after it)
wait with reason ``Reservation`` and the wide task starts before every one
of them. A SIGHUP that switches ``fifo`` to ``backfill`` changes the outcome.
"""

from __future__ import annotations

import signal
import time

import pytest

NODE = '[[nodes]]\nname = "local"\ncpus = 2\nmemory_mb = 2000\n'
RESULT = "echo 'OAAS_RESULT {\"ok\": true}'"


def sleeper(seconds: float, cpus: int = 1, limit: float = 30) -> dict:
    return {"script": f"sleep {seconds}\n{RESULT}\n", "resources": {"cpus": cpus}, "time_limit_s": limit}


def poll(check, what: str, timeout: float = 20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def starts_of(d, ids: list[int]) -> dict[int, float]:
    """Each finished task's attempt start (all COMPLETED)."""
    out = {}
    for tid in ids:
        view = d.wait(tid, timeout=60)
        assert view["state"] == "COMPLETED", view
        out[tid] = view["attempts"][0]["started_at"]
    return out


def scenario(d) -> tuple[int, list[int], list[str]]:
    """Run the mix; (wide id, small ids, pending reasons seen on the small ones while the wide one waited)."""
    first = d.submit(sleeper(2))
    second = d.submit(sleeper(5))
    for tid in (first, second):
        d.wait(tid, {"RUNNING"})
    wide = d.submit(sleeper(1, cpus=2))
    small = [d.submit(sleeper(1, limit=60)) for _ in range(6)]
    d.wait(first)  # one core is free now; the wide task still needs the other
    reasons = [d.task(t)["reason"] for t in small if d.task(t)["state"] == "PENDING"]
    starts_of(d, [first, second])
    return wide, small, reasons


@pytest.mark.parametrize("policy", ["fifo", "backfill", "fifo then SIGHUP backfill"])
def test_wide_task_starts_first_only_under_backfill(policy, daemon_factory):
    d = daemon_factory(f'[scheduler]\npolicy = "{policy.split()[0]}"\n' + NODE)
    if policy.endswith("backfill") and policy != "backfill":
        d.write_config('[scheduler]\npolicy = "backfill"\n' + NODE)
        d.proc.send_signal(signal.SIGHUP)
        poll(lambda: "reload: scheduler, users and limits reloaded" in d.log(), "the reload")
    wide, small, reasons = scenario(d)
    starts = starts_of(d, [wide, *small])
    before = [t for t in small if starts[t] < starts[wide]]
    if policy == "fifo":
        assert before, f"under fifo a small task overtakes the wide one: {starts}"
    else:
        assert before == [], f"a small task started before the wide one: {starts}"
        assert reasons and set(reasons) == {"Reservation"}, reasons
