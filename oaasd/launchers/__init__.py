"""Launchers by kind, built from the settings: ``local``, ``ssh``, ``mpi`` and ``slurm``."""

from __future__ import annotations

import logging
from typing import Any, Callable

from oaasd.config import NodeConfig, Settings
from oaasd.launchers.accounts import Accounts, closed_ancestor
from oaasd.launchers.binding import Enforcer, instance_of
from oaasd.launchers.local import LocalLauncher
from oaasd.launchers.mpi import MpiLauncher, MpiOptions
from oaasd.launchers.pool import NodeConn, SshOptions, SshPool
from oaasd.launchers.remote_binding import RemoteBinder
from oaasd.launchers.slurm import SlurmLauncher, SlurmOptions
from oaasd.launchers.ssh import SshLauncher
from oaasd.ports import Launcher, Prober

SSH_KINDS = ("ssh", "mpi")  # the kinds the SSH pool reaches

log = logging.getLogger("oaasd")


def node_conn(node: NodeConfig, settings: Settings) -> NodeConn:
    """How the SSH pool reaches one configured node."""
    return NodeConn(host=node.host, port=node.port, user=node.user, key_path=node.key,
                    known_hosts=node.known_hosts or settings.ssh.known_hosts,
                    accept_unknown_hosts=settings.ssh.accept_unknown_hosts, work_root=node.work_root)


def reach_node(pool: SshPool, settings: Settings, node: NodeConfig) -> None:
    """Let the SSH pool reach a remote node (from config, store or API); local nodes need nothing."""
    if node.launcher in SSH_KINDS:
        pool.nodes[node.name] = node_conn(node, settings)


def build_launchers(settings: Settings, nodes: list[NodeConfig],
                    node_config: Callable[[str], NodeConfig] | None = None) -> tuple[dict[str, Launcher], SshPool]:
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
    pool = SshPool({n.name: node_conn(n, settings) for n in nodes if n.launcher in SSH_KINDS}, options)
    b, instance = settings.binding, instance_of(settings.state_path)
    local = LocalLauncher(accounts, Enforcer(b.enforce, b.cgroup_parent, instance))
    binder = RemoteBinder(b.enforce, b.cgroup_parent, instance)
    mpi = MpiLauncher(pool, MpiOptions(mpirun=settings.mpi.mpirun, extra_args=tuple(settings.mpi.args),
                                     env=dict(settings.mpi.env)),
                      local=local, binder=binder)
    sc = settings.slurm
    by_name = {n.name: n for n in nodes}
    slurm = SlurmLauncher(SlurmOptions(bin_dir=sc.bin_dir, slurm_conf=sc.slurm_conf, poll_interval_s=sc.poll_interval_s,
                                       command_timeout_s=sc.command_timeout_s),
                          node_config or by_name.__getitem__, accounts)
    return {"local": local, "ssh": SshLauncher(pool, accounts=accounts, binder=binder), "mpi": mpi, "slurm": slurm}, pool


def launcher_kind(node_kinds: list[str], workers: int) -> str:
    """Which launcher starts an attempt: mpirun for remote gangs, else the node's own."""
    if node_kinds[0] == "slurm":
        return "slurm"  # a node standing for a partition: Slurm places the ranks, srun runs them
    remote = [k for k in node_kinds if k != "local"]
    if workers > 1 and remote:
        return "mpi"
    return "ssh" if node_kinds[0] in ("ssh", "mpi") else "local"


class ProbeByKind:
    """The health loop's prober: each remote node is probed by its own kind's launcher."""

    def __init__(self, kind_of: Callable[[str], str], probers: dict[str, Prober]):
        self.kind_of = kind_of
        self.probers = probers

    async def probe(self, node: str) -> dict[str, Any]:
        """Probe ``node`` through its launcher (ssh and mpi nodes over SSH, slurm nodes with sinfo)."""
        return await self.probers[self.kind_of(node)].probe(node)
