"""Constrained log expected improvement and its maximization over a space.

The acquisition of a point is ``log EI(objective) + sum log P(slack_c >= 0)``
(expected improvement times the probability of feasibility, in logs so it
stays finite and differentiable far from the incumbent). Before any feasible
point is known it is the log probability of feasibility alone.

Maximization: Sobol candidates plus perturbations of the incumbents, all
rounded to valid configurations before they are scored; the best few are
refined jointly by L-BFGS-B over their active float dims (analytic
gradients), then by a discrete hill climb over int, ordinal and categorical
neighbours. Points equal to ``taken`` (evaluated or pending) are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erfcx, log_ndtr, ndtr

from oaasd.tuning.description import CategoricalParam
from oaasd.tuning.gp import GP, predict
from oaasd.tuning.space import Space

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_PI_2 = math.sqrt(math.pi / 2)
_ASYMPTOTIC_Z = -1.0 / math.sqrt(np.finfo(float).eps)


def log_h(z: np.ndarray) -> np.ndarray:
    """``log(phi(z) + z Phi(z))``, stable for very negative ``z``."""
    z = np.asarray(z, float)
    out = np.empty_like(z)
    hi = z > -1.0
    zh = z[hi]
    out[hi] = np.log(np.exp(-0.5 * zh * zh - _LOG_SQRT_2PI) + zh * ndtr(zh))
    mid = ~hi & (z > _ASYMPTOTIC_Z)
    zm = z[mid]
    # h = phi(z) (1 - |z| Phi(z)/phi(z)) with Phi/phi = sqrt(pi/2) erfcx(|z|/sqrt 2)
    out[mid] = -0.5 * zm * zm - _LOG_SQRT_2PI + np.log1p(-(-zm) * _SQRT_PI_2 * erfcx(-zm / math.sqrt(2)))
    lo = ~hi & ~mid
    zl = z[lo]
    out[lo] = -0.5 * zl * zl - _LOG_SQRT_2PI - 2.0 * np.log(-zl)
    return out


def log_ei(mean: np.ndarray, std: np.ndarray, best: float):
    """log EI for minimization and its partial derivatives in ``mean`` and ``std``."""
    z = (best - mean) / std
    lh = log_h(z)
    dlh = np.exp(log_ndtr(z) - lh)  # d log h / dz = Phi(z) / h(z)
    return np.log(std) + lh, -dlh / std, 1.0 / std - dlh * z / std


def log_pof(mean: np.ndarray, std: np.ndarray):
    """log P(slack >= 0) and its partial derivatives in ``mean`` and ``std``."""
    u = mean / std
    lp = log_ndtr(u)
    ratio = np.exp(-0.5 * u * u - _LOG_SQRT_2PI - lp)  # phi(u) / Phi(u)
    return lp, ratio / std, -ratio * u / std


@dataclass(frozen=True)
class Acquisition:
    """log EI of ``objective`` below ``best`` (None: feasibility only) plus log P(feasible)."""

    objective: GP | None
    best: float
    constraints: tuple[GP, ...] = ()

    def __call__(self, Z: np.ndarray, grad: bool = False):
        """Values ``(m,)`` at rows of ``Z: (m, D)``; with ``grad`` also ``(m, D)`` gradients."""
        val = np.zeros(len(Z))
        g = np.zeros(Z.shape) if grad else None
        parts = [(gp, False) for gp in self.constraints]
        if self.objective is not None:
            parts.append((self.objective, True))
        for gp, is_objective in parts:
            out = predict(gp, Z, grad=grad)
            mean, std = out[0], np.maximum(out[1], 1e-12)
            v, dm, ds = log_ei(mean, std, self.best) if is_objective else log_pof(mean, std)
            val += v
            if grad:
                g += dm[:, None] * out[2] + ds[:, None] * out[3]
        return (val, g) if grad else val


def is_taken(Z: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """(m,) bool: rows of ``Z`` equal (to 9 decimals) to some row of ``taken``."""
    if len(taken) == 0 or len(Z) == 0:
        return np.zeros(len(Z), bool)
    keys = {r.tobytes() for r in np.round(taken, 9) + 0.0}  # + 0.0 turns -0.0 into 0.0
    return np.array([r.tobytes() in keys for r in np.round(Z, 9) + 0.0])


def candidates(space: Space, rng: np.random.Generator, incumbents: np.ndarray, n_sobol: int) -> np.ndarray:
    """Snapped candidate rows: a scrambled Sobol set plus perturbed incumbents."""
    from scipy.stats import qmc

    sobol = qmc.Sobol(space.n_params, scramble=True, rng=rng)
    m = 1 << max(1, math.ceil(math.log2(n_sobol)))
    rows = [space.unit_to_model(sobol.random(m)[:n_sobol])]
    if len(incumbents):  # categoricals stay put here: the hill climb tries their other choices
        cat = space.kind_mask(CategoricalParam)
        for scale in (0.002, 0.02, 0.1):
            pert = np.repeat(incumbents, 12, axis=0)
            pert += np.where(cat, 0.0, rng.normal(0.0, scale, pert.shape))
            rows.append(space.snap(np.clip(pert, 0.0, 1.0)))
    return np.vstack(rows)


def maximize(
    acq: Acquisition,
    space: Space,
    rng: np.random.Generator,
    taken: np.ndarray,
    incumbents: np.ndarray,
    n_sobol: int = 512,
    n_refine: int = 4,
    cand: np.ndarray | None = None,
) -> np.ndarray | None:
    """The best snapped row not in ``taken``, or None when every candidate is taken."""
    Z = candidates(space, rng, incumbents, n_sobol) if cand is None else cand
    Z = Z[~is_taken(Z, taken)]
    if len(Z) == 0:
        return None
    vals = acq(Z)
    starts = _distinct_top(Z, vals, n_refine)
    refined = _refine(acq, space, starts)
    pool = np.vstack([starts, refined])
    pool = pool[~is_taken(pool, taken)]
    if len(pool) == 0:
        return None
    pool_vals = acq(pool)
    best = pool[int(np.argmax(pool_vals))]
    return _hill_climb(acq, space, best, float(pool_vals.max()), taken)


def _distinct_top(Z: np.ndarray, vals: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-vals, kind="stable")
    chosen: list[np.ndarray] = []
    for i in order:
        if not chosen or not is_taken(Z[i:i + 1], np.array(chosen))[0]:
            chosen.append(Z[i])
        if len(chosen) == k:
            break
    return np.array(chosen)


def _refine(acq: Acquisition, space: Space, starts: np.ndarray) -> np.ndarray:
    """L-BFGS-B on the active float dims of every start at once (their sum is separable)."""
    from scipy.optimize import minimize

    free = space.continuous_mask(starts)
    if not free.any():
        return starts
    Z = starts.copy()

    def f(v: np.ndarray):
        Z[free] = v
        val, g = acq(Z, grad=True)
        return -float(val.sum()), -g[free]

    res = minimize(f, starts[free], jac=True, method="L-BFGS-B",
                   bounds=[(0.0, 1.0)] * int(free.sum()), options={"maxiter": 60})
    Z[free] = np.clip(res.x, 0.0, 1.0)
    return space.snap(Z)


def _hill_climb(acq: Acquisition, space: Space, z: np.ndarray, val: float, taken: np.ndarray, rounds: int = 3):
    """Move one discrete step at a time while the acquisition improves."""
    for _ in range(rounds):
        nb = space.neighbors(z)
        nb = nb[~is_taken(nb, taken)]
        if len(nb) == 0:
            break
        v = acq(nb)
        i = int(np.argmax(v))
        if v[i] <= val:
            break
        z, val = nb[i], float(v[i])
    return z
