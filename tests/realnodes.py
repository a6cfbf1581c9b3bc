"""Real OpenSSH nodes for tests: one private sshd per fake node on loopback.

Each node is an sshd listening on its own loopback address (127.0.0.2,
127.0.0.3, ...) and one shared high port, with its own ed25519 host key, a
shared user key and a shared ``known_hosts`` file. Logins go to the plain
test user ``oaastest`` (created on first use), whose processes started
through a node carry the marker ``OAAS_TEST_NODE=<marker>`` (sshd's
``SetEnv``): that is how ``kill()`` finds the processes of one node although
every node shares one kernel and one user, and how an MPI rank can tell on
which node it runs.

Import the ``ssh_nodes`` fixture into a test module (``from realnodes import
ssh_nodes``); it is a factory: ``cluster = ssh_nodes(2)``. Everything is
killed and removed at teardown.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

SSHD = "/usr/sbin/sshd"
TEST_USER = "oaastest"
FIRST_HOST = 2  # 127.0.0.1 stays free for whatever else runs on loopback
# Tasks start from a clean environment; the node marker is passed through so that
# kill() and leftovers() still find what a node started.
PASS_ENV = ["OAAS_TEST_NODE"]


def missing_components() -> str | None:
    """Return why real-node tests cannot run here, or None when they can."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server openssh-client)"
    if not shutil.which("mpirun"):
        return "mpirun is missing (apt-get install openmpi-bin)"
    return None


def ensure_test_user(name: str = TEST_USER) -> pwd.struct_passwd:
    """Create the unlocked login user the nodes accept, if it is missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], capture_output=True)
        entry = pwd.getpwnam(name)  # raises if a concurrent useradd failed too
    # useradd leaves '!' in the shadow entry; sshd with UsePAM no refuses it silently.
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    return entry


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)


def _common_free_port(addresses: list[str]) -> int:
    """Return one port that is free on every address (mpirun's ssh takes one -p)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        if port < 20000:
            continue
        try:
            for addr in addresses:
                with socket.socket() as s:
                    s.bind((addr, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port on the loopback addresses")


def _test_user_procs(marker: str | None = None, uid: int | None = None) -> list[psutil.Process]:
    """Live (non-zombie) processes of the test user, optionally of one node's marker."""
    uid = pwd.getpwnam(TEST_USER).pw_uid if uid is None else uid
    found = []
    for proc in psutil.process_iter(["uids", "status"]):
        try:
            if proc.info["uids"].real != uid or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if marker is not None and f"OAAS_TEST_NODE={marker}" not in _environ(proc.pid):
                continue
            found.append(proc)
        except (psutil.Error, TypeError):
            continue
    return found


def _environ(pid: int) -> set[str]:
    try:
        return set(Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0"))
    except OSError:
        return set()


def environ_has(pid: int, entry: str) -> bool:
    """True when process ``pid`` started with ``entry`` (``NAME=value``) in its environment."""
    return entry in _environ(pid)


@dataclass
class RealNode:
    """One fake node: an sshd on ``host:port`` and the processes it started."""

    name: str
    host: str
    port: int
    user: str
    key_path: Path
    known_hosts: Path
    dir: Path
    marker: str
    host_key_pub: str
    work_root: str
    proc: subprocess.Popen | None = None
    frozen: list[int] = field(default_factory=list)

    def conn(self, **overrides):
        """Return the launcher's NodeConn for this node (overrides win)."""
        from oaasd.launchers.pool import NodeConn

        fields = dict(host=self.host, port=self.port, user=self.user, key_path=str(self.key_path),
                      known_hosts=str(self.known_hosts), accept_unknown_hosts=False,
                      work_root=self.work_root)
        fields.update(overrides)
        return NodeConn(**fields)

    def sshd_tree(self) -> list[psutil.Process]:
        """The master sshd and every per-connection sshd and session below it."""
        if self.proc is None:
            return []
        try:
            master = psutil.Process(self.proc.pid)
            return [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def user_procs(self) -> list[psutil.Process]:
        """Live processes of the test user started through this node."""
        return _test_user_procs(self.marker)

    def leftovers(self) -> list[str]:
        """``pid name`` of live processes this node started, sshd's own excluded."""
        out = []
        for proc in self.user_procs():
            try:
                if proc.name() != "sshd":
                    out.append(f"{proc.pid} {' '.join(proc.cmdline())[:80]}")
            except psutil.Error:
                pass
        return out

    def drop_connections(self) -> None:
        """SIGKILL the per-connection sshd processes: every open connection drops,
        the listener and the tasks stay (a network blip, not a crash)."""
        for proc in self.sshd_tree()[1:]:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:  # died with its privsep parent
                pass

    def freeze(self, tasks: bool = False) -> None:
        """SIGSTOP the node's sshd processes (and with ``tasks`` everything it
        started): a hung or cut-off node whose TCP connections stay open."""
        for proc in self.sshd_tree() + (self.user_procs() if tasks else []):
            try:
                proc.send_signal(signal.SIGSTOP)
                self.frozen.append(proc.pid)
            except psutil.NoSuchProcess:
                pass

    def thaw(self) -> None:
        """Undo ``freeze``."""
        for pid in self.frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen.clear()

    def kill(self) -> None:
        """Crash the node: SIGKILL its sshd (all of it) and every process it started."""
        victims = self.sshd_tree() + self.user_procs()
        for proc in victims:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        if self.proc is not None:
            self.proc.wait()
        # A second sweep catches anything forked while the first was running.
        for proc in self.user_procs():
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.frozen.clear()


@dataclass
class RealCluster:
    """Nodes sharing one port, one user key and one known_hosts file."""

    nodes: list[RealNode]
    dir: Path
    port: int
    key_path: Path
    known_hosts: Path

    def node_conns(self, **overrides) -> dict:
        """``{name: NodeConn}`` for the launchers."""
        return {n.name: n.conn(**overrides) for n in self.nodes}

    def mpi_args(self) -> list[str]:
        """mpirun options reaching these nodes through their sshd as the test user."""
        rsh = (f"-p {self.port} -i {self.key_path} -l {TEST_USER} -o StrictHostKeyChecking=no "
               f"-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR")
        return ["--mca", "plm_rsh_agent", "ssh", "--mca", "plm_rsh_args", rsh,
                "--mca", "btl", "tcp,self", "--bind-to", "none", "--oversubscribe"]

    def stop(self) -> None:
        """Kill every node and remove the cluster's files."""
        for node in self.nodes:
            node.thaw()
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        for root in {os.path.dirname(node.work_root) for node in self.nodes}:
            shutil.rmtree(root, ignore_errors=True)


def _sshd_config(node_dir: Path, host: str, port: int, marker: str, authorized: Path) -> Path:
    config = node_dir / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", f"ListenAddress {host}", f"HostKey {node_dir / 'host_ed25519'}",
        f"PidFile {node_dir / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
        f"AllowUsers {TEST_USER}", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "StrictModes no",
        "MaxStartups 200:30:400", "MaxSessions 200", "UseDNS no", "LogLevel ERROR",
        "PrintMotd no", "Subsystem sftp internal-sftp", f"SetEnv OAAS_TEST_NODE={marker}", "",
    ]))
    return config


def _wait_listening(host: str, port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd on {host}:{port} exited: {log.read_text()[-500:]}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"sshd on {host}:{port} never listened")


def start_cluster(n: int, first_host: int = FIRST_HOST) -> RealCluster:
    """Start ``n`` real sshd nodes named node1..nodeN on 127.0.0.<first_host+i>."""
    user = ensure_test_user()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="oaas-realnodes-"))
    os.chmod(root, 0o755)
    token = secrets.token_hex(4)
    key_path = root / "user_ed25519"
    _keygen(key_path, "oaas-test-user")
    authorized = root / "authorized_keys"
    authorized.write_text(Path(str(key_path) + ".pub").read_text())
    os.chmod(authorized, 0o644)
    addresses = [f"127.0.0.{first_host + i}" for i in range(n)]
    cluster = RealCluster([], root, 0, key_path, root / "known_hosts")
    for attempt in range(3):  # another process may grab the port between probe and bind
        cluster.port = _common_free_port(addresses)
        try:
            for i, addr in enumerate(addresses):
                cluster.nodes.append(_start_node(root, i + 1, addr, cluster.port, token, key_path,
                                                 cluster.known_hosts, authorized, user))
            break
        except RuntimeError:
            for node in cluster.nodes:
                node.kill()
            cluster.nodes = []
            if attempt == 2:
                shutil.rmtree(root, ignore_errors=True)
                raise
    cluster.known_hosts.write_text("".join(f"[{nd.host}]:{nd.port} {nd.host_key_pub}\n" for nd in cluster.nodes))
    return cluster


def _start_node(root: Path, index: int, host: str, port: int, token: str, key_path: Path,
                known_hosts: Path, authorized: Path, user: pwd.struct_passwd) -> RealNode:
    name = f"node{index}"
    node_dir = root / name
    node_dir.mkdir(exist_ok=True)
    host_key = node_dir / "host_ed25519"
    if not host_key.exists():
        _keygen(host_key, name)
    pub = Path(str(host_key) + ".pub").read_text().split()
    marker = f"{token}-{name}"
    work_root = f"/tmp/oaas-rn-{token}/{name}"
    config = _sshd_config(node_dir, host, port, marker, authorized)
    log = node_dir / "sshd.log"
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"sshd -t rejected {config}: {check.stderr}")
    proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(log)],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    node = RealNode(name, host, port, user.pw_name, key_path, known_hosts, node_dir, marker,
                    f"{pub[0]} {pub[1]}", work_root, proc)
    try:
        _wait_listening(host, port, proc, log)
    except RuntimeError:
        node.kill()
        raise
    return node


@pytest.fixture
def ssh_nodes():
    """Factory fixture: ``ssh_nodes(n)`` starts a RealCluster, stopped at teardown."""
    reason = missing_components()
    if reason:
        pytest.skip(reason)
    clusters: list[RealCluster] = []

    def make(n: int = 1) -> RealCluster:
        cluster = start_cluster(n, first_host=FIRST_HOST + sum(len(c.nodes) for c in clusters))
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


def node_toml(cluster, launcher: str = "ssh", cpus: int = 2, extra: str = "", launch: str = "") -> str:
    out = []
    for n in cluster.nodes:
        out.append(f'[[nodes]]\nname = "{n.name}"\nlauncher = "{launcher}"\nhost = "{n.host}"\nport = {n.port}\n'
                   f'user = "{n.user}"\nkey = "{n.key_path}"\nknown_hosts = "{n.known_hosts}"\n'
                   f'work_root = "{n.work_root}"\ncpus = {cpus}\nmemory_mb = 2000\n')
    mpi_args = json.dumps(cluster.mpi_args())
    return ("[ssh]\nkeepalive_interval_s = 1.0\nkeepalive_count_max = 2\nconnect_timeout_s = 3.0\n"
            "lost_grace_s = 2.0\n[health]\ninterval_s = 0.5\ntimeout_s = 3.0\n"
            f"[mpi]\nargs = {mpi_args}\nenv = {{ PMIX_MCA_gds = \"hash\" }}\n"
            f"[launch]\npass_env = {json.dumps(PASS_ENV)}\n{launch}" + extra + "".join(out))


def wait_node_state(d, name: str, state: str, timeout: float = 20) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, view = d.request("GET", f"/v1/nodes/{name}")
        if view["state"] == state:
            return view
        time.sleep(0.1)
    raise AssertionError(f"node {name} stayed {view['state']}: {view}")


def node_accounts(**launch):
    """The account map of launchers built directly by tests: clean env, the node marker passed."""
    from oaasd.config import LaunchConfig
    from oaasd.launchers.accounts import Accounts

    return Accounts(LaunchConfig(pass_env=PASS_ENV, **launch))
