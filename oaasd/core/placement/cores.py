"""Per-core packing: which cores (or GPU devices) a worker's shares take, best fit, distinct.

A request with ``cores`` puts each per-process share of ONE worker on a
DIFFERENT core of a node (ROHE's rule); workers of a gang on the same node
may share cores. GPU devices are packed by the same rule: ``k`` whole GPUs
are k shares of 1000 milli-GPU (a device holds one), a fraction is one share
of one device. The same packing answers the check (``cores_fit``: does one
worker fit a row at all) and the choice (``pack_cores``: how many workers fit
and what they take). Plain numpy over (m, c) arrays of free amounts per core
or device, never written to.

Unequal shares go worker by worker, largest share first, each on the
tightest core this worker does not use yet (lowest index on ties). Equal
shares (the common case, and every GPU request) have a closed form: w
workers of p shares of s fit when ``sum_j min(free_j // s, w) >= p * w``
(no core holds more than one share of each worker); they take, tightest
core first, ``min(free_j // s, w)`` shares of each core until p * w are
placed. The largest such w is what fits; a multiset of p * w shares with
at most w on each core always splits into w workers of p distinct cores.

``choose_cores`` is the other per-core choice: which cores a plain cpu
request is bound to, by least load (``table.reserve`` calls it).
"""

from __future__ import annotations

import numpy as np

_NO_ROOM = np.iinfo(np.int64).max


def pack_cores(core_free: np.ndarray, shares: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack up to ``limit`` workers per row onto distinct cores, best fit.

    core_free: (m, c) int64; shares: (p,) int64 largest first; limit: (m,) int64.
    Returns packed: (m,) int64 workers that fit, and use: (m, c) int64 taken.
    Loops over workers and shares, never over rows.
    """
    if shares[0] == shares[-1]:
        return pack_equal(core_free, int(shares[0]), len(shares), limit)
    rem = core_free.copy()
    packed = np.zeros(len(core_free), np.int64)
    for w in range(int(limit.max(initial=0))):
        rows = np.flatnonzero((packed == w) & (limit > w))  # every earlier worker fitted
        if not rows.size:
            break
        trial = rem[rows]
        used = np.zeros(trial.shape, bool)  # cores this worker took already
        ok = np.ones(len(rows), bool)
        at = np.arange(len(rows))
        for s in shares.tolist():
            fits = (trial >= s) & ~used
            j = np.where(fits, trial, _NO_ROOM).argmin(1)  # tightest free core
            ok &= fits[at, j]
            trial[at, j] -= s  # rows that failed are discarded below
            used[at, j] = True
        rem[rows[ok]] = trial[ok]
        packed[rows[ok]] += 1
    return packed, core_free - rem


def equal_fit(per: np.ndarray, p: int, limit: np.ndarray) -> np.ndarray:
    """Most workers of p equal shares each row holds, at most ``limit``: (m,) int64.

    per: (m, c) int64 shares each core takes (free // share). The largest w
    with ``sum_j min(per_j, w) >= p * w``, by bisection on all rows at once
    (the slack is concave in w and 0 at w = 0, so it is >= 0 exactly up to it).
    """
    total = per.sum(1)
    hi = np.minimum(total // p, limit)
    if p == 1:
        return hi
    lo = np.zeros_like(hi)
    while (lo < hi).any():
        mid = (lo + hi + 1) // 2
        ok = np.minimum(per, mid[:, None]).sum(1) >= p * mid
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid - 1)
    return lo


def pack_equal(core_free: np.ndarray, share: int, p: int,
               limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pack_cores`` in closed form when all p shares are equal: (packed, use).

    Cores in ascending free order (stable: lowest index on ties), core j
    taking ``min(free_j // share, packed)`` shares until ``packed * p`` are placed.
    """
    per = core_free // share  # (m, c) shares each core can take
    packed = equal_fit(per, p, limit)
    per = np.minimum(per, packed[:, None])  # at most one share of each worker per core
    at = np.arange(len(core_free))[:, None]
    order = np.argsort(core_free, axis=1, kind="stable")
    per = per[at, order]
    before = np.cumsum(per, 1) - per
    use = np.empty_like(core_free)
    use[at, order] = np.minimum(np.maximum((packed * p)[:, None] - before, 0), per) * share
    return packed, use


def equal_fit_row(cores: list[int], share: int, p: int, limit: int) -> int:
    """``equal_fit`` for one row in plain ints (free per core)."""
    per = [c // share for c in cores]
    hi = min(sum(per) // p, limit)
    if p == 1 or hi <= 0:
        return max(hi, 0)
    if sum(map(min, per, [hi] * len(per))) >= p * hi:  # the usual answer: no core is the bottleneck
        return hi
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(x, mid) for x in per) >= p * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


def pack_equal_row(cores: list[int], share: int, p: int, workers: int) -> list[int]:
    """``pack_equal`` for one row in plain ints: the amount ``workers`` workers of p equal
    shares take from each of ``cores`` (free per core; the caller knows they fit)."""
    use = [0] * len(cores)
    count = workers * p
    for j in sorted(range(len(cores)), key=cores.__getitem__):  # tightest core first, stable
        n = min(cores[j] // share, workers)
        if n >= count:
            use[j] = count * share
            break
        use[j] = n * share
        count -= n
    return use


def cores_fit(core_free: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Rows whose cores take one worker's shares under ``pack_cores``: (m,) bool.

    core_free: (m, c) int64; shares: (p,) int64 largest first.
    """
    roomy = np.count_nonzero(core_free >= shares[0], axis=1)  # cores that take the largest
    # p roomy cores hold any p shares on distinct cores; with equal shares only
    # roomy cores take one, so that is the whole answer; unequal shares with
    # fewer roomy cores need the packing itself.
    fits = roomy >= len(shares)
    if shares[0] == shares[-1]:
        return fits
    unsure = np.flatnonzero(~fits & (roomy > 0) & (np.count_nonzero(core_free >= shares[-1], axis=1) >= len(shares)))
    if unsure.size:
        packed, _ = pack_cores(core_free[unsure], shares, np.ones(unsure.size, np.int64))
        fits[unsure] = packed == 1
    return fits


def choose_cores(load: list[int], sockets: int, milli: int) -> tuple[tuple[int, int], ...]:
    """The (core, millicores) pairs ``milli`` millicores are bound to, by least ``load``.

    load: per real core of the node (no padding); sockets: the cores split
    evenly in order. One socket when one has enough cores: the one whose
    chosen cores carry the least load (ties: lowest socket); within it, and
    otherwise over all cores, the least loaded (ties: lowest index). Whole
    cores take 1000 each, the last one the rest. Plain ints: a node has few
    cores, and this runs for every reserve.
    """
    c = len(load)
    k = min(-(-milli // 1000), c)
    least = min(load)
    if k == 1:
        return ((load.index(least), milli),)  # the first least-loaded core
    last = milli - 1000 * (k - 1)
    if least == max(load):  # all alike (an idle node): the first k, in socket 0 when it holds them
        return tuple([(j, 1000) for j in range(k - 1)] + [(k - 1, last)])
    chosen = None
    if sockets > 1:
        best = None
        for s in range(sockets):
            lo, hi = s * c // sockets, (s + 1) * c // sockets
            if hi - lo >= k:
                pick = sorted(range(lo, hi), key=load.__getitem__)[:k]  # stable: lowest index on ties
                cost = sum(load[j] for j in pick)
                if best is None or cost < best:
                    best, chosen = cost, pick
    if chosen is None:
        chosen = sorted(range(c), key=load.__getitem__)[:k]
    chosen.sort()
    pairs = [(j, 1000) for j in chosen]
    pairs[-1] = (chosen[-1], last)
    return tuple(pairs)
