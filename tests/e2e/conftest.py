"""The end-to-end tier: the paths users take across the parts.

Each test here runs the real daemon (``daemon_factory``, a subprocess on
loopback with its own state dir) against real nodes: local processes, real
OpenSSH sshds on 127.0.0.x (``ssh_nodes``), real ``mpirun``. A test walks one
user path from submission to result (and through restarts, tunings, cancels),
asserting what the user sees: HTTP codes and bodies, states, files, processes
left behind. Test files are named ``test_e2e_*.py`` (pytest imports them by
basename beside the unit tier's files).
"""

from __future__ import annotations

from realnodes import node_toml, ssh_nodes, wait_node_state  # noqa: F401  (fixture and helpers)
