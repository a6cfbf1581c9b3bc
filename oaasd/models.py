"""The task spec users submit (pydantic, unknown fields refused), and how a JSON body is validated."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from oaasd.errors import InvalidRequestError, ValidationFailedError, pydantic_detail

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")

NoNul = Annotated[str, Field(max_length=65536)]


def parse_model(model, body: bytes, **context):
    """Validate a JSON body against a pydantic model (strict types); 400 or 422 naming the fields."""
    try:
        return model.model_validate_json(body or b"null", strict=True, context=context or None)
    except ValidationError as exc:
        detail = pydantic_detail(exc)
        if any(d["type"] == "json_invalid" for d in detail):
            raise InvalidRequestError("body is not valid JSON", detail) from None
        if any(d["type"] == "model_type" and d["field"] == "body" for d in detail) or body.strip() in (b"", b"null"):
            raise InvalidRequestError("body must be a JSON object", [{"field": "body", "problem": "expected a JSON object"}]) from None
        raise ValidationFailedError(f"invalid {model.__name__}", detail) from None


def _no_nul(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
    return value


class Strict(BaseModel):
    """Base for request bodies: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Resources(Strict):
    """Per-worker resources; ``cores`` are per-process millicore shares."""

    cpus: float = Field(1.0, ge=0.001, le=100_000, description="cores per worker, fractional allowed")
    memory_mb: int = Field(0, ge=0, le=1 << 40)
    gpus: float = Field(0, ge=0, le=1024, description="whole GPUs (distinct devices) or a share below 1 of one device")
    gpu_type: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$",
                                 description="only devices of this type (as the nodes declare it)")
    cores: list[Annotated[int, Field(gt=0, le=1_000_000)]] | None = Field(
        None, max_length=4096, description="per-process CPU shares in millicores, each on its own core")

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpus = {v:g}: a fraction of a GPU must be below 1 (a share of one device); "
                             "above 1 ask for whole GPUs")
        if 0 < v < 1 and (v < 0.001 or abs(v * 1000 - round(v * 1000)) > 1e-6):
            raise ValueError(f"gpus = {v:g}: a share of a GPU is counted in thousandths (0.001 .. 0.999)")
        return v

    @property
    def cpu_milli(self) -> int:
        """CPU request in millicores; per-process ``cores`` shares, when given, decide it."""
        return sum(self.cores) if self.cores else round(self.cpus * 1000)

    @property
    def gpu_milli(self) -> int:
        """GPU request in milli-GPUs (1000 a whole device)."""
        return round(self.gpus * 1000)


class TaskSpec(Strict):
    """One unit of work: a program, its resources and its limits."""

    name: str = Field("task", min_length=1, max_length=200)
    command: list[NoNul] | None = Field(None, min_length=1, max_length=4096)
    script: str | None = Field(None, min_length=1, max_length=1 << 20)
    workdir: str | None = Field(None, max_length=4096)
    env: dict[str, NoNul] = Field(default_factory=dict, max_length=1024)
    workers: int = Field(1, ge=1, le=65536)
    resources: Resources = Field(default_factory=Resources)
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    time_limit_s: float | None = Field(None, gt=0, le=365 * 86400)
    estimated_runtime_s: float | None = Field(
        None, gt=0, le=365 * 86400, description="the user's guess of the run time (policy sjf); never enforced")
    max_retries: int = Field(1, ge=0, le=100, description="requeues after a node failure or lost attempt")
    labels: dict[str, str] = Field(default_factory=dict, max_length=64, description="node labels to match")
    placement: Literal["pack", "spread"] = "pack"
    exclusive: bool = False
    user: str = Field("anonymous", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@\-]+$")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    require_result: bool = Field(True, description="exit 0 without a result is FAILED/NoResult")
    callback_url: str | None = Field(None, max_length=2048,
                                     description="http(s) URL POSTed the final state and result when the task ends")
    trial_config: dict[str, Any] | None = Field(
        None, description="a tuning trial's configuration, passed as $OAAS_TRIAL_CONFIG; set by the daemon only")

    @field_validator("name", "script", "workdir", "idempotency_key")
    @classmethod
    def _text(cls, v: str | None, info) -> str | None:
        return None if v is None else _no_nul(v, info.field_name)

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v[0]:
                raise ValueError("command[0] must not be empty")
            for arg in v:
                _no_nul(arg, "command")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not ENV_NAME.match(key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
            if key.startswith("OAAS_"):
                raise ValueError(f"env name {key!r} is reserved (OAAS_*)")
            _no_nul(value, f"env.{key}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not LABEL.match(key) or not LABEL.match(value):
                raise ValueError(f"label {key!r}={value!r} must be 1-63 chars of [A-Za-z0-9_.-/]")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or ".." in PurePosixPath(v).parts):
            raise ValueError("workdir must be an absolute path without '..'")
        return v

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError("callback_url must not contain spaces or control characters")
        try:
            parts = urlsplit(v)
            port = parts.port  # raises ValueError when out of range
        except ValueError as exc:
            raise ValueError(f"callback_url is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
            raise ValueError("callback_url must be an http:// or https:// URL with a host")
        return v

    @model_validator(mode="after")
    def _one_program(self) -> "TaskSpec":
        if (self.command is None) == (self.script is None):
            raise ValueError("give exactly one of 'command' (argv list) or 'script' (shell body)")
        return self
