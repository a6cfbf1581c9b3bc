"""Settings from ``oaasd.toml``, with embedded defaults for every key."""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import psutil
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from oaasd import gpus
from oaasd.errors import ConfigError

UNIX_NAME = r"^[a-z_][a-z0-9_-]{0,31}$"  # a portable Unix account name (useradd's default rule)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SLURM_WORD = r"^[A-Za-z0-9_.\-]{1,64}$"  # a partition, account or qos name
# Capabilities a non-root daemon needs to run tasks as other accounts (bit numbers of
# linux/capability.h): set ids, chown attempt dirs, signal tasks, write into their dirs.
CAPS_NEEDED = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Section(BaseModel):
    """A config table: unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    """``[server]``: where the daemon listens and keeps its state."""

    listen: str = "127.0.0.1:8750"
    state_dir: str = "./var"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    max_body_bytes: int = Field(1 << 20, ge=1024)
    kill_grace_s: float = Field(5.0, ge=0)
    log_format: Literal["text", "json"] = "text"
    log_level: LogLevel = Field("info", description="oaasd's own loggers; the CLI's --log-level overrides it")
    log_levels: dict[str, LogLevel] = Field(
        default_factory=dict, description="per logger, e.g. {asyncssh = \"debug\"}; others stay at warning")
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    header_timeout_s: float = Field(10.0, gt=0, description="a request head must arrive within this")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this")
    max_connections: int = Field(1024, ge=1, description="open HTTP connections in all")
    max_connections_per_peer: int = Field(64, ge=1, description="open HTTP connections from one address")
    max_subscribers: int = Field(512, ge=0, description="open event streams in all")
    max_subscribers_per_user: int = Field(32, ge=0, description="open event streams of one user")
    event_write_timeout_s: float = Field(10.0, gt=0, description="an event stream whose client reads "
                                         "nothing for this long is closed")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen must be HOST:PORT with a port in 1..65535, got {v!r}")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if host != "localhost":
                raise ValueError(f"listen host must be an IP address or localhost, got {host!r}") from None
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback


class SchedulerConfig(Section):
    """``[scheduler]``: queue policy and placement fit (policy names as in ``oaasd.core.policies``)."""

    policy: Literal["fifo", "backfill", "sjf", "fair", "priority"] = Field(
        "fifo", description="fifo: any later task that fits starts; backfill: EASY backfill with a reservation")
    fit: Literal["first", "best", "worst", "least_allocated", "most_allocated", "balanced"] = "best"
    weights: dict[Literal["cpu", "memory", "gpus"], float] = Field(default_factory=dict)
    max_pass: int = Field(1000, ge=1, description="pending tasks examined per scheduling pass")
    default_time_limit_s: float | None = Field(
        None, gt=0, le=365 * 86400, description="time limit of a task (not a pipeline replica) submitted without one")
    half_life_s: float = Field(86400.0, gt=0, description="fair, priority: usage halves every this long")
    shares: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="fair, priority: a user's share (default 1)")
    priority_weights: dict[Literal["age", "fair_share", "size", "priority", "qos"],
                           Annotated[float, Field(ge=-1e9, le=1e9)]] = Field(default_factory=dict)
    max_age_s: float = Field(7 * 86400.0, gt=0, description="priority: waiting this long gives the full age factor")
    qos: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="priority: a user's QOS factor in [0, 1]")


class GpuDevice(Section):
    """One GPU device of a node: its index (what ``CUDA_VISIBLE_DEVICES`` names), type and memory."""

    index: int = Field(ge=0, le=1 << 16)
    type: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$", description="e.g. a100; matched by gpu_type")
    memory_mb: int = Field(0, ge=0, le=1 << 30)


def parse_nvidia_smi(csv_text: str) -> list[GpuDevice]:
    """Devices from ``nvidia-smi``'s CSV (``oaasd.gpus.parse_nvidia_smi``)."""
    return [GpuDevice(**d) for d in gpus.parse_nvidia_smi(csv_text)]


def discover_local_gpus(cfg: "NodeConfig") -> list[GpuDevice] | None:
    """The GPUs of a local node from the head's ``nvidia-smi``; None where there is none or it fails."""
    if cfg.launcher != "local":
        return None
    found = gpus.nvidia_smi_devices()
    return None if found is None else [GpuDevice(**d) for d in found]


# Fills a node's devices when its config gives no ``gpus`` (start and reload load the config
# again); a launcher that can ask a remote node may set another function here.
GPU_DISCOVERY: list[Callable[["NodeConfig"], list[GpuDevice] | None]] = [discover_local_gpus]


class NodeConfig(Section):
    """``[[nodes]]``: one node of the cluster."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
    host: str = "127.0.0.1"
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key: str | None = None
    launcher: Literal["local", "ssh", "mpi", "slurm"] = "local"
    cpus: float | None = Field(None, gt=0, le=1_000_000)
    sockets: int | None = Field(None, ge=1, le=1024)
    cores_per_socket: int | None = Field(None, ge=1, le=4096)
    memory_mb: int | None = Field(None, ge=0, le=1 << 40)
    gpus: int | list[GpuDevice] | None = Field(
        None, description="a count (devices 0..N-1) or a list of devices; unset: discovered (nvidia-smi) or 0")
    gpu_vendor: Literal["nvidia", "amd"] = Field("nvidia", description="which variable names the devices a task sees")
    labels: dict[str, str] = Field(default_factory=dict)
    core_capacity: list[Annotated[int, Field(gt=0, le=1_000_000)]] | None = Field(
        None, min_length=1, max_length=1 << 16, description="millicores per core")
    known_hosts: str | None = Field(None, description="overrides [ssh] known_hosts for this node")
    work_root: str | None = Field(None, description="remote attempt directories (default [ssh] work_root)")
    partition: str | None = Field(None, pattern=SLURM_WORD, description="the Slurm partition a slurm node stands for")
    account: str | None = Field(None, pattern=SLURM_WORD, description="sbatch --account of a slurm node's jobs")
    qos: str | None = Field(None, pattern=SLURM_WORD, description="sbatch --qos of a slurm node's jobs")
    sbatch_args: list[str] = Field(default_factory=list, max_length=64,
                                   description="more sbatch arguments of a slurm node's jobs (each one argv word)")
    _from_slurm: frozenset[str] = PrivateAttr(frozenset())  # sizes a slurm node takes from sinfo

    @property
    def sized_by_slurm(self) -> frozenset[str]:
        """The sizes (cpus, memory_mb, gpus) of a slurm node that sinfo gives, not the config."""
        return self._from_slurm

    @model_validator(mode="after")
    def _size(self) -> "NodeConfig":
        if self.launcher == "slurm":
            if not self.partition:
                raise ValueError("a slurm node needs partition = \"NAME\"")
            self._from_slurm = frozenset(
                [k for k in ("cpus", "memory_mb") if getattr(self, k) is None and not self.core_capacity
                 and not (k == "cpus" and self.sockets)] + ([] if "gpus" in self.model_fields_set else ["gpus"]))
        if self.cpus is None and self.core_capacity:
            self.cpus = sum(self.core_capacity) / 1000
        if self.cpus is None and self.sockets and self.cores_per_socket:
            self.cpus = float(self.sockets * self.cores_per_socket)
        if self.cpus is None:
            self.cpus = float(psutil.cpu_count() or 1) if self.launcher == "local" else 1.0
        if self.memory_mb is None:
            self.memory_mb = psutil.virtual_memory().total // (1 << 20) if self.launcher == "local" else 1024
        if self.core_capacity and round(self.cpus * 1000) != sum(self.core_capacity):
            raise ValueError(f"cpus = {self.cpus:g} but core_capacity sums to {sum(self.core_capacity)} millicores")
        cores = len(self.core_capacity) if self.core_capacity else -(-round(self.cpus * 1000) // 1000)
        if self.sockets and self.sockets > cores:
            raise ValueError(f"sockets = {self.sockets} but the node has {cores} core(s)")
        if isinstance(self.gpus, int) and not 0 <= self.gpus <= 1 << 16:
            raise ValueError("gpus must be a count in 0..65536 or a list of devices")
        if isinstance(self.gpus, list) and len({d.index for d in self.gpus}) != len(self.gpus):
            raise ValueError("gpus: device indices must be distinct")
        if self.gpus is None:
            for discover in GPU_DISCOVERY:
                found = discover(self)
                if found is not None:
                    self.gpus = found
                    break
        return self

    @property
    def devices(self) -> list[GpuDevice]:
        """The node's GPU devices (a count gives devices 0..N-1 of type "")."""
        if isinstance(self.gpus, list):
            return self.gpus
        return [GpuDevice(index=d) for d in range(self.gpus or 0)]


class SshConfig(Section):
    """``[ssh]``: how remote nodes are reached (one pooled connection each)."""

    known_hosts: str | None = Field(None, description="default: the daemon user's ~/.ssh/known_hosts")
    accept_unknown_hosts: bool = False
    connect_timeout_s: float = Field(10.0, gt=0)
    keepalive_interval_s: float = Field(5.0, gt=0)
    keepalive_count_max: int = Field(3, ge=1)
    command_timeout_s: float = Field(30.0, gt=0)
    lost_grace_s: float = Field(10.0, ge=0)
    work_root: str = ".oaasd/attempts"


class SlurmConfig(Section):
    """``[slurm]``: how the slurm launcher reaches the cluster's Slurm (client commands on the head node)."""

    bin_dir: str | None = Field(None, description="directory of sbatch, squeue, scancel, sinfo, srun (default: PATH)")
    slurm_conf: str | None = Field(None, description="SLURM_CONF of the client commands (default: Slurm's own)")
    poll_interval_s: float = Field(2.0, gt=0, le=600, description="one squeue call per this for all jobs")
    command_timeout_s: float = Field(30.0, gt=0, description="time limit of one sbatch/squeue/scancel/sinfo call")


class MpiConfig(Section):
    """``[mpi]``: how mpirun is called for multi-worker tasks on remote nodes."""

    mpirun: str = "mpirun"
    args: list[str] = Field(default_factory=list, description="e.g. --mca plm_rsh_args, --bind-to, --map-by")
    env: dict[str, str] = Field(default_factory=dict, description="mpirun's own environment, e.g. PMIX_MCA_gds")


class HealthConfig(Section):
    """``[health]``: the probe loop over remote nodes."""

    interval_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(15.0, gt=0)


class CallbacksConfig(Section):
    """``[callbacks]``: how a task's ``callback_url`` is POSTed when it ends."""

    attempts: int = Field(5, ge=1, le=100, description="POSTs before the callback is recorded FAILED")
    backoff_s: float = Field(0.5, gt=0, description="wait after the first failed POST, doubled after each")
    backoff_max_s: float = Field(60.0, gt=0, description="longest wait between two POSTs")
    timeout_s: float = Field(10.0, gt=0, description="time limit of one POST")


def _networks(nets: list[str]) -> list[str]:
    """CIDR strings checked and normalised (``10.0.0.0/8``, ``fd00::/8``, a bare address is one host)."""
    out = []
    for net in nets:
        try:
            out.append(str(ipaddress.ip_network(net, strict=True)))
        except ValueError as exc:
            raise ValueError(f"{net!r} is not a network in CIDR form: {exc}") from None
    return out


class OutboundConfig(Section):
    """``[outbound]``: which addresses the daemon reaches on a user's behalf (pipeline sources, callbacks)."""

    allow: list[str] = Field(default_factory=list, max_length=1000,
                             description="networks non-admins may reach, even inside the built-in denied ranges")
    deny: list[str] = Field(default_factory=list, max_length=1000, description="networks nobody reaches, admins too")
    default: Literal["allow", "deny"] = Field(
        "allow", description="for non-admins, an address outside allow, deny and the built-in denied ranges")
    max_redirects: int = Field(5, ge=0, le=20, description="redirects followed per request, each checked again")
    max_response_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="longest answer body read")

    @field_validator("allow", "deny")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _networks(v)


class ReportingConfig(Section):
    """``[reporting]``: how much of what a task prints the daemon reads and keeps."""

    max_metrics_per_attempt: int = Field(10_000, ge=1, le=100_000_000,
                                         description="OAAS_METRIC lines stored per attempt; later ones are counted")
    max_protocol_line_bytes: int = Field(1 << 20, ge=64, le=64 << 20,
                                         description="a longer OAAS_ line is log text, not a record")


class LimitsConfig(Section):
    """``[limits]``: per-user intake limits (0 = unlimited); a user entry may override each."""

    max_pending: int = Field(0, ge=0, description="pending tasks one user may hold")
    submit_rate: float = Field(0.0, ge=0, description="task submissions per second, sustained")
    submit_burst: int = Field(0, ge=0, description="submissions allowed at once (default: 2 x submit_rate, min 1)")


class LaunchConfig(Section):
    """``[launch]``: the environment and the Unix account every task starts with."""

    path: str = Field("/usr/local/bin:/usr/bin:/bin", description="PATH of every task (its own env may override)")
    lang: str = Field("C.UTF-8", description="LANG of every task")
    default_user: str = Field("oaasd-task", pattern=UNIX_NAME,
                              description="Unix account of API users without unix_user (only with [[users]])")
    pass_env: list[str] = Field(default_factory=list, description="variables copied from the launching side")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        # Relative entries are taken from the daemon's working directory, like state_dir.
        parts = [p for p in v.split(":") if p]
        if not parts:
            raise ValueError("launch.path must name at least one directory")
        return ":".join(str(Path(p).absolute()) for p in parts)

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, v: list[str]) -> list[str]:
        launcher = ("OAAS_EXIT_FILE", "OAAS_RESULT_FILE", "OAAS_LAUNCH_TAG")  # set by the launcher only
        bad = [n for n in v if not re.match(ENV_NAME, n) or n in launcher]
        if bad:
            raise ValueError(f"pass_env names must match {ENV_NAME} and not be one of {launcher}: {bad}")
        return v


class BindingConfig(Section):
    """``[binding]``: how a node enforces what placement decided (cgroups, affinity, rlimits)."""

    enforce: Literal["auto", "cgroup", "rlimit", "none"] = Field(
        "auto", description="auto: cgroup v2, else v1, else rlimits; cgroup: fail launches without one")
    cgroup_parent: str = Field("oaasd", pattern=r"^/?[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$",
                               description="relative: under the daemon's own cgroup; absolute: from the root")


class UserConfig(Section):
    """``[[users]]``: one API user and the hash of their token (``oaasd token hash``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$")
    unix_user: str | None = Field(None, pattern=UNIX_NAME, description="Unix account the user's tasks run as")
    role: Literal["user", "admin"] = "user"
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the token")
    max_pending: int | None = Field(None, ge=0)
    submit_rate: float | None = Field(None, ge=0)
    submit_burst: int | None = Field(None, ge=0)


class AuthConfig(Section):
    """``[auth]``: bearer tokens. On unless turned off, and only loopback may turn it off."""

    enabled: bool | None = Field(None, description="default: on when [[users]] are declared")


class Settings(Section):
    """The whole configuration."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    ssh: SshConfig = Field(default_factory=SshConfig)
    mpi: MpiConfig = Field(default_factory=MpiConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    reporting: ReportingConfig = Field(default_factory=ReportingConfig)
    nodes: list[NodeConfig] = Field(default_factory=list)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    users: list[UserConfig] = Field(default_factory=list)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    binding: BindingConfig = Field(default_factory=BindingConfig)

    @property
    def auth_on(self) -> bool:
        """Whether requests must carry a bearer token."""
        return bool(self.users) if self.auth.enabled is None else self.auth.enabled

    @model_validator(mode="after")
    def _auth(self) -> "Settings":
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate user names: {sorted({n for n in names if names.count(n) > 1})}")
        if self.auth_on and not self.users:
            raise ValueError("auth.enabled is true but no [[users]] are declared")
        if not self.server.loopback and not self.auth_on:
            raise ValueError(f"server.listen {self.server.listen} is beyond loopback: "
                             "declare [[users]] with tokens (auth cannot be off there)")
        return self

    @model_validator(mode="after")
    def _default_node(self) -> "Settings":
        if not self.nodes:
            self.nodes = [NodeConfig(name="local")]
        names = [n.name for n in self.nodes]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate node names: {sorted(dupes)}")
        return self

    @property
    def state_path(self) -> Path:
        return Path(self.server.state_dir)


def load_settings(path: str | Path | None) -> Settings:
    """Read and validate a config file; None means embedded defaults."""
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise ConfigError(f"{path}: " + "; ".join(lines)) from None
    problems = launch_problems(settings)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return settings


def missing_caps(cap_eff: int) -> list[str]:
    """The CAPS_NEEDED absent from an effective capability mask (``CapEff`` of /proc/PID/status)."""
    return [name for name, bit in CAPS_NEEDED.items() if not cap_eff >> bit & 1]


def can_switch_user() -> bool:
    """True when this process may run tasks as other accounts (root, or every one of CAPS_NEEDED)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return not missing_caps(eff)


def launch_problems(settings: Settings) -> list[str]:
    """Why the tasks of a shared daemon (one with [[users]]) could not run as their own accounts."""
    if not settings.users:
        return []
    problems = []
    if not can_switch_user():
        problems.append(f"[[users]] are declared, so tasks must run as their users' Unix accounts: run the "
                        f"daemon as root or give it {', '.join(CAPS_NEEDED)} (it runs as uid {os.geteuid()})")
    accounts = [("launch.default_user", settings.launch.default_user)]
    accounts += [(f"users[{u.name}].unix_user", u.unix_user) for u in settings.users if u.unix_user]
    for key, name in accounts:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            problems.append(f"{key}: no Unix account {name!r} on this host")
            continue
        if uid in (0, os.geteuid()):
            problems.append(f"{key}: {name!r} is uid {uid}, the daemon's own or root: tasks would share its rights")
    problems += [f"nodes[{n.name}].launcher: 'mpi' cannot run ranks as the users' accounts; "
                 "with [[users]] use 'ssh' nodes" for n in settings.nodes if n.launcher == "mpi"]
    problems += [f"nodes[{n.name}].launcher: 'slurm' submits every job as the daemon's account; "
                 "it cannot run tasks as the users' accounts yet" for n in settings.nodes if n.launcher == "slurm"]
    return problems
