"""One scheduling pass, ``place_queue``: the same results as ``select.place`` +
``table.assume`` one request at a time, in fewer numpy calls per request.

What it saves, per request:

- the label / schedulable mask is computed once per label set for the whole
  pass (neither changes during a pass); the resource checks are one compare
  per asked column, and candidates are never extracted;
- ``best`` and ``worst`` are not scored per request at all. On a row with
  room, a worker's leftover is ``W_i - K(d)``: a per-node key ``W_i = sum_r
  a_r * free_ir`` (``a_r`` the scorer's absolute factors) minus a constant of
  the request, so the best rows are those of least (best) or most (worst)
  key, found by argmin passes (the first minimum: ties by node order). The
  pass keeps ``W`` and recomputes it, in Python, only for the rows a
  placement touched. Rounding may order rows whose keys lie within ``NEAR``
  of each other differently from the scorer, so unless all such rows have
  equal free amounts (an exact tie) they are re-ranked by the scorer's own
  numbers (``scoring.absolute_left``, bit for bit ``worst``): the ranking
  ``place`` makes;
- ``first`` takes the first rows with room; the other scorers are computed
  once per request and masked with -inf, ranked by argmax passes;
- per-core shares of equal size (the common case) are checked and packed on
  plain ints per row (``workers_fit``, ``cores.equal_fit_row``,
  ``cores.pack_equal_row``: each share of a worker on its own core), only
  for the rows the ranking reaches, as ``place`` does;
- cores of plain cpu requests are not chosen here at all: ``reserve`` binds
  them (the choice never changes which nodes fit), so the scheduler's
  reserves in queue order bind what place + reserve one by one bind;
- a gang's slot arithmetic, ``use`` and subtraction work on Python ints
  (a copy of ``free`` kept row by row, stored back by scalar);
- best and worst, the daemon's common case, run in one method (``keyed``):
  argmin passes, capacities and the usual "no near tie" check inline, the
  general dealers skipped where their answer is known (k rows for a spread
  gang: one worker each; a packed gang: all rows full but the last).

- GPU devices the same way as equal per-core shares (``workers_fit_gpus``,
  ``take_gpus``): whole GPUs are equal shares of 1000 on distinct devices,
  a fraction one share of one device;
- rows with too few cores or devices ever to hold one worker
  (``checks.could_hold``, cached) are masked out first, as ``place`` does.

Exclusive requests, gangs of more than 8, per-core shares of different sizes
and requests whose best rows mostly fail the per-core or per-device check go
through ``place`` itself on the same working copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from oaasd.core.placement.checks import Refusal, could_hold, label_match, refuse
from oaasd.core.placement.cores import equal_fit_row, pack_equal_row
from oaasd.core.placement.scoring import (
    BUILTIN,
    absolute_left,
    node_weights,
    score_rows,
    scorer,
)
from oaasd.core.placement.select import pack_slots, pick, place, rank, spread_slots
from oaasd.core.placement.table import NodeTable, Placement, Request, assume

_INF = np.inf
# Keys and scores are sums of at most 3 terms in [0, 1], each off by at most
# 2**-53 relative: two rows whose keys differ by more than NEAR are ordered by
# the scorer exactly as by the key.
NEAR = 1e-9
_KEYED = {"best": 1.0, "worst": -1.0}  # fit -> sign of W in the key (least key first)


def _least(a: np.ndarray) -> float:
    """The smallest entry of a float vector: argmin is SIMD in numpy 2 and ~2x the speed
    of ``np.minimum.reduce`` here (``ndarray.min`` also goes through a Python wrapper)."""
    return a[a.argmin()]


def place_queue(table: NodeTable, requests: Sequence[Request], fit: str = "best",
                weights: np.ndarray | None = None) -> list[Placement | Refusal]:
    """Place requests in order on a working copy, subtracting each placement before
    the next (Kubernetes' "assume"); ``table`` itself is not changed.

    A refused request does not block later ones (ordering and backfill are
    the policy's business). Reserving the placements on ``table`` in the same
    order cannot fail while ``table`` is unchanged (and binds the cores of
    plain cpu requests as ``place`` + ``reserve`` one by one would).
    """
    work = table.copy()
    if not requests:
        return []
    lean = _Pass(work, fit, weights)
    if lean.score_of not in BUILTIN:  # a scorer added to SCORERS may score -inf: place one by one
        return [lean.fallback(req) for req in requests]
    return [lean.place(req) for req in requests]


class _Pass:
    """The working copy of one pass and what the pass keeps in step with it."""

    def __init__(self, work: NodeTable, fit: str, weights: np.ndarray | None):
        self.work, self.fit, self.weights = work, fit, weights
        self.score_of = scorer(fit)
        self.free = work.free
        self.cols = [work.free[:, r] for r in range(work.free.shape[1])]  # views: contiguous columns
        self.rows_of = work.free.tolist()  # free as Python ints, row by row, kept in step
        self.cores_of: dict[int, list[int]] = {}  # core_free rows as Python ints, made on demand
        self.gpus_of: dict[int, tuple] = {}  # gpu_free rows, device kinds and fits, made on demand
        self.static: dict[tuple, np.ndarray] = {}  # label set -> schedulable & labels match
        self.zeros: dict[int, np.ndarray] = {}  # rows -> read-only zero core use (no_cores)
        self.sign = _KEYED.get(fit)
        if self.sign is not None:
            self.factors = node_weights(work, weights).absolute
            self.key = self.sign * sum(col * a for col, a in zip(self.cols, self.factors))
            self.key[~work.schedulable] = _INF  # never placed on, so never re-keyed: no state check
            self.ids: dict[tuple[int, ...], int] = {}  # free amounts -> id, for ``same``
            self.same = np.array([self.ids.setdefault(tuple(row), len(self.ids)) for row in self.rows_of])

    def touched(self, rows: list[int]) -> None:
        """Bring the Python rows and the keys of ``rows`` back in step with ``free``
        (which ``place`` changed): subtract the difference."""
        for i in rows:
            self.cores_of.pop(i, None)
            self.gpus_of.pop(i, None)
            self.subtract(i, [a - b for a, b in zip(self.rows_of[i], self.free[i].tolist())])

    def subtract(self, i: int, use: list[int]) -> None:
        """Take ``use`` from row i: ``free`` by three scalar stores (less than a row op),
        its Python copy, and for best / worst its key and ``same`` id (in one call: this
        runs for every row every placement touches)."""
        f0, f1, f2 = self.rows_of[i]
        r0, r1, r2 = f0 - use[0], f1 - use[1], f2 - use[2]
        self.rows_of[i] = [r0, r1, r2]
        c0, c1, c2 = self.cols
        c0[i], c1[i], c2[i] = r0, r1, r2
        if self.sign is not None:
            a0, a1, a2 = self.factors
            self.key[i] = self.sign * (a0 * r0 + a1 * r1 + a2 * r2)
            self.same[i] = self.ids.setdefault((r0, r1, r2), len(self.ids))

    def cores(self, i: int) -> tuple[list[int], dict[int, int]]:
        """Row i's free millicores per core, as Python ints, and its cache of how many
        shares of each size its cores take (made on demand, dropped when touched)."""
        hit = self.cores_of.get(i)
        if hit is None:
            hit = self.cores_of[i] = (self.work.core_free[i].tolist(), {})
        return hit

    def workers_fit(self, i: int, share: int, p: int, k: int) -> int:
        """How many workers (at most k) of p shares of ``share`` millicores row i's cores
        take, each share of a worker on its own core (``cores.equal_fit_row``)."""
        row, known = self.cores(i)
        n = known.get((share, p, k))
        if n is None:
            n = known[share, p, k] = equal_fit_row(row, share, p, k)
        return n

    def workers_fit_gpus(self, i: int, req: Request, k: int) -> int:
        """How many workers (at most k) of ``req``'s GPUs row i's devices (of its type) take."""
        hit = self.gpus_of.get(i)
        if hit is None:
            hit = self.gpus_of[i] = (self.work.gpu_free[i].tolist(), self.work.gpu_kind[i].tolist(), {})
        share, p = req.gpu_shares
        key = (share, p, k, req.gpu_type)
        n = hit[2].get(key)
        if n is None:
            n = hit[2][key] = equal_fit_row(self.devices(i, req), share, p, k)
        return n

    def devices(self, i: int, req: Request) -> list[int]:
        """Row i's free milli-GPUs per device of ``req``'s type (``checks.device_row``)."""
        free, kinds, _ = self.gpus_of.get(i) or (self.work.gpu_free[i].tolist(), self.work.gpu_kind[i].tolist(), 0)
        if req.gpu_type is None:
            return free
        code = self.work.gpu_kinds.index(req.gpu_type) if req.gpu_type in self.work.gpu_kinds else -2
        return [f if kd == code else 0 for f, kd in zip(free, kinds)]

    def take_gpus(self, req: Request, rows: list[int], take: list[int]) -> np.ndarray:
        """Pack ``take`` workers' GPUs on each row's devices and subtract them: (m, G) int64."""
        share, p = req.gpu_shares
        gpu_use = np.array([pack_equal_row(self.devices(i, req), share, p, t) for i, t in zip(rows, take)], np.int64)
        for i, u in zip(rows, gpu_use):
            self.work.gpu_free[i] -= u
            self.gpus_of.pop(i, None)
        return gpu_use

    def place(self, req: Request) -> Placement | Refusal:
        """Place one request: here, or through ``place`` for what the loop does not specialise
        (exclusive, more than 8 workers, per-core shares of different sizes)."""
        if req.exclusive or req.workers > 8 or (req.cores and req.shares[0] != req.shares[-1]):
            return self.fallback(req)
        self.held: dict[int, int] = {}  # row -> workers of this request it holds
        base = self.static.get(req.label_key)
        if base is None:
            base = self.static[req.label_key] = self.work.schedulable & label_match(self.work, req)
        ok = None
        for r, x in req.asked:  # one contiguous column per resource
            if ok is None:
                ok = self.cols[r] >= x
            else:
                ok &= self.cols[r] >= x
        if req.cores or req.gpu_milli:
            ok &= could_hold(self.work, req)
        if self.sign is not None:  # the common case, in the fewest calls
            if req.labels:
                ok &= base
            return self.keyed(req, ok)
        ok &= base
        best = self.select(req, ok)
        if best is None:  # too many rows failed the per-core check: as place does it
            return self.fallback(req)
        if best and req.workers == 1 and not (req.cores or req.gpu_milli):
            return self.take_one(req, best[0])
        return self.take_gang(req, best) if best else self.refuse(req, 0)

    def keyed(self, req: Request, ok: np.ndarray) -> Placement | Refusal:
        """``select`` + ``take_one`` / ``take_gang`` for best or worst fit, inlined: argmin
        passes on the key, skipping rows whose cores refuse equal shares, each row's
        capacity as it is taken, a packed gang stopping once its rows hold it, then
        ``exact`` unless nothing lies within NEAR (one C call) and the chosen rows are
        exact ties or apart. One method: the daemon's common case, in the fewest calls."""
        k = req.workers
        masked = np.where(ok, self.key, _INF)
        argmin, rows_of, asked = masked.argmin, self.rows_of, req.asked
        best, keys, cap = [], [], []
        held, packed, refused = 0, not req.spread, 0
        share, p = (int(req.shares[0]), len(req.shares)) if req.cores else (0, 0)
        gpus = req.gpu_milli
        while len(best) < k:
            i = int(argmin())
            v = float(masked[i])
            if v == _INF:
                break
            masked[i] = _INF
            row, c = rows_of[i], k
            if share:  # as ``select.pick`` with ``fits``: past 4k + 16 refused rows, place answers
                q = self.workers_fit(i, share, p, k)
                if not q:
                    refused += 1
                    if refused > 4 * k + 16:
                        return self.fallback(req)
                    continue
                c = min(c, q)
            if gpus:
                q = self.workers_fit_gpus(i, req, k)
                if not q:
                    refused += 1
                    if refused > 4 * k + 16:
                        return self.fallback(req)
                    continue
                c = min(c, q)
            for r, x in asked:  # a compare, not a call of min(), per resource: it costs less
                q = row[r] // x
                if q < c:  # noqa: PLR1730
                    c = q
            best.append(i)
            keys.append(v)
            cap.append(c)
            held += c
            if packed and held >= k:
                break
        if not best:
            return self.refuse(req, 0)
        if not (masked[argmin()] > keys[-1] + NEAR and (len(best) == 1 or all(
                b - a > NEAR or rows_of[i] == rows_of[j] for a, b, i, j in zip(keys, keys[1:], best, best[1:])))):
            ranked = self.exact(req, best, keys, masked, len(best), self.fits(req))
            if ranked != best:
                best, cap = ranked, [self.holds(req, i) for i in ranked]
                if packed and len(best) < k and sum(cap) < k:
                    return self.fallback(req)  # re-ranking a short prefix left it too small: rare
        if k == 1 and not (share or gpus):
            return self.take_one(req, best[0])
        return self.deal(req, best, cap)

    def deal(self, req: Request, best: list[int], cap: list[int]) -> Placement | Refusal:
        """Deal k workers over ranked rows that hold ``cap`` each and subtract them:
        ``place``'s slot arithmetic, and ``pack_cores`` for equal shares, on plain ints."""
        k = req.workers
        rest = k - sum(cap[:-1])
        if req.spread and len(cap) == k:  # k rows that hold one or more each: one worker per row
            take = [1] * k
        elif req.spread:
            take = spread_slots(cap, k)
        elif 0 < rest <= cap[-1]:  # what pack_slots gives when only the last row is not filled
            take = cap[:-1] + [rest]
        else:
            take = pack_slots(cap, k)
        if sum(take) != k:
            return self.refuse(req, sum(cap))
        m = len(take) - take.count(0)  # the rows used are a prefix of the ranked rows
        rows, take = best[:m], take[:m]
        d0, d1, d2 = req.demand_list
        use = [[t * d0, t * d1, t * d2] for t in take]
        core_use = self.take_cores(req, rows, take) if req.cores else self.no_cores(m)
        gpu_use = self.take_gpus(req, rows, take) if req.gpu_milli else None
        for i, u in zip(rows, use):
            self.subtract(i, u)
        return Placement(tuple(zip(rows, take)), np.array(use, np.int64), core_use, False, gpu_use)

    def take_cores(self, req: Request, rows: list[int], take: list[int]) -> np.ndarray:
        """Pack ``take`` workers' equal shares on each row's cores and subtract them: (m, c) int64."""
        share, p = int(req.shares[0]), len(req.shares)
        core_use = np.array([pack_equal_row(self.cores(i)[0], share, p, t) for i, t in zip(rows, take)], np.int64)
        for i, u in zip(rows, core_use):
            self.work.core_free[i] -= u
            self.cores_of.pop(i, None)
        return core_use

    def fallback(self, req: Request) -> Placement | Refusal:
        """``place`` on the working copy, and subtract what it placed."""
        result = place(self.work, req, self.fit, self.weights)
        if isinstance(result, Placement):
            assume(self.work, result)  # just placed on work: it fits
            self.touched(result.nodes.tolist())
        return result

    def fits(self, req: Request) -> Callable[[int], bool] | None:
        """Whether one worker's equal per-core shares and GPUs fit row i (``fine_fit``), or None."""
        if not (req.cores or req.gpu_milli):
            return None
        if not req.cores:
            return lambda i: self.workers_fit_gpus(i, req, 1) >= 1
        share, p = int(req.shares[0]), len(req.shares)
        if not req.gpu_milli:
            return lambda i: self.workers_fit(i, share, p, 1) >= 1
        return lambda i: self.workers_fit(i, share, p, 1) >= 1 and self.workers_fit_gpus(i, req, 1) >= 1

    def select(self, req: Request, ok: np.ndarray) -> list[int] | None:
        """The best min(k, m) rows with room, best first, exactly as ``place`` ranks them,
        or for a packed gang just the best rows that hold it (the rows ``place`` would
        use); None when ``place`` itself must answer (many rows fail the per-core check)."""
        k, fits = req.workers, self.fits(req)
        holds = None if k == 1 or req.spread else (lambda i: self.holds(req, i))
        if self.fit == "first":  # every row scores 1: node order
            masked = np.where(ok, 0.0, _INF)
            return pick(masked, k, fits, holds, masked.argmin, _INF)[0]
        if self.sign is None:
            masked = np.where(ok, self.score_of(self.work, req, self.weights), -_INF)
            return pick(masked, k, fits, holds, masked.argmax, -_INF)[0]
        masked = np.where(ok, self.key, _INF)
        best, keys = pick(masked, k, fits, holds, masked.argmin, _INF)
        if not best:
            return best
        ranked = self.exact(req, best, keys, masked, len(best), fits)
        if holds is None or len(best) == k or ranked == best or sum(map(holds, ranked)) >= k:
            return ranked
        return None  # re-ranking a short prefix left it too small: rare, let place answer

    def holds(self, req: Request, i: int) -> int:
        """Workers of ``req`` row i holds, at most k (``place``'s capacity, on plain ints);
        remembered for the request being placed (``held``, reset per request)."""
        c = self.held.get(i)
        if c is None:
            row, c = self.rows_of[i], req.workers
            for r, x in req.asked:
                c = min(c, row[r] // x)
            if req.cores:
                c = min(c, self.workers_fit(i, int(req.shares[0]), len(req.shares), req.workers))
            if req.gpu_milli:
                c = min(c, self.workers_fit_gpus(i, req, req.workers))
            self.held[i] = c
        return c

    def exact(self, req: Request, best: list[int], keys: list[float], masked: np.ndarray,
              k: int, fits: Callable[[int], bool] | None) -> list[int]:
        """``best`` as the scorer ranks it. Unless every row within NEAR of another (the
        chosen ones, and those left out within NEAR of the last) has the same free
        amounts as it (an exact tie: node order, as argmin took them), the chosen
        rows and those left out are re-ranked by the scorer's own numbers."""
        rows_of = self.rows_of
        near, ties = self.near(masked, keys[-1] + NEAR, best[-1], fits)
        if ties and (len(best) == 1 or all(b - a > NEAR or rows_of[p] == rows_of[q]
                                           for a, b, p, q in zip(keys, keys[1:], best, best[1:]))):
            return best
        left_out = [] if near is None else np.flatnonzero(near).tolist()
        band = sorted(best + (left_out if fits is None else [i for i in left_out if fits(i)]))
        if len(band) > 64:  # many rows: the scorer itself, on those rows
            score = score_rows(self.score_of, self.work, req, self.weights, np.array(band, np.int64))
            return rank(np.array(band, np.int64), score, k).tolist()
        demand, factors, best_fit = req.demand_list, self.factors, self.sign > 0
        memo: dict[tuple[int, ...], float] = {}  # the band is mostly a few kinds of identical rows
        score = {}
        for i in band:
            row = rows_of[i]
            got = memo.get(tuple(row))
            if got is None:  # ``best`` is 1 - left, rounded as the scorer rounds it; ``worst`` left
                left = absolute_left(row, demand, factors)
                got = memo[tuple(row)] = 1.0 - left if best_fit else left
            score[i] = got
        # Highest score first; the band is in node order and a stable sort keeps it on ties.
        return sorted(band, key=score.__getitem__, reverse=True)[:k]

    def near(self, masked: np.ndarray, bound: float, last: int,
             fits: Callable[[int], bool] | None) -> tuple[np.ndarray | None, bool]:
        """The rows left out whose key is at most ``bound`` ((n,) bool, None for none),
        and whether all of them with room have the free amounts of row ``last``, the
        last chosen: such rows tie it exactly and come after it (argmin took the
        lowest index first). Equal free amounts are equal ``same`` ids: no row compare."""
        if _least(masked) > bound:  # the common case: one fast C call
            return None, True
        near = masked <= bound
        differ = near & (self.same != self.same[last])
        if fits is None:
            return near, not np.count_nonzero(differ)
        return near, not any(fits(i) for i in np.flatnonzero(differ).tolist())

    def take_one(self, req: Request, i: int) -> Placement:
        """Record one worker on row i and subtract it (what ``place`` + ``assume`` do)."""
        self.subtract(i, req.demand.tolist())
        return Placement(((i, 1),), req.demand_row, self.work.no_core_use, False)

    def take_gang(self, req: Request, best: list[int]) -> Placement | Refusal:
        """Deal the workers over the ranked rows (capacities from ``holds``) and subtract them."""
        return self.deal(req, best, [self.holds(req, i) for i in best])

    def no_cores(self, m: int) -> np.ndarray:
        """A read-only (m, c) zero core use, shared by the placements of m rows."""
        zeros = self.zeros.get(m)
        if zeros is None:
            zeros = self.zeros[m] = np.zeros((m, self.work.core_free.shape[1]), np.int64)
            zeros.flags.writeable = False
        return zeros

    def refuse(self, req: Request, slots: int) -> Refusal:
        """The Refusal ``place`` gives, with every check's counts."""
        return refuse(self.work, req, slots)
