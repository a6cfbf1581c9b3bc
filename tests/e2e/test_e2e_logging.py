"""The daemon's log on a real cluster: oaasd's own lines, not every SSH channel of its health probes."""

from __future__ import annotations

import re
import time

from realnodes import node_toml, ssh_nodes, wait_node_state  # noqa: F401  (fixture)

THIRD_PARTY_INFO = re.compile(r" INFO (asyncssh|aiohttp|aiosqlite)[.:]")


def run_a_while(daemon_factory, ssh_nodes, server_extra: str = "") -> str:
    """A daemon probing one ssh node every 0.5 s and running one task on it; return its log."""
    cluster = ssh_nodes(1)
    d = daemon_factory(start=False)
    d.server_extra = server_extra
    d.config_body = node_toml(cluster)
    d.start()
    wait_node_state(d, cluster.nodes[0].name, "IDLE")
    task = d.submit({"name": "hello", "command": ["/bin/echo", "hi"], "require_result": False})
    assert d.wait(task)["state"] == "COMPLETED"
    time.sleep(2.0)  # four more health probes
    assert d.stop() == 0
    return d.log()


def test_third_party_loggers_stay_at_warning(daemon_factory, ssh_nodes):
    log = run_a_while(daemon_factory, ssh_nodes)
    noisy = [line for line in log.splitlines() if THIRD_PARTY_INFO.search(line)]
    assert noisy == [], f"{len(noisy)} third-party INFO lines, first: {noisy[:3]}"
    assert "RUNNING -> COMPLETED" in log  # oaasd's own INFO lines are still there


def test_log_levels_turn_one_logger_up(daemon_factory, ssh_nodes):
    log = run_a_while(daemon_factory, ssh_nodes, 'log_levels = { asyncssh = "info", "oaasd.api" = "debug" }\n')
    assert any(" INFO asyncssh" in line for line in log.splitlines())
    assert "RUNNING -> COMPLETED" in log
