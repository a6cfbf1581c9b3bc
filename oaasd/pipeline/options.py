"""Per-stage options at one load, and the one way every solver scores them.

An *option* of a stage is one (variant, batch) pair. At a given load its
replica count is forced: the fewest replicas whose summed throughput carries
the load (clamped to ``min_replicas``; capped at ``max_replicas``, which
leaves a shortfall). More replicas only add cost and change no latency in
this model, so this count is optimal for the option. A configuration is one
option per stage, written as a tuple of option indices.

Every solver (exact, exhaustive, greedy) scores a configuration with the
same floating-point operations in the same order (stage 0 first), so their
objective values compare exactly, not just approximately:

- latency  ``lat = ((0 + l_0) + l_1) + ...`` with ``l_s`` = profiled latency
  + batch-fill wait ``1000 * (b - 1) / fill_load_rps``;
- accuracy accumulator ``g``: product ``((1 * a_0) * a_1) ...``, sum and
  mean ``((0 + a_0) + a_1) ...``, min ``min(min(inf, a_0), a_1) ...``;
  accuracy ``A = g`` (``g / n_stages`` for mean);
- weighted cost ``C = ((0 + c_0) + c_1) + ...`` with ``c_s = beta *
  (cores_s + gpu_weight_cores * gpus_s) + gamma * b_s``;
- objective ``alpha * A - C``.

Ranking (the documented tie-break), smaller is better::

    (shortfall_rps, max(lat, slo_ms), -objective, lat, C, -A, option indices)

Options of a stage are numbered variant by variant in the order listed, and
by ascending batch within a variant.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from oaasd.pipeline.model import (
    Decision,
    InfeasibleReason,
    Pipeline,
    SolveMethod,
    StageDecision,
)
from oaasd.states import PipelineReason


@dataclass(frozen=True)
class StageOptions:
    """Every option of one stage at one load; each array has shape (k,)."""

    variant: np.ndarray  # int64 index into stage.variants
    profile: np.ndarray  # int64 index into variant.profiles
    batch: np.ndarray  # int64
    latency_ms: np.ndarray  # float64, profiled latency + batch-fill wait
    wait_ms: np.ndarray  # float64
    accuracy: np.ndarray  # float64
    replicas: np.ndarray  # int64, after clamping and capping
    needed: np.ndarray  # int64, replicas needed to carry the load (uncapped)
    cores: np.ndarray  # float64, replicas x cores per replica
    gpus: np.ndarray  # float64
    cost: np.ndarray  # float64, weighted cost term c_s
    shortfall_rps: np.ndarray  # float64, load this option cannot carry (>= 0)

    def __len__(self) -> int:
        return len(self.batch)

    def row(self, o: int) -> tuple[float, float, float, float]:
        """(latency_ms, accuracy, cost, shortfall_rps) of option ``o`` as floats."""
        return (float(self.latency_ms[o]), float(self.accuracy[o]), float(self.cost[o]),
                float(self.shortfall_rps[o]))

    def rows(self) -> list[tuple[float, float, float, float]]:
        """``row`` of every option, in option order."""
        return list(zip(self.latency_ms.tolist(), self.accuracy.tolist(), self.cost.tolist(),
                        self.shortfall_rps.tolist()))


REPLICAS_CAP = 1 << 62  # "more replicas than any stage may run"


def replicas_needed(load_rps: float, throughput_rps: float) -> int:
    """Fewest replicas n with n * throughput_rps >= load_rps (exact in floats), at most REPLICAS_CAP."""
    ratio = load_rps / throughput_rps
    if not ratio < REPLICAS_CAP:  # overflows to inf on tiny throughputs; int64 tables hold the cap
        return REPLICAS_CAP
    n = max(0, math.ceil(ratio))
    while n * throughput_rps < load_rps:  # guard against rounding of the division
        n += 1
    while n > 0 and (n - 1) * throughput_rps >= load_rps:
        n -= 1
    return n


def batch_wait_ms(batch: int, load_rps: float) -> float:
    """Time the first request of a batch waits for the batch to fill, in ms."""
    if batch == 1:
        return 0.0
    return math.inf if load_rps <= 0 else 1000.0 * (batch - 1) / load_rps


def stage_options(pipeline: Pipeline, stage_index: int, load_rps: float,
                  fill_load_rps: float) -> StageOptions:
    """Tabulate every (variant, batch) option of one stage: replicas sized for
    ``load_rps``, batch-fill wait computed at ``fill_load_rps``."""
    stage = pipeline.stages[stage_index]
    rows = []
    for v, variant in enumerate(stage.variants):
        order = sorted(range(len(variant.profiles)), key=lambda p: variant.profiles[p].batch)
        for p in order:
            prof = variant.profiles[p]
            needed = replicas_needed(load_rps, prof.throughput_rps)
            replicas = min(max(needed, stage.min_replicas), stage.max_replicas)
            wait = batch_wait_ms(prof.batch, fill_load_rps)
            cores, gpus = replicas * variant.cores, replicas * variant.gpus
            cost = pipeline.beta * (cores + pipeline.gpu_weight_cores * gpus) \
                + pipeline.gamma * prof.batch
            rows.append((v, p, prof.batch, prof.latency_ms + wait, wait, variant.accuracy,
                         replicas, needed, cores, gpus, cost,
                         max(0.0, load_rps - replicas * prof.throughput_rps)))
    cols = list(zip(*rows))
    ints = {0, 1, 2, 6, 7}
    arrays = [np.array(c, dtype=np.int64 if i in ints else np.float64) for i, c in enumerate(cols)]
    return StageOptions(*arrays)


def option_tables(pipeline: Pipeline, load_rps: float,
                  fill_load_rps: float | None = None) -> list[StageOptions]:
    """Tabulate the options of every stage at ``load_rps`` (requests/s, >= 0).

    ``fill_load_rps`` (default ``load_rps``) is the load assumed for the
    batch-fill wait: planning capacity for a high forecast and the wait for a
    low one keeps the SLO whichever way the forecast errs.
    """
    fill = load_rps if fill_load_rps is None else fill_load_rps
    for name, value in (("load_rps", load_rps), ("fill_load_rps", fill)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return [stage_options(pipeline, s, load_rps, fill) for s in range(len(pipeline.stages))]


def accumulator(kind: str) -> tuple[float, np.ufunc]:
    """Identity and binary operation of the accuracy accumulator ``g``."""
    if kind == "product":
        return 1.0, np.multiply
    if kind in ("sum", "mean"):
        return 0.0, np.add
    return math.inf, np.minimum


def final_accuracy(kind: str, g, n_stages: int):
    """End-to-end accuracy from the accumulator (scalar or array)."""
    return g / n_stages if kind == "mean" else g


class Score(NamedTuple):
    """A configuration's figures, computed in the canonical order."""

    shortfall_rps: float
    latency_ms: float
    cost: float
    accuracy: float
    objective: float


def scalar_accumulator(kind: str) -> tuple[float, Callable[[float, float], float]]:
    """Identity and operation of ``g`` on Python floats (same IEEE results)."""
    if kind == "product":
        return 1.0, operator.mul
    if kind in ("sum", "mean"):
        return 0.0, operator.add
    return math.inf, min


def score(pipeline: Pipeline, tables: list[StageOptions], choice: tuple[int, ...]) -> Score:
    """Score one configuration (one option index per stage)."""
    return score_rows(pipeline, [t.row(o) for t, o in zip(tables, choice)])


def score_rows(pipeline: Pipeline, rows: Sequence[tuple[float, float, float, float]]) -> Score:
    """Score a configuration given per stage (latency_ms, accuracy, cost, shortfall_rps)."""
    kind = pipeline.accuracy_combine
    g, op = scalar_accumulator(kind)
    lat = cost = shortfall = 0.0
    for row_lat, row_acc, row_cost, row_short in rows:
        lat = lat + row_lat
        g = op(g, row_acc)
        cost = cost + row_cost
        shortfall = max(shortfall, row_short)
    acc = final_accuracy(kind, g, len(rows))
    return Score(shortfall, lat, cost, acc, pipeline.alpha * acc - cost)


def rank_key(pipeline: Pipeline, s: Score, choice: tuple[int, ...]) -> tuple:
    """The documented total order on configurations; smaller is better."""
    return (s.shortfall_rps, max(s.latency_ms, pipeline.slo_ms), -s.objective,
            s.latency_ms, s.cost, -s.accuracy, choice)


def admissible(tables: list[StageOptions]) -> tuple[float, list[np.ndarray]]:
    """Least achievable shortfall and, per stage, the options that achieve it.

    The pipeline's shortfall is its worst stage's, so the least achievable is
    ``max_s min_o shortfall``; every configuration drawn from the returned
    options has exactly that shortfall (0 when every stage can carry the load).
    """
    least = max(float(t.shortfall_rps.min()) for t in tables)
    return least, [np.flatnonzero(t.shortfall_rps <= least) for t in tables]


def latency_budget(pipeline: Pipeline, tables: list[StageOptions],
                   allowed: list[np.ndarray]) -> float:
    """Largest latency a best-ranked configuration may have: the SLO, or the
    least achievable latency when even that misses the SLO."""
    least = 0.0
    for t, idx in zip(tables, allowed):
        least = least + float(t.latency_ms[idx].min())
    return max(pipeline.slo_ms, least)


def build_decision(pipeline: Pipeline, tables: list[StageOptions], choice: tuple[int, ...],
                   load_rps: float, fill_load_rps: float | None,
                   method: SolveMethod) -> Decision:
    """Turn a configuration into a Decision, with its reasons when infeasible."""
    s = score(pipeline, tables, choice)
    stages, reasons = [], []
    for stage, t, o in zip(pipeline.stages, tables, choice):
        variant = stage.variants[int(t.variant[o])]
        prof = variant.profiles[int(t.profile[o])]
        replicas = int(t.replicas[o])
        stages.append(StageDecision(
            stage=stage.name, variant=variant.name, batch=prof.batch, replicas=replicas,
            latency_ms=prof.latency_ms, wait_ms=float(t.wait_ms[o]),
            capacity_rps=replicas * prof.throughput_rps, accuracy=variant.accuracy,
            cores=float(t.cores[o]), gpus=float(t.gpus[o])))
        if t.needed[o] > stage.max_replicas:
            reasons.append(InfeasibleReason(reason=PipelineReason.REPLICAS_CAPPED.value, stage=stage.name,
                                            requested=int(t.needed[o]), limit=stage.max_replicas))
    if s.latency_ms > pipeline.slo_ms:
        reasons.append(InfeasibleReason(reason=PipelineReason.SLO_UNMET.value, requested=s.latency_ms,
                                        limit=pipeline.slo_ms))
    return Decision(
        pipeline=pipeline.name, method=method, load_rps=load_rps,
        fill_load_rps=load_rps if fill_load_rps is None else fill_load_rps, stages=stages,
        latency_ms=s.latency_ms, latency_percentile=pipeline.latency_percentile,
        accuracy=s.accuracy, cost_cores=sum(d.cores for d in stages),
        cost_gpus=sum(d.gpus for d in stages), batch_total=sum(d.batch for d in stages),
        objective=s.objective, feasible=not reasons,
        violation_ms=max(0.0, s.latency_ms - pipeline.slo_ms),
        shortfall_rps=s.shortfall_rps, reasons=reasons)
