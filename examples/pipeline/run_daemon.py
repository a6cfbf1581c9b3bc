"""Run the pipeline adaptation loop in a real oaasd against a local load source.

Starts a daemon on a free loopback port (state in a temporary directory),
serves ``load.json`` over HTTP as a live load (one point per ``--step``
seconds, every ``--stride``-th point of the series), registers
``profile.json`` with an HTTP source, ``window_max`` over 3 intervals, 20 %
headroom and a dry-run ``kubectl scale`` command actuator (``echo``), lets
it adapt through the surge and back, prints the decisions the daemon
stored, then stops the pipeline and the daemon.

    .venv/bin/python examples/pipeline/run_daemon.py [--step 0.3] [--stride 3]

Needs nothing beyond oaasd itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


class LoadReplay:
    """An HTTP load source answering ``{"rps": ...}``: the series, one point per ``step`` seconds."""

    def __init__(self, series: list[float], step: float):
        self.series, self.step, self.t0 = series, step, time.monotonic()
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"rps": replay.now()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/load"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def index(self) -> int:
        """The point of the series being served now."""
        return min(int((time.monotonic() - self.t0) / self.step), len(self.series) - 1)

    def now(self) -> float:
        return self.series[self.index()]

    @property
    def over(self) -> bool:
        return self.index() == len(self.series) - 1


def call(port: int, method: str, path: str, body=None):
    """One request to the daemon; (status, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, None if body is None else json.dumps(body))
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def start_daemon(state: Path) -> tuple[subprocess.Popen, int]:
    """An oaasd on a free loopback port; returns once /healthz answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = state / "oaasd.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{state / "var"}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "oaasd", "serve", "--config", str(config)],
                            stdout=open(state / "daemon.log", "wb"), stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            if call(port, "GET", "/healthz")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"oaasd did not start; see {state / 'daemon.log'}")


def print_table(adaptations: list[dict], every: int) -> None:
    """One row per ``every`` adaptations (and every change), oldest first."""
    print(f"{'#':>4} {'obs':>6} {'pred':>6}  {'detect':>16} {'classify':>16} {'describe':>16} "
          f"{'lat_ms':>7} {'acc':>6} {'cores':>5}  applied")
    for i, a in enumerate(adaptations):
        if a["configuration"] is None or (i % every and not a["changed"]):
            continue
        stages = " ".join(f"{c['variant']:>9}/b{c['batch']:<2}x{c['replicas']:<2}" for c in a["configuration"])
        act = a["actuator"]["status"] if a["actuator"] else "-"
        print(f"{i:4d} {a['observed_rps']:6.1f} {a['predicted_rps']:6.1f}  {stages} {a['latency_ms']:7.1f} "
              f"{a['accuracy']:6.3f} {a['cost_cores']:5.0f}  {act}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=float, default=0.3, help="seconds per point of the load series (and interval)")
    ap.add_argument("--stride", type=int, default=3, help="serve every N-th point of load.json")
    ap.add_argument("--every", type=int, default=6, help="print every N-th adaptation (changes always)")
    args = ap.parse_args()
    series = json.loads((HERE / "load.json").read_text())["load_rps"][::args.stride]
    with tempfile.TemporaryDirectory(prefix="oaasd-pipeline-") as tmp:
        proc, port = start_daemon(Path(tmp))
        try:
            source = LoadReplay(series, args.step)
            status, view = call(port, "POST", "/v1/pipelines", {
                "pipeline": json.loads((HERE / "profile.json").read_text()),
                "source": {"kind": "http", "url": source.url, "field": "rps"},
                "interval_s": args.step, "predictor": {"kind": "window_max", "window": 3}, "headroom": 0.2,
                "actuator": {"kind": "command", "argv": ["echo", "kubectl", "scale", "deployment/{stage}",
                                                         "--replicas={replicas}"]}})
            assert status == 201, view
            print(f"pipeline {view['id']} registered; replaying {len(series)} points, {args.step} s each ...")
            while not source.over:
                time.sleep(args.step)
            status, view = call(port, "GET", f"/v1/pipelines/{view['id']}?limit=10000")
            adaptations = view["adaptations"][::-1]
            print_table(adaptations, args.every)
            changes = sum(a["changed"] for a in adaptations)
            print(f"\n{len(adaptations)} adaptations, {changes} configuration changes; last command output: "
                  f"{[s['output'].strip() for s in next(a for a in view['adaptations'] if a['actuator'])['actuator']['stages']]}")
            status, view = call(port, "DELETE", f"/v1/pipelines/{view['id']}")
            print(f"pipeline {view['id']}: {view['state']}")
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()
