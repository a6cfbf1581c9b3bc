"""Launchers by kind, built from the settings: ``local``, ``ssh`` and ``mpi``."""

from __future__ import annotations

import logging

from oaasd.config import NodeConfig, Settings
from oaasd.launchers.accounts import Accounts, closed_ancestor
from oaasd.launchers.binding import Enforcer, instance_of
from oaasd.launchers.local import LocalLauncher
from oaasd.launchers.mpi import MpiLauncher, MpiOptions
from oaasd.launchers.pool import NodeConn, SshOptions, SshPool
from oaasd.launchers.remote_binding import RemoteBinder
from oaasd.launchers.ssh import SshLauncher
from oaasd.ports import Launcher

log = logging.getLogger("oaasd")


def node_conn(node: NodeConfig, settings: Settings) -> NodeConn:
    """How the SSH pool reaches one configured node."""
    return NodeConn(host=node.host, port=node.port, user=node.user, key_path=node.key,
                    known_hosts=node.known_hosts or settings.ssh.known_hosts,
                    accept_unknown_hosts=settings.ssh.accept_unknown_hosts, work_root=node.work_root)


def reach_node(pool: SshPool, settings: Settings, node: NodeConfig) -> None:
    """Let the SSH pool reach a remote node (from config, store or API); local nodes need nothing."""
    if node.launcher != "local":
        pool.nodes[node.name] = node_conn(node, settings)


def build_launchers(settings: Settings, nodes: list[NodeConfig]) -> tuple[dict[str, Launcher], SshPool]:
    """One launcher per kind; ssh and mpi share one connection pool and one account map."""
    accounts = Accounts(settings.launch, lambda: settings.users)  # reads the users a reload put in place
    log.info("%s", accounts.startup_line())
    closed = closed_ancestor(settings.state_path / "attempts") if accounts.shared else None
    if closed is not None:
        log.warning("task accounts cannot traverse %s: their exit records and result files cannot be written "
                    "(give it o+x or move server.state_dir)", closed)
    s = settings.ssh
    options = SshOptions(connect_timeout_s=s.connect_timeout_s, keepalive_interval_s=s.keepalive_interval_s,
                         keepalive_count_max=s.keepalive_count_max, command_timeout_s=s.command_timeout_s,
                         lost_grace_s=s.lost_grace_s, work_root=s.work_root)
    pool = SshPool({n.name: node_conn(n, settings) for n in nodes if n.launcher != "local"}, options)
    b, instance = settings.binding, instance_of(settings.state_path)
    local = LocalLauncher(accounts, Enforcer(b.enforce, b.cgroup_parent, instance))
    binder = RemoteBinder(b.enforce, b.cgroup_parent, instance)
    mpi = MpiLauncher(pool, MpiOptions(mpirun=settings.mpi.mpirun, extra_args=tuple(settings.mpi.args),
                                     env=dict(settings.mpi.env)),
                      local=local, binder=binder)
    return {"local": local, "ssh": SshLauncher(pool, accounts=accounts, binder=binder), "mpi": mpi}, pool


def launcher_kind(node_kinds: list[str], workers: int) -> str:
    """Which launcher starts an attempt: mpirun for remote gangs, else the node's own."""
    remote = [k for k in node_kinds if k != "local"]
    if workers > 1 and remote:
        return "mpi"
    return "ssh" if node_kinds[0] in ("ssh", "mpi") else "local"
