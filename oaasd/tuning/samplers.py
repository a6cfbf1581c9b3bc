"""Samplers: configurations proposed from the history of a tuning.

Each implements the ``Sampler`` seam: ``suggest(history, pending, n)``
returns up to ``n`` configurations, distinct from each other and from
``pending``, and from evaluated ones wherever the space leaves room (a
finite space may run out: then fewer come back). The result depends only on
the sampler's seed and the arguments: a sampler's random stream is derived
from ``(seed, len(history), len(pending))``. ``GPSampler`` keeps the last
fitted hyper-parameters as a warm start; that changes its cost, barely its
choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from oaasd.tuning import acquisition
from oaasd.tuning.gp import GP, condition_on, fit_gp, predict
from oaasd.tuning.pareto import chebyshev, random_weights, to_minimize
from oaasd.tuning.space import Space

MAX_DRAWS_PER_SUGGESTION = 64


@dataclass(frozen=True)
class Observation:
    """One finished trial as a sampler sees it.

    ``values`` are the objectives in the description's order (None when the
    trial failed or was stopped early: it then only counts as taken);
    ``slacks`` one per constraint, ``>= 0`` when satisfied.
    """

    config: dict[str, Any]
    values: tuple[float, ...] | None
    slacks: tuple[float, ...] = ()

    @property
    def feasible(self) -> bool:
        """Completed and every constraint satisfied."""
        return self.values is not None and all(s >= 0 for s in self.slacks)


def _rng(seed: int, history: Sequence[Any], pending: Sequence[Any], salt: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, len(history), len(pending), salt])


class _Distinct:
    """Keeps the keys already taken and accepts a configuration only once."""

    def __init__(self, space: Space, history: Sequence[Observation], pending: Sequence[dict]):
        self.space = space
        self.evaluated = {space.key(o.config) for o in history}
        self.taken = {space.key(c) for c in pending}

    def accept(self, config: dict, allow_evaluated: bool = False) -> bool:
        k = self.space.key(config)
        if k in self.taken or (k in self.evaluated and not allow_evaluated):
            return False
        self.taken.add(k)
        return True


def _fill(space: Space, draw, distinct: _Distinct, n: int) -> list[dict]:
    """Take ``n`` configurations from the stream ``draw(m) -> list[dict]``, skipping duplicates.

    In a space that has run out of unseen configurations, evaluated ones are
    allowed again (never pending ones).
    """
    out: list[dict] = []
    for allow_evaluated in (False, True):
        draws = 0
        while len(out) < n and draws < MAX_DRAWS_PER_SUGGESTION * n:
            for c in draw(n - len(out)):
                draws += 1
                if len(out) < n and distinct.accept(c, allow_evaluated):
                    out.append(c)
        if len(out) == n or not space.is_finite:
            break
    return out


class RandomSampler:
    """Independent uniform draws (log-uniform where ``log``)."""

    def __init__(self, space: Space, seed: int = 0):
        self.space, self.seed = space, seed

    def suggest(self, history: Sequence[Observation], pending: Sequence[dict], n: int) -> list[dict]:
        """Up to ``n`` random configurations."""
        rng = _rng(self.seed, history, pending, 1)
        return _fill(self.space, lambda m: self.space.sample(rng, m), _Distinct(self.space, history, pending), n)


class SobolSampler:
    """A scrambled Sobol sequence over the sampling cube, continued across calls."""

    def __init__(self, space: Space, seed: int = 0):
        self.space, self.seed = space, seed

    def suggest(self, history: Sequence[Observation], pending: Sequence[dict], n: int) -> list[dict]:
        """Up to ``n`` configurations: the next points of the sequence (index = trials so far)."""
        return sobol_points(self.space, self.seed, len(history) + len(pending),
                            _Distinct(self.space, history, pending), n)


def sobol_points(space: Space, seed: int, start: int, distinct: _Distinct, n: int) -> list[dict]:
    """Points ``start, start+1, ...`` of the seeded scrambled Sobol sequence that ``distinct`` accepts."""
    from scipy.stats import qmc

    state = {"next": start}

    def draw(m: int) -> list[dict]:
        lo = state["next"]
        state["next"] = lo + m
        total = 1 << max(1, math.ceil(math.log2(lo + m)))  # whole powers of two keep the balance
        if total > 1 << 16:
            return space.sample(np.random.default_rng([seed, lo]), m)
        U = qmc.Sobol(space.n_params, scramble=True, rng=seed & 0xFFFFFFFF).random(total)
        return space.from_unit(U[lo:lo + m])

    return _fill(space, draw, distinct, n)


class GPSampler:
    """Bayesian optimization: a GP per objective scalarization and per constraint, constrained log EI.

    The first ``n_init`` trials (default ``max(5, P + 1)``) follow the Sobol
    sequence. Several objectives are scalarized by an augmented Chebyshev
    function with fresh random weights for each suggestion. A batch (and the
    pending trials) is made diverse by a constant liar: each chosen point is
    added to the objective GP with the best observed value (CL-min: measured
    better than the mean on all four benchmarks but the mixed one) and to
    the constraint GPs with their own prediction before the next is chosen.
    """

    def __init__(self, space: Space, senses: Sequence[str] = ("minimize",), seed: int = 0,
                 n_init: int | None = None, n_candidates: int = 512):
        self.space, self.senses, self.seed = space, tuple(senses), seed
        self.n_init = n_init if n_init is not None else max(5, space.n_params + 1)
        self.n_candidates = n_candidates
        self._warm: dict[str, np.ndarray] = {}

    def suggest(self, history: Sequence[Observation], pending: Sequence[dict], n: int) -> list[dict]:
        """Up to ``n`` configurations maximizing constrained EI, given ``pending`` ones."""
        done = [o for o in history if o.values is not None]
        distinct = _Distinct(self.space, history, pending)
        n_sobol = n if len(done) < 2 else min(n, max(0, self.n_init - len(history) - len(pending)))
        out = sobol_points(self.space, self.seed, len(history) + len(pending), distinct, n_sobol)
        if len(out) == n or len(done) < 2:
            return out
        rng = _rng(self.seed, history, pending, 3)
        taken = self.space.encode_many([o.config for o in history] + list(pending) + out)
        Z = self.space.encode_many([o.config for o in done])
        Y = to_minimize(np.array([o.values for o in done]), self.senses)
        slacks = np.array([o.slacks for o in done], float).reshape(len(done), -1)
        feasible = np.array([o.feasible for o in done])
        # slack >= 0 is feasible: the pessimistic prior mean is a low quantile
        cons = [self._fit(f"c{i}", Z, slacks[:, i], rng, 0.25) for i in range(slacks.shape[1])]
        fantasies = np.vstack([self.space.encode_many(pending), taken[len(taken) - len(out):]])
        cons = [condition_on(g, fantasies, _believed(g, fantasies)) for g in cons]
        obj = None if Y.shape[1] > 1 else self._fit("obj", Z, Y[:, 0], rng)
        while len(out) < n:
            y = Y[:, 0] if Y.shape[1] == 1 else chebyshev(Y, ["minimize"] * Y.shape[1], random_weights(rng, Y.shape[1]))
            gp = obj if obj is not None else self._fit("obj", Z, y, rng)
            z = self._choose(gp, y, cons, feasible, Z, fantasies, taken, rng)
            if z is None:
                break
            out.append(self.space.decode(z))
            distinct.accept(out[-1], allow_evaluated=True)
            fantasies = np.vstack([fantasies, z[None, :]])
            taken = np.vstack([taken, z[None, :]])
            cons = [condition_on(g, z[None, :], _believed(g, z[None, :])) for g in cons]
        if len(out) < n:  # a finite space with nothing left untried: repeats, never of pending ones
            out += _fill(self.space, lambda m: self.space.sample(rng, m), distinct, n - len(out))
        return out

    def _fit(self, key: str, Z: np.ndarray, y: np.ndarray, rng: np.random.Generator, quantile: float = 0.75) -> GP:
        warm = self._warm.get(key)
        gp = fit_gp(Z, y, rng, warm_start=warm, maxiter=80 if warm is None or len(y) <= 60 else 15,
                    prior_mean_quantile=quantile)
        self._warm[key] = gp.theta
        return gp

    def _choose(self, gp: GP, y: np.ndarray, cons: list[GP], feasible: np.ndarray, Z: np.ndarray,
                fantasies: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """One point: EI under the objective GP with the fantasies added at the best value."""
        lie = np.full(len(fantasies), float(y.min()))
        gp = condition_on(gp, fantasies, lie)
        if feasible.any():
            best = float(y[feasible].min())
            order = np.argsort(np.where(feasible, y, np.inf))[: min(5, int(feasible.sum()))]
            acq = acquisition.Acquisition(gp, best, tuple(cons))
        else:  # nothing feasible yet: look for feasibility alone, near the least violating
            order = np.argsort(-_least_violation(cons, Z))[:5]
            acq = acquisition.Acquisition(None, 0.0, tuple(cons))
        return acquisition.maximize(acq, self.space, rng, taken, Z[order], n_sobol=self.n_candidates)


def _believed(gp: GP, Z: np.ndarray) -> np.ndarray:
    """The GP's posterior mean at ``Z``: the value a constraint's fantasy takes."""
    return predict(gp, Z)[0] if len(Z) else np.empty(0)


def _least_violation(cons: list[GP], Z: np.ndarray) -> np.ndarray:
    """(n,) minus the summed violation of the observed points (higher is nearer feasible)."""
    total = np.zeros(len(Z))
    for g in cons:
        slack = g.y_mean + g.y_scale * g.y[: len(Z)]
        total += np.minimum(slack, 0.0)
    return total


def make_sampler(name: str, space: Space, senses: Sequence[str], seed: int):
    """The sampler a description names (``random``, ``sobol`` or ``gp``)."""
    if name == "random":
        return RandomSampler(space, seed)
    if name == "sobol":
        return SobolSampler(space, seed)
    if name == "gp":
        return GPSampler(space, senses, seed)
    raise ValueError(f"unknown sampler {name!r}")
