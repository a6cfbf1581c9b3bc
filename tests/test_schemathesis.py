"""Schemathesis against the live daemon: no 5xx, and every answer matches /v1/openapi.json.

Phases: the document's examples, coverage (boundary and wrong values of
every field and parameter), fuzzing and stateful (following the document's
links from a created object to its routes). The daemon runs with an empty
``PATH``, so the fuzzed tasks it accepts fail to start their program instead
of running random commands; the hooks file keeps every host and URL on
loopback. The Server-Sent Events routes are not fuzzed: their answers never
end (``tests/test_openapi.py`` still checks they are documented).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HOOKS = Path(__file__).resolve().parent / "schemathesis_hooks.py"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
NOT_FUZZED = r"/events$"
EXAMPLES = 4  # fuzzed cases per operation (coverage adds its boundary cases): about a minute on 2 cores


def schemathesis_argv(url: str) -> list[str]:
    """The schemathesis CLI run against ``url``: bounded, seeded, one worker.

    One worker, not one per core: with two worker threads, CPython 3.11.7's
    ``ast.parse`` (which hypothesis calls to describe lambdas) now and then
    raised ``SystemError: AST constructor recursion depth mismatch`` inside
    schemathesis (a CPython race fixed in later 3.11 releases), failing the
    test for no fault of the daemon's."""
    return [sys.executable, "-m", "schemathesis.cli", "run", url, "--checks", CHECKS,
            "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(EXAMPLES), "--seed", "6",
            "--workers", "1", "--request-timeout", "20", "--exclude-path-regex", NOT_FUZZED,
            "--suppress-health-check", "all"]


def test_api_matches_its_document(daemon_factory, tmp_path):
    no_programs = tmp_path / "empty-path"  # fuzzed tasks find no program to run (tasks get launch.path)
    no_programs.mkdir()
    d = daemon_factory(f'[launch]\npath = "{no_programs}"\n')
    url = f"http://127.0.0.1:{d.port}/v1/openapi.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1", "COLUMNS": "160"}
    run = subprocess.run(schemathesis_argv(url), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    report = run.stdout[-20000:] + run.stderr[-4000:]
    assert run.returncode == 0, report
    assert "unhandled error" not in d.log(), d.log()[-4000:]
    status, health = d.request("GET", "/healthz")
    assert status == 200 and health["status"] == "ok"
