"""What an inference pipeline is, and what a decision for it says.

A pipeline is an ordered list of stages (detector -> classifier -> language
model); each stage offers model variants, each variant a profile of latency
and throughput per batch size. The solver picks one variant, one batch size
and a replica count per stage. These models only validate and describe; the
arithmetic lives in :mod:`oaasd.pipeline.options` and the solvers.

Validation errors carry the field's location (pydantic's ``loc``), and the
cross-field checks name the offending field in their message, so an API
answer can point at ``stages[1].variants[0].profiles`` rather than at the
whole document.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

AccuracyCombine = Literal["product", "sum", "mean", "min"]
SolveMethod = Literal["exact", "exhaustive", "greedy"]
InfeasibleReasonCode = Literal["SloUnmet", "ReplicasCapped"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Profile(_Strict):
    """Measured behaviour of one replica of a variant at one batch size."""

    batch: int = Field(ge=1, description="requests per batch")
    latency_ms: float = Field(
        gt=0, allow_inf_nan=False,
        description="time to serve one batch, at the variant's latency_percentile")
    throughput_rps: float = Field(
        gt=0, allow_inf_nan=False, description="requests per second one replica sustains")


class Variant(_Strict):
    """One model that can serve a stage (e.g. yolov5s), with its profiles."""

    name: str = Field(min_length=1)
    accuracy: float = Field(ge=0, le=1, description="stage accuracy in [0, 1]")
    cores: float = Field(ge=0, allow_inf_nan=False, description="CPU cores per replica")
    gpus: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="GPUs per replica")
    latency_percentile: float = Field(
        default=99.0, gt=0, le=100, description="percentile the profiled latency_ms is")
    profiles: list[Profile] = Field(min_length=1)

    @field_validator("profiles")
    @classmethod
    def _unique_batches(cls, profiles: list[Profile]) -> list[Profile]:
        batches = [p.batch for p in profiles]
        if len(set(batches)) != len(batches):
            raise ValueError(f"profiles: batch sizes must be unique, got {batches}")
        return profiles


class Stage(_Strict):
    """One step of the pipeline, with its variants and replica bounds."""

    name: str = Field(min_length=1)
    variants: list[Variant] = Field(min_length=1)
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=32, ge=1)

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, variants: list[Variant]) -> list[Variant]:
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names must be unique, got {names}")
        return variants

    @field_validator("max_replicas")
    @classmethod
    def _max_at_least_min(cls, max_replicas: int, info: ValidationInfo) -> int:
        low = info.data.get("min_replicas")
        if low is not None and max_replicas < low:
            raise ValueError(f"max_replicas ({max_replicas}) < min_replicas ({low})")
        return max_replicas


class Pipeline(_Strict):
    """An ordered inference pipeline with its SLO and objective weights.

    Objective (maximised): ``alpha * accuracy - beta * cost_cores - gamma *
    sum(batch)``, where ``cost_cores`` is the sum over stages of replicas x
    (cores + gpu_weight_cores x gpus) per replica.
    """

    name: str = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)
    slo_ms: float = Field(gt=0, allow_inf_nan=False, description="end-to-end latency SLO")
    alpha: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="weight of accuracy")
    beta: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="weight per core")
    gamma: float = Field(default=0.0, ge=0, allow_inf_nan=False,
                         description="weight per unit of batch size")
    gpu_weight_cores: float = Field(
        default=0.0, ge=0, allow_inf_nan=False,
        description="how many cores one GPU counts as in the cost term (0: GPUs not priced)")
    accuracy_combine: AccuracyCombine = "product"

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: list[Stage]) -> list[Stage]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: names must be unique, got {names}")
        return stages

    @model_validator(mode="after")
    def _one_percentile(self) -> Pipeline:
        # Summing a p50 of one stage with a p99 of another means nothing.
        first = self.stages[0].variants[0].latency_percentile
        for i, stage in enumerate(self.stages):
            for j, variant in enumerate(stage.variants):
                if variant.latency_percentile != first:
                    raise ValueError(
                        f"stages[{i}].variants[{j}].latency_percentile is "
                        f"{variant.latency_percentile}, but stages[0].variants[0] uses {first}: "
                        "every profile of a pipeline must state the same percentile")
        return self

    @property
    def latency_percentile(self) -> float:
        """The percentile every profiled latency of this pipeline states."""
        return self.stages[0].variants[0].latency_percentile


class _Answer(_Strict):
    # A batch that never fills (zero load) has an infinite wait: keep it
    # "Infinity" in JSON, which reads back, instead of null, which does not.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class SolveRequest(_Strict):
    """Body of ``POST /v1/pipelines/solve``: a pipeline and a load to decide for.

    ``exhaustive`` is not offered over the API: it is exponential in stages.
    """

    pipeline: Pipeline
    load_rps: float = Field(ge=0, allow_inf_nan=False)
    fill_load_rps: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    method: Literal["exact", "greedy"] = "exact"


class StageDecision(_Answer):
    """What one stage runs: variant, batch, replicas, and what that gives."""

    stage: str
    variant: str
    batch: int
    replicas: int
    latency_ms: float = Field(description="profiled batch latency")
    wait_ms: float = Field(description="batch-fill wait 1000 * (batch - 1) / fill_load_rps")
    capacity_rps: float = Field(description="replicas x throughput_rps")
    accuracy: float
    cores: float = Field(description="replicas x cores per replica")
    gpus: float = Field(description="replicas x gpus per replica")


class InfeasibleReason(_Answer):
    """Why a decision is infeasible, as data (formatted only at the edge).

    ``SloUnmet``: end-to-end latency ``requested`` exceeds the SLO ``limit``
    (ms). ``ReplicasCapped``: ``stage`` needs ``requested`` replicas to carry
    the load but may run at most ``limit``.
    """

    reason: InfeasibleReasonCode
    stage: str | None = None
    requested: int | float
    limit: int | float


class Decision(_Answer):
    """The configuration chosen for one load, and its expected figures.

    ``feasible`` is False when no configuration meets the SLO at this load or
    a stage is capped at ``max_replicas``; the decision is then the one with
    the least ``shortfall_rps`` (load the bottleneck stage cannot carry),
    then the least ``violation_ms`` (latency above the SLO), and ``reasons``
    says which limits bind.
    """

    pipeline: str
    method: SolveMethod
    load_rps: float = Field(description="load the replicas are sized for")
    fill_load_rps: float = Field(description="load the batch-fill wait is computed at")
    stages: list[StageDecision]
    latency_ms: float = Field(description="sum of latency_ms + wait_ms over stages")
    latency_percentile: float
    accuracy: float = Field(description="end-to-end accuracy per accuracy_combine")
    cost_cores: float
    cost_gpus: float
    batch_total: int
    objective: float
    feasible: bool
    violation_ms: float = Field(description="max(0, latency_ms - slo_ms)")
    shortfall_rps: float = Field(description="load the weakest stage cannot carry")
    reasons: list[InfeasibleReason] = Field(default_factory=list)
