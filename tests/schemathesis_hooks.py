"""Schemathesis hooks for tests/test_schemathesis.py (loaded through ``SCHEMATHESIS_HOOKS``).

Fuzzed requests must never make the daemon reach past this machine: a node's
``host`` (SSH connections, health probes), a task's ``callback_url`` (POSTed
when the task ends) and a pipeline source's ``url`` (polled for the load)
are pointed at loopback, wherever they appear in a body. ``follow`` is dropped from log reads: a followed log answers
only when its attempt ends, which a fuzzed task may never reach.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# Port 9 (discard): nothing listens there.
LOOPBACK = {"host": "127.0.0.1", "callback_url": "http://127.0.0.1:9/", "url": "http://127.0.0.1:9/"}


def confine(value: Any) -> Any:
    """``value`` with every string ``host``, ``callback_url`` and ``url`` replaced by a loopback one."""
    if isinstance(value, dict):
        return {k: LOOPBACK[k] if k in LOOPBACK and isinstance(v, str) else confine(v) for k, v in value.items()}
    if isinstance(value, list):
        return [confine(v) for v in value]
    return value


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    """Confine the body; never follow a log."""
    if isinstance(case.body, (dict, list)):
        case.body = confine(case.body)
    if case.query and case.operation.path.endswith("/logs"):
        case.query.pop("follow", None)
