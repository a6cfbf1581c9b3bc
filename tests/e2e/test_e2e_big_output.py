"""A task that prints a lot: the daemon stays responsive and small, resumes reading where it
stopped after a crash, and stores at most the configured number of metrics per attempt."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path

import psutil

MB = 1 << 20
LOCAL = '[[nodes]]\nname = "local"\ncpus = 2\nmemory_mb = 2000\n'
REPORTING = "[reporting]\nmax_protocol_line_bytes = 65536\nmax_metrics_per_attempt = {cap}\n"


class Sampler(threading.Thread):
    """GET /healthz in a loop (latencies) and the daemon's RSS, until stopped."""

    def __init__(self, port: int, pid: int):
        super().__init__(daemon=True)
        self.port, self.proc = port, psutil.Process(pid)
        self.latencies: list[float] = []
        self.peak_rss = 0
        self.halt = threading.Event()

    def run(self) -> None:
        rss = threading.Thread(target=self._rss, daemon=True)  # apart: a stalled loop must not hide the peak
        rss.start()
        while not self.halt.is_set():
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            conn.close()
            self.latencies.append(time.perf_counter() - t0)
            time.sleep(0.002)
        rss.join()

    def _rss(self) -> None:
        while not self.halt.is_set():
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            time.sleep(0.02)


def wait_file(path: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def flood(megabytes: int) -> str:
    """Shell that writes ``megabytes`` of two-byte log lines."""
    return f"yes | head -c {megabytes}M\n"


def test_200_mb_of_output_keep_the_api_fast_and_the_daemon_small(daemon_factory):
    d = daemon_factory(LOCAL + REPORTING.format(cap=1000))
    sampler = Sampler(d.port, d.proc.pid)
    baseline = psutil.Process(d.proc.pid).memory_info().rss
    script = ("echo 'OAAS_METRIC {\"step\": 1}'\n" + flood(100) + "printf 'OAAS_METRIC {\"x\": \"'\n"
              "head -c 3000000 /dev/zero | tr '\\0' x\necho '\"}'\n"  # a 3 MB line: log text, not a record
              "echo 'OAAS_METRIC {\"step\": 2}'\n" + flood(100) + "echo 'OAAS_RESULT {\"ok\": true}'\n")
    sampler.start()
    tid = d.submit({"script": script, "resources": {"cpus": 1}})
    view = d.wait(tid, timeout=120)
    sampler.halt.set()
    sampler.join()
    assert view["state"] == "COMPLETED" and view["result"] == {"ok": True}, view
    assert max(sampler.latencies) < 1.0, f"/healthz took {max(sampler.latencies):.2f} s while the task wrote"
    assert len(sampler.latencies) >= 10, "too few samples while the task wrote"
    grown = (sampler.peak_rss - baseline) / MB
    assert grown < 64, f"the daemon grew by {grown:.0f} MB reading a 200 MB log"
    assert [m.get("step") for m in view["metrics"]] == [1, 2], "the 3 MB line is log text"


def test_a_restart_mid_output_resumes_at_the_stored_offset(daemon_factory, tmp_path):
    """kill -9 after 150 MB were read: the restarted daemon reads on from the stored offset.
    The bytes before it are overwritten with metric lines while the daemon is down, so a
    daemon reading from byte 0 again would store them."""
    d = daemon_factory(LOCAL + REPORTING.format(cap=1000))
    gate = tmp_path / "gate"
    steps = "".join(f"echo 'OAAS_METRIC {{\"step\": {i}}}'\n" + flood(30) for i in range(1, 6))
    tid = d.submit({"script": steps + f"echo ready > {tmp_path / 'ready'}\n"
                    f"while [ ! -e {gate} ]; do sleep 0.05; done\n"
                    "echo 'OAAS_METRIC {\"step\": 6}'\necho 'OAAS_RESULT {\"ok\": true}'\n",
                    "resources": {"cpus": 1}})
    wait_file(tmp_path / "ready", timeout=60)
    log = d.state_dir / "attempts" / str(tid) / "1" / "stdout.log"
    size = log.stat().st_size
    deadline = time.time() + 30
    while d.task(tid)["attempts"][0]["stdout_read_bytes"] != size:
        assert time.time() < deadline, f"offset never stored: {d.task(tid)['attempts'][0]}"
        time.sleep(0.2)
    assert d.task(tid)["attempts"][0]["metrics_stored"] == 5
    d.stop(signal.SIGKILL)
    fake = b'OAAS_METRIC {"fake": 1}\n'
    with open(log, "r+b") as f:
        f.write(fake * (size // len(fake)))
    d.start()
    read_before = psutil.Process(d.proc.pid).io_counters().read_chars
    gate.touch()
    view = d.wait(tid, timeout=60)
    assert view["state"] == "COMPLETED" and view["attempt_count"] == 1, view
    assert [m.get("step") for m in view["metrics"]] == [1, 2, 3, 4, 5, 6], "metrics stored once, none re-read"
    read = psutil.Process(d.proc.pid).io_counters().read_chars - read_before
    assert read < size // 10, f"the restarted daemon read {read // MB} MB of a {size // MB} MB log"


def test_metrics_beyond_the_cap_are_counted_dropped_and_noted(daemon_factory):
    d = daemon_factory(LOCAL + REPORTING.format(cap=100))
    script = ("seq 1 5000 | sed 's/.*/OAAS_METRIC {\"step\": &}/'\n"
              "echo 'OAAS_RESULT {\"ok\": true}'\n")
    tid = d.submit({"script": script, "resources": {"cpus": 1}})
    view = d.wait(tid, timeout=60)
    assert view["state"] == "COMPLETED" and view["result"] == {"ok": True}, view
    assert [m["step"] for m in view["metrics"]] == list(range(1, 101))
    attempt = view["attempts"][0]
    assert attempt["metrics_stored"] == 100 and attempt["metrics_dropped"] == 4900, attempt
    assert any("4900 OAAS_METRIC lines dropped" in n and "max_metrics_per_attempt" in n for n in attempt["notes"])
