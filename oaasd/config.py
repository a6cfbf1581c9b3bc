"""Settings from ``oaasd.toml``, with embedded defaults for every key."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


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
    """``[scheduler]``: queue policy and placement fit."""

    policy: Literal["fifo"] = "fifo"
    fit: Literal["first", "best", "worst", "least_allocated", "most_allocated", "balanced"] = "best"
    weights: dict[Literal["cpu", "memory", "gpus"], float] = Field(default_factory=dict)
    max_pass: int = Field(1000, ge=1, description="pending tasks examined per scheduling pass")


class NodeConfig(Section):
    """``[[nodes]]``: one node of the cluster."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
    host: str = "127.0.0.1"
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key: str | None = None
    launcher: Literal["local", "ssh", "mpi"] = "local"
    cpus: float | None = Field(None, gt=0, le=1_000_000)
    sockets: int | None = Field(None, ge=1, le=1024)
    cores_per_socket: int | None = Field(None, ge=1, le=4096)
    memory_mb: int | None = Field(None, ge=0, le=1 << 40)
    gpus: int = Field(0, ge=0, le=1 << 16)
    labels: dict[str, str] = Field(default_factory=dict)
    core_capacity: list[Annotated[int, Field(gt=0, le=1_000_000)]] | None = Field(
        None, min_length=1, max_length=1 << 16, description="millicores per core")
    known_hosts: str | None = Field(None, description="overrides [ssh] known_hosts for this node")
    work_root: str | None = Field(None, description="remote attempt directories (default [ssh] work_root)")

    @model_validator(mode="after")
    def _size(self) -> "NodeConfig":
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
        return self


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


class LimitsConfig(Section):
    """``[limits]``: per-user intake limits (0 = unlimited); a user entry may override each."""

    max_pending: int = Field(0, ge=0, description="pending tasks one user may hold")
    submit_rate: float = Field(0.0, ge=0, description="task submissions per second, sustained")
    submit_burst: int = Field(0, ge=0, description="submissions allowed at once (default: 2 x submit_rate, min 1)")


class UserConfig(Section):
    """``[[users]]``: one API user and the hash of their token (``oaasd token hash``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$")
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
    health: HealthConfig = Field(default_factory=HealthConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    nodes: list[NodeConfig] = Field(default_factory=list)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    users: list[UserConfig] = Field(default_factory=list)

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
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise ConfigError(f"{path}: " + "; ".join(lines)) from None
