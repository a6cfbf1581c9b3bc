"""The search space: configurations to and from the unit cube.

Two cubes serve two purposes:

- the **model encoding** ``(D,)`` in ``[0, 1]`` that the GP sees: float and
  int scaled (log-aware), ordinal as its index scaled, categorical as a
  one-hot block; an inactive parameter holds its default's encoding, so a
  configuration has exactly one encoding and ``decode(encode(c)) == c``.
- the **sampling cube** ``(P,)``, one coordinate per parameter, which random
  and Sobol samplers draw from so that every value, integer and choice gets
  an equal share of the cube.

Everything is vectorized over rows; ``P`` parameters, ``D`` encoded dims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from oaasd.tuning.description import (
    CategoricalParam,
    FloatParam,
    IntParam,
    OrdinalParam,
    choice_key,
)

FLOAT_KEY_DIGITS = 12  # floats equal to 12 significant digits are one configuration


@dataclass(frozen=True)
class _Dim:
    """Where one parameter lives in the model encoding."""

    param: Any
    start: int
    width: int
    parent: int | None          # index of the parent parameter, in ``Space.params``
    parent_values: tuple = ()   # parent values (as stored) that activate this one


class Space:
    """The geometry of a list of parameters (from ``TuningDescription.parameters``)."""

    def __init__(self, parameters: Sequence[Any]):
        order = _topological(list(parameters))
        self.params = order
        self.names = [p.name for p in order]
        index = {p.name: i for i, p in enumerate(order)}
        dims, start = [], 0
        for p in order:
            width = len(p.choices) if isinstance(p, CategoricalParam) else 1
            parent = index[p.condition.parent] if p.condition else None
            values = p.condition.values if p.condition else ()
            dims.append(_Dim(p, start, width, parent, values))
            start += width
        self.dims: list[_Dim] = dims
        self.n_dims = start                      # D
        self.n_params = len(order)               # P
        self.default_row = self._encode_values([p.default for p in order])

    # -- kinds of dims -------------------------------------------------------
    def kind_mask(self, *kinds: type) -> np.ndarray:
        """(D,) bool: encoded dims that belong to parameters of ``kinds``."""
        mask = np.zeros(self.n_dims, bool)
        for d in self.dims:
            if isinstance(d.param, kinds):
                mask[d.start:d.start + d.width] = True
        return mask

    @property
    def is_finite(self) -> bool:
        """True when every parameter is discrete (the space can be exhausted)."""
        return not any(isinstance(p, FloatParam) for p in self.params)

    # -- configurations -------------------------------------------------------
    def default_config(self) -> dict[str, Any]:
        """The defaults of the parameters that are active under the defaults."""
        return self.decode(self.default_row)

    def active(self, values: dict[str, Any]) -> list[bool]:
        """Which parameters (in ``self.params`` order) are active given ``values``."""
        act: list[bool] = []
        for d in self.dims:
            if d.parent is None:
                act.append(True)
                continue
            pv = values.get(self.names[d.parent])
            act.append(act[d.parent] and pv is not None and _is_in(pv, d.parent_values))
        return act

    def validate(self, config: dict[str, Any]) -> list[str]:
        """Reasons ``config`` is not a valid configuration (empty when valid)."""
        errors = [f"unknown parameter {k!r}" for k in config if k not in self.names]
        for d, on in zip(self.dims, self.active(config)):
            name = d.param.name
            if not on:
                if name in config:
                    errors.append(f"parameter {name!r} is inactive but present")
            elif name not in config:
                errors.append(f"parameter {name!r} is active but missing")
            elif not _in_domain(d.param, config[name]):
                errors.append(f"parameter {name!r}: {config[name]!r} is outside its domain")
        return errors

    def key(self, config: dict[str, Any]) -> tuple:
        """A hashable identity of a configuration (floats to 12 significant digits)."""
        return tuple(
            (n, float(f"{v:.{FLOAT_KEY_DIGITS}g}") if isinstance(v, float) else choice_key(v))
            for n, v in sorted(config.items())
        )

    # -- model encoding --------------------------------------------------------
    def encode(self, config: dict[str, Any]) -> np.ndarray:
        """(D,) encoding of one configuration; inactive parameters get their default's code."""
        return self.encode_many([config])[0]

    def encode_many(self, configs: Sequence[dict[str, Any]]) -> np.ndarray:
        """(m, D) encodings of ``configs``."""
        Z = np.tile(self.default_row, (len(configs), 1))
        for d in self.dims:
            p, name = d.param, d.param.name
            rows = [i for i, c in enumerate(configs) if name in c]
            if not rows:
                continue
            vals = [configs[i][name] for i in rows]
            if isinstance(p, (FloatParam, IntParam)):
                x = np.array(vals, float)
            else:
                keys = {choice_key(c): j for j, c in enumerate(p.choices)}
                x = np.array([keys[choice_key(v)] for v in vals])
            Z[np.array(rows), d.start:d.start + d.width] = _encode_index(p, x)
        return Z

    def _encode_values(self, values: Sequence[Any]) -> np.ndarray:
        z = np.empty(self.n_dims)
        for d, v in zip(self.dims, values):
            z[d.start:d.start + d.width] = _encode_one(d.param, v)
        return z

    def decode(self, z: np.ndarray) -> dict[str, Any]:
        """The configuration nearest to a point ``z: (D,)`` of the cube."""
        return self.decode_many(np.asarray(z, float)[None, :])[0]

    def decode_many(self, Z: np.ndarray) -> list[dict[str, Any]]:
        """Configurations for rows of ``Z: (m, D)`` (rounded, conditions applied)."""
        values, active = self._values(Z)
        return [
            {d.param.name: _py(d.param, values[j][i]) for j, d in enumerate(self.dims) if active[j][i]}
            for i in range(Z.shape[0])
        ]

    def snap(self, Z: np.ndarray) -> np.ndarray:
        """(m, D): each row replaced by the encoding of its nearest configuration."""
        values, active = self._values(Z)
        out = np.empty_like(Z, dtype=float)
        for j, d in enumerate(self.dims):
            code = _encode_index(d.param, values[j])
            sl = slice(d.start, d.start + d.width)
            out[:, sl] = np.where(active[j][:, None], code, self.default_row[sl])
        return out

    def _values(self, Z: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per parameter, (m,) values (floats, ints or choice indices) and activity."""
        Z = np.clip(np.asarray(Z, float), 0.0, 1.0)
        values, active = [], []
        for d in self.dims:
            values.append(_decode_index(d.param, Z[:, d.start:d.start + d.width]))
            if d.parent is None:
                active.append(np.ones(Z.shape[0], bool))
            else:
                ok = _index_in(self.dims[d.parent].param, values[d.parent], d.parent_values)
                active.append(active[d.parent] & ok)
        return values, active

    def continuous_mask(self, Z: np.ndarray) -> np.ndarray:
        """(m, D) bool: dims of the float parameters active in each row of ``Z``.

        Only floats take gradient steps; ints, ordinals and categoricals move
        by ``neighbors`` (rounding a gradient step in an int measured worse).
        """
        _, active = self._values(Z)
        mask = np.zeros(Z.shape, bool)
        for j, d in enumerate(self.dims):
            if isinstance(d.param, FloatParam):
                mask[:, d.start] = active[j]
        return mask

    def neighbors(self, z: np.ndarray) -> np.ndarray:
        """(k, D) snapped encodings one discrete step from ``z: (D,)``.

        An int moves by 1 and by 2% and 10% of its (log-aware) scale, an
        ordinal by one index, a categorical to each other choice; only active
        parameters move.
        """
        values, active = self._values(z[None, :])
        rows = []
        for j, d in enumerate(self.dims):
            p = d.param
            if not active[j][0] or isinstance(p, FloatParam):
                continue
            v = int(values[j][0])
            if isinstance(p, IntParam):
                u = float(_scale(p, np.array([float(v)]))[0])
                moved = _decode_index(p, np.array([[u + s] for s in (-0.1, -0.02, 0.02, 0.1)]))
                alts = {int(x) for x in moved} | {v - 1, v + 1}
                alts = [x for x in alts if p.low <= x <= p.high and x != v]
            elif isinstance(p, OrdinalParam):
                alts = [x for x in (v - 1, v + 1) if 0 <= x < len(p.choices)]
            else:
                alts = [x for x in range(len(p.choices)) if x != v]
            for x in sorted(alts):
                row = z.copy()
                row[d.start:d.start + d.width] = _encode_index(p, np.array([x]))[0]
                rows.append(row)
        if not rows:
            return np.empty((0, self.n_dims))
        return self.snap(np.array(rows))

    # -- sampling cube ---------------------------------------------------------
    def from_unit(self, U: np.ndarray) -> list[dict[str, Any]]:
        """Configurations for rows of ``U: (m, P)`` of the sampling cube."""
        return self.decode_many(self.unit_to_model(U))

    def unit_to_model(self, U: np.ndarray) -> np.ndarray:
        """(m, D) snapped model encodings of sampling-cube rows ``U: (m, P)``."""
        U = np.clip(np.asarray(U, float), 0.0, np.nextafter(1.0, 0.0))
        Z = np.empty((U.shape[0], self.n_dims))
        for j, d in enumerate(self.dims):
            idx = _unit_to_index(d.param, U[:, j])
            Z[:, d.start:d.start + d.width] = _encode_index(d.param, idx)
        return self.snap(Z)

    def sample(self, rng: np.random.Generator, m: int) -> list[dict[str, Any]]:
        """``m`` configurations drawn uniformly (log-uniformly where ``log``)."""
        return self.from_unit(rng.random((m, self.n_params)))


def _topological(params: list[Any]) -> list[Any]:
    """Parents before children, otherwise in the given order."""
    by_name = {p.name: p for p in params}
    out, placed = [], set()

    def place(p: Any) -> None:
        if p.name in placed:
            return
        if p.condition is not None:
            place(by_name[p.condition.parent])
        placed.add(p.name)
        out.append(p)

    for p in params:
        place(p)
    return out


def _is_in(v: Any, values: tuple) -> bool:
    return choice_key(v) in {choice_key(x) for x in values}


def _in_domain(p: Any, v: Any) -> bool:
    if isinstance(p, FloatParam):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and p.low <= v <= p.high
    if isinstance(p, IntParam):
        return isinstance(v, int) and not isinstance(v, bool) and p.low <= v <= p.high
    return _is_in(v, tuple(p.choices))


def _scale(p: Any, v: np.ndarray) -> np.ndarray:
    """Value -> [0, 1] for float and int parameters."""
    if p.log:
        return (np.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
    return (v - p.low) / (p.high - p.low)


def _unscale(p: Any, u: np.ndarray) -> np.ndarray:
    if p.log:
        return np.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
    return p.low + u * (p.high - p.low)


def _encode_one(p: Any, v: Any) -> np.ndarray:
    """Encoding of one stored value (a float, int or a choice)."""
    if isinstance(p, (FloatParam, IntParam)):
        return _encode_index(p, np.array([float(v)]))[0]
    keys = [choice_key(c) for c in p.choices]
    return _encode_index(p, np.array([keys.index(choice_key(v))]))[0]


def _encode_index(p: Any, x: np.ndarray) -> np.ndarray:
    """(m, width) codes of values (float/int) or choice indices (ordinal/categorical)."""
    if isinstance(p, (FloatParam, IntParam)):
        return np.clip(_scale(p, x.astype(float)), 0.0, 1.0)[:, None]
    k = len(p.choices)
    if isinstance(p, OrdinalParam):
        return (x / (k - 1) if k > 1 else np.full(x.shape, 0.5))[:, None]
    return np.eye(k)[x.astype(int)]


def _decode_index(p: Any, z: np.ndarray) -> np.ndarray:
    """(m,) values (float/int) or choice indices from codes ``z: (m, width)``."""
    if isinstance(p, FloatParam):
        return np.clip(_unscale(p, z[:, 0]), p.low, p.high)
    if isinstance(p, IntParam):
        return np.clip(np.rint(_unscale(p, z[:, 0])), p.low, p.high).astype(np.int64)
    if isinstance(p, OrdinalParam):
        return np.rint(z[:, 0] * (len(p.choices) - 1)).astype(np.int64)
    return np.argmax(z, axis=1)


def _unit_to_index(p: Any, u: np.ndarray) -> np.ndarray:
    """Sampling-cube coordinate -> value or choice index, equal shares per value."""
    if isinstance(p, FloatParam):
        return np.clip(_unscale(p, u), p.low, p.high)
    if isinstance(p, IntParam):
        if p.log:  # log-uniform over [low - 1/2, high + 1/2], then round
            lo, hi = math.log(p.low - 0.5), math.log(p.high + 0.5)
            return np.clip(np.rint(np.exp(lo + u * (hi - lo))), p.low, p.high).astype(np.int64)
        return p.low + np.floor(u * (p.high - p.low + 1)).astype(np.int64)
    return np.floor(u * len(p.choices)).astype(np.int64)


def _index_in(parent: Any, values: np.ndarray, allowed: tuple) -> np.ndarray:
    """(m,) bool: which parent values (ints or choice indices) activate a child."""
    if isinstance(parent, IntParam):
        return np.isin(values, [int(a) for a in allowed])
    keys = [choice_key(c) for c in parent.choices]
    return np.isin(values, [keys.index(choice_key(a)) for a in allowed])


def _py(p: Any, x: Any) -> Any:
    """A stored value from a decoded float, int or choice index."""
    if isinstance(p, FloatParam):
        return float(x)
    if isinstance(p, IntParam):
        return int(x)
    return p.choices[int(x)]
