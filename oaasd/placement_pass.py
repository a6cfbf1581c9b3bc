"""The lean loop behind ``placement.place_queue``: the same results as ``place`` + reserve
one request at a time, in fewer numpy calls per request.

What it saves, per request: the label / schedulable mask is computed once per
label set for the whole pass (neither changes during a pass); the resource
checks are one compare over the (n, r) free array; candidates are never
extracted: the score (from the very same scorer ``place`` calls, so bit for
bit the same numbers) is masked with -inf where a node fails, and the best
rows come from argmax passes on it (argmax returns the first maximum, so ties
still go by node order, exactly as ``scoring.rank``); a single worker's
placement and subtraction skip the gang and per-core arithmetic. Requests
this loop does not specialise (per-core shares, exclusive, gangs of more than
8) go through ``place`` itself on the same working copy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from oaasd import placement as pl
from oaasd.scoring import SCORERS, pack_slots, scorer, spread_slots

_NEG = -np.inf
_BOUNDED = frozenset(SCORERS.values())  # the built-in scorers: finite, in [0, 1]


def _one_by_one(work: pl.NodeTable, requests: Sequence[pl.Request], fit: str,
                weights: np.ndarray | None) -> list[pl.Placement | pl.Refusal]:
    """``place`` and subtract, request by request, on ``work`` (changed)."""
    out: list[pl.Placement | pl.Refusal] = []
    for request in requests:
        result = pl.place(work, request, fit, weights)
        if isinstance(result, pl.Placement):
            pl._take(work, result)  # just placed on work: it fits
        out.append(result)
    return out


def place_queue(table: pl.NodeTable, requests: Sequence[pl.Request], fit: str = "best",
                weights: np.ndarray | None = None) -> list[pl.Placement | pl.Refusal]:
    """``placement.place_queue``: see there. ``table`` is not changed."""
    work = table.copy()
    if not requests:
        return []
    score_of = scorer(fit)
    if score_of not in _BOUNDED:  # a scorer added to SCORERS may score -inf: place one by one
        return _one_by_one(work, requests, fit, weights)
    free = work.free
    ncores = work.core_free.shape[1]
    cols = [free[:, r] for r in range(free.shape[1])]  # views: contiguous columns
    rows_of = free.tolist()  # free as Python ints, row by row, kept in step
    static: dict[tuple, np.ndarray] = {}  # label set -> schedulable & labels match: (n,) bool
    out: list[pl.Placement | pl.Refusal] = []
    append = out.append
    Placement = pl.Placement
    for req in requests:
        k = req.workers
        if req.cores or req.exclusive or k > 8:
            result = pl.place(work, req, fit, weights)
            if isinstance(result, Placement):
                pl._take(work, result)
                for i in result.nodes.tolist():
                    rows_of[i] = free[i].tolist()
            append(result)
            continue
        key = tuple(sorted(req.labels.items()))
        base = static.get(key)
        if base is None:
            base = work.schedulable.copy()
            if req.labels:
                base &= ~pl.label_mismatch(work, req)
            static[key] = base
        demand = req.demand
        ok = base.copy()
        for r, x in req.asked:  # one contiguous column per resource
            ok &= cols[r] >= x
        masked = np.where(ok, score_of(work, req, weights), _NEG)
        if k == 1:
            i = int(masked.argmax())
            if masked[i] == _NEG:  # no candidate
                append(pl._refusal(work, req, pl.failures(work, req), 0))
                continue
            free[i] -= demand  # what _take subtracts: one row, one worker, no cores
            rows_of[i] = free[i].tolist()
            append(Placement(((i, 1),), demand[None, :], work.no_core_use, False))
            continue
        best = []
        for _ in range(k):
            i = int(masked.argmax())
            if masked[i] == _NEG:
                break
            best.append(i)
            masked[i] = _NEG
        slots = 0
        if best:  # pl._capacity and pl._placement on plain ints (no per-core shares here)
            asked = req.asked
            cap = [min([k] + [f[r] // x for r, x in asked]) for f in [rows_of[i] for i in best]]
            take = spread_slots(cap, k) if req.spread else pack_slots(cap, k)
            if sum(take) == k:
                m = len(take) - take.count(0)  # the rows used are a prefix of the ranked rows
                rows, take = best[:m], take[:m]
                per = demand.tolist()
                use = np.array([[t * x for x in per] for t in take], np.int64)
                for j, i in enumerate(rows):
                    free[i] -= use[j]
                    rows_of[i] = free[i].tolist()
                append(Placement(tuple(zip(rows, take)), use, np.zeros((m, ncores), np.int64), False))
                continue
            slots = sum(cap)
        append(pl._refusal(work, req, pl.failures(work, req), slots))
    return out
