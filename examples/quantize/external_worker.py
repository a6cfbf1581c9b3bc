"""Drive the quantization tuning through the daemon's external-worker routes.

Creates the tuning of ``tuning.json`` without its trial template (so the
daemon runs nothing itself), registers ``--workers`` workers and runs each
one's loop in a thread: ask ``/suggest``, run ``trial.py`` with the
configuration, send the result to ``/observations``; until the daemon
answers ``done``. Prints every trial and the best configuration.

    .venv/bin/python -m oaasd serve &          # in another terminal
    .venv/bin/python examples/quantize/external_worker.py --trials 8 --workers 2
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from run_local import run_trial  # the same trial runner as the daemon-less driver

HERE = Path(__file__).resolve().parent


class Api:
    """JSON over HTTP to one daemon (stdlib only)."""

    def __init__(self, url: str, token: str | None):
        self.url, self.token = url.rstrip("/"), token

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request; raises with the daemon's error body on a 4xx/5xx."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{method} {path}: {exc.code} {exc.read().decode()}") from None


def work(api: Api, tuning_id: int, name: str) -> int:
    """One worker's loop; returns how many trials it evaluated."""
    worker = api.call("POST", f"/v1/tunings/{tuning_id}/workers", {"name": name})["worker_id"]
    count = 0
    while not (s := api.call("POST", f"/v1/tunings/{tuning_id}/suggest", {"worker_id": worker}))["done"]:
        if s["trial_id"] is None:
            time.sleep(s["retry_after_s"])
            continue
        started = time.time()
        state, metrics = run_trial(s["config"])
        body = {"trial_id": s["trial_id"], "state": "SUCCEEDED" if state == "COMPLETED" else "FAILED",
                "elapsed_s": time.time() - started}
        if metrics:
            body |= {"objectives": {"latency_ms": metrics["latency_ms"]},
                     "constraints": {"accuracy": metrics["accuracy"]}}
        view = api.call("POST", f"/v1/tunings/{tuning_id}/observations", body)
        print(f"{name} trial {view['trial_id']:3d} {view['state']:9s} {json.dumps(view['metrics'])} "
              f"{json.dumps(view['config'])}", flush=True)
        count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8750")
    ap.add_argument("--token", default=None, help="bearer token when the daemon has [[users]]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trials", type=int, default=None, help="override number_of_trials")
    args = ap.parse_args()
    desc = json.loads((HERE / "tuning.json").read_text())
    del desc["trial"]  # no template: the workers below run the trials
    desc["worker_num"] = args.workers
    if args.trials:
        desc["number_of_trials"] = args.trials
    api = Api(args.url, args.token)
    tuning_id = api.call("POST", "/v1/tunings", desc)["id"]
    print(f"tuning {tuning_id}: {args.workers} workers", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        counts = list(pool.map(lambda i: work(api, tuning_id, f"w{i}"), range(args.workers)))
    view = api.call("GET", f"/v1/tunings/{tuning_id}")
    print(f"\n{view['state']} ({view['reason']}) after {sum(counts)} trials; accuracy bound {view['thresholds']}")
    print("best:", json.dumps(view["best"]))


if __name__ == "__main__":
    main()
