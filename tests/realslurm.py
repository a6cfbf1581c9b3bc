"""A real one-node Slurm for tests: private munged, slurmctld and slurmd on loopback.

Everything is the test's own: a temp directory with a ``slurm.conf`` (own
ports, own ``ClusterName``, state, spool, pid and log files), a munge key and
a munged on its own socket (``AuthInfo=socket=...``), so nothing touches
``/etc/slurm``, ``/etc/munge`` or another Slurm on the machine. The daemons
run in the foreground as children of the test process (``-D`` / ``-F``), so
stopping them is a signal to a pid we hold and a ``wait``.

Every process of this Slurm carries ``OAAS_TEST_SLURM=<token>`` in its
environment (the daemons get it, slurmstepd inherits it from slurmd) and job
processes carry ``SLURM_CLUSTER_NAME=<cluster>``: teardown kills both kinds,
so no daemon, step or job outlives the fixture on any exit path (a failed
start included; ``atexit`` covers an interrupted session).

Import the ``real_slurm`` fixture into a test module (``from realslurm import
real_slurm``); it is module-scoped (one Slurm per module, ~3 s to start).
``slurm_toml(slurm)`` gives the oaasd config of one node standing for its
partition. The fixture skips only when the binaries are missing.
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

SBIN = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd", "munged": "/usr/sbin/munged"}
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
MUNGE_USER = "munge"
PARTITION = "debug"
REAL_MEMORY_MB = 4000


def missing_slurm() -> str | None:
    """Why a real Slurm cannot run here (binaries missing), or None when it can."""
    missing = [p for p in SBIN.values() if not os.path.exists(p)]
    missing += [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        return (f"missing {', '.join(missing)} (DEBIAN_FRONTEND=noninteractive apt-get install -y "
                "--no-install-recommends slurm-wlm munge)")
    try:
        pwd.getpwnam(MUNGE_USER)
    except KeyError:
        return f"no {MUNGE_USER!r} account (the munge package creates it)"
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            if s.getsockname()[1] >= 20000:
                ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _marked(entries: set[bytes]) -> list[psutil.Process]:
    """Processes whose environment holds any of ``entries`` (``NAME=value`` bytes)."""
    out = []
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if env & entries:
            out.append(proc)
    return out


@dataclass
class RealSlurm:
    """One running private Slurm."""

    root: Path
    token: str
    cluster: str
    ctld_port: int
    slurmd_port: int
    nodename: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    partition: str = PARTITION
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client command of this Slurm."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this Slurm."""
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=self.env,
                              check=check)

    # ---- daemons ----------------------------------------------------
    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> None:
        log = open(self.root / f"{name}.out", "ab")
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "SLURM_CONF": str(self.conf), "OAAS_TEST_SLURM": self.token}
        kwargs = {}
        if user is not None:
            entry = pwd.getpwnam(user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        try:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                                start_new_session=True, cwd=self.root, **kwargs)
        finally:
            log.close()

    def _log_tail(self, name: str) -> str:
        out = []
        for f in (self.root / f"{name}.out", self.root / f"{name}.log"):
            if f.exists():
                out.append(f.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def start_munge(self) -> None:
        mdir = self.root / "munge"
        mdir.mkdir(mode=0o700)
        key = mdir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        entry = pwd.getpwnam(MUNGE_USER)
        for p in (mdir, key):
            os.chown(p, entry.pw_uid, entry.pw_gid)
        self._spawn("munged", [SBIN["munged"], "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={mdir / 'munged.pid'}",
                               f"--log-file={mdir / 'munged.log'}", f"--seed-file={mdir / 'munged.seed'}"],
                    user=MUNGE_USER)
        self._wait(lambda: self.munge_socket.exists(), "munged", 10)

    def start_ctld(self) -> None:
        """Start slurmctld (again) and wait until it answers."""
        self._spawn("slurmctld", [SBIN["slurmctld"], "-D", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping", timeout=10).stdout.count("UP") > 0, "slurmctld", 20)

    def stop_ctld(self) -> None:
        """Stop slurmctld (jobs keep running under slurmd, as on a real cluster)."""
        self._stop("slurmctld")

    def start_slurmd(self) -> None:
        self._spawn("slurmd", [SBIN["slurmd"], "-D", "-f", str(self.conf)])

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until the node is idle (registered and free)."""
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%T", timeout=10).stdout.strip() == "idle",
                   "slurmd", timeout)

    def _wait(self, ready, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self._log_tail(name)}")
            try:
                if ready():
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready in {timeout}s:\n{self._log_tail(name)}")

    def _stop(self, name: str, timeout: float = 10) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    # ---- views ------------------------------------------------------
    def job(self, job_id: str | int) -> dict[str, str]:
        """``scontrol show job -o ID`` as a dict (empty when Slurm no longer knows it)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout.strip()
        fields = {}
        for word in out.split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        return fields

    def jobs(self) -> list[str]:
        """Ids of the jobs Slurm holds (any state it still shows)."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def active_jobs(self) -> list[str]:
        """Ids of the jobs Slurm has not ended yet."""
        return self.run("squeue", "-h", "-o", "%i", "--states=PD,R,CG,CF,S").stdout.split()

    def clear(self, timeout: float = 30) -> None:
        """Cancel every job left by a test and wait until Slurm has ended them all (CPUs free again)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.active_jobs()
            if not active:
                return
            self.run("scancel", "--quiet", *active)
            time.sleep(0.2)
        raise AssertionError(f"Slurm jobs {self.active_jobs()} did not end in {timeout}s")

    def wait_job(self, job_id: str | int, states: set[str], timeout: float = 30) -> dict[str, str]:
        """Poll ``scontrol show job`` until the job's state is one of ``states``."""
        deadline = time.monotonic() + timeout
        job = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.get("JobState") in states:
                return job
            time.sleep(0.1)
        raise AssertionError(f"Slurm job {job_id} stayed {job.get('JobState')}: {job}")

    def leftovers(self) -> list[psutil.Process]:
        """Processes of this Slurm still alive (daemons, steps, jobs); zombies excluded."""
        entries = {f"OAAS_TEST_SLURM={self.token}".encode(), f"SLURM_CLUSTER_NAME={self.cluster}".encode()}
        out = []
        for p in _marked(entries):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        """Cancel every job, stop the daemons, kill whatever of this Slurm is left, remove the files."""
        try:
            if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
                self.run("scancel", "--full", "--quiet", *self.jobs(), timeout=10) if self.jobs() else None
        except (subprocess.TimeoutExpired, OSError):
            pass
        for name in ("slurmctld", "slurmd"):
            self._stop(name)
        for _ in range(50):
            left = self.leftovers()
            left = [p for p in left if p.pid not in {pr.pid for pr in self.procs.values()}]
            if not left:
                break
            for p in left:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)
        self._stop("munged")
        shutil.rmtree(self.root, ignore_errors=True)


def write_conf(s: RealSlurm, cpus: int) -> None:
    r = s.root
    for d in ("state", "spool"):
        (r / d).mkdir(exist_ok=True)
    s.conf.write_text(f"""ClusterName={s.cluster}
SlurmctldHost={s.nodename}(127.0.0.1)
SlurmctldPort={s.ctld_port}
SlurmdPort={s.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={s.munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SlurmctldTimeout=10
MessageTimeout=2
SlurmdTimeout=30
InactiveLimit=0
NodeName={s.nodename} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={REAL_MEMORY_MB} State=UNKNOWN
PartitionName={s.partition} Nodes={s.nodename} Default=YES State=UP MaxTime=INFINITE
""")


_RUNNING: list[RealSlurm] = []


@atexit.register
def _stop_all() -> None:
    for s in list(_RUNNING):
        s.stop()


def start_slurm() -> RealSlurm:
    """Start munged, slurmctld and slurmd in a new temp dir; everything stopped again if one fails."""
    token = secrets.token_hex(6)
    root = Path(tempfile.mkdtemp(prefix="oaas-slurm-"))
    root.chmod(0o755)  # munged (as munge) reaches its socket dir below
    ctld, slurmd = _free_ports(2)
    s = RealSlurm(root=root, token=token, cluster=f"oaas{token}", ctld_port=ctld, slurmd_port=slurmd)
    _RUNNING.append(s)
    try:
        write_conf(s, os.cpu_count() or 1)
        s.start_munge()
        s.start_ctld()
        s.start_slurmd()
        s.wait_idle()
    except BaseException:
        _RUNNING.remove(s)
        s.stop()
        raise
    return s


def stop_slurm(s: RealSlurm) -> None:
    if s in _RUNNING:
        _RUNNING.remove(s)
    s.stop()


@pytest.fixture(scope="module")
def real_slurm():
    """One private Slurm for the test module, torn down fully after it."""
    reason = missing_slurm()
    if reason:
        pytest.skip(reason)
    s = start_slurm()
    try:
        yield s
    finally:
        stop_slurm(s)


def slurm_toml(s: RealSlurm, name: str = "cluster-a", extra_node: str = "", extra: str = "",
               poll_interval_s: float = 0.2) -> str:
    """oaasd config: a ``[slurm]`` section for this Slurm and one node standing for its partition."""
    return (f'[slurm]\nslurm_conf = "{s.conf}"\npoll_interval_s = {poll_interval_s}\n'
            f"[health]\ninterval_s = 0.5\ntimeout_s = 5.0\n{extra}"
            f'[[nodes]]\nname = "{name}"\nlauncher = "slurm"\npartition = "{s.partition}"\n{extra_node}')
