"""Per-core packing: which cores a worker's per-process shares take, best-fit decreasing.

A request with ``cores`` puts each per-process share on ONE core of a node.
The same packing answers both questions asked of it: the check (``cores_fit``:
does one worker fit a row at all) and the choice (``pack_cores``: how many
workers fit and which cores they take). Both stages import it from here, so
the check can never disagree with the choice. Plain numpy over (m, c) arrays
of free millicores per core, never written to.
"""

from __future__ import annotations

import numpy as np

_NO_ROOM = np.iinfo(np.int64).max


def pack_cores(core_free: np.ndarray, shares: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack up to ``limit`` workers per row onto cores, best-fit decreasing.

    core_free: (m, c) int64; shares: (p,) int64 largest first; limit: (m,) int64.
    Each share goes to the tightest core that holds it (lowest index on ties).
    Returns packed: (m,) int64 workers that fit, and use: (m, c) int64 taken.
    Loops over workers and shares, never over rows.
    """
    if shares[0] == shares[-1]:
        return _pack_equal(core_free, int(shares[0]), len(shares), limit)
    rem = core_free.copy()
    packed = np.zeros(len(core_free), np.int64)
    for w in range(int(limit.max(initial=0))):
        rows = np.flatnonzero((packed == w) & (limit > w))  # every earlier worker fitted
        if not rows.size:
            break
        trial = rem[rows]
        ok = np.ones(len(rows), bool)
        at = np.arange(len(rows))
        for s in shares.tolist():
            fits = trial >= s
            j = np.where(fits, trial, _NO_ROOM).argmin(1)  # tightest core
            ok &= fits[at, j]
            trial[at, j] -= s  # rows that failed are discarded below
        rem[rows[ok]] = trial[ok]
        packed[rows[ok]] += 1
    return packed, core_free - rem


def _pack_equal(core_free: np.ndarray, share: int, p: int,
                limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pack_cores`` in closed form when all p shares are equal.

    Best fit then fills the tightest core that holds a share until it holds
    no more (it only gets tighter), then the next: cores in ascending free
    order (stable), core j taking free_j // share shares.
    """
    per = core_free // share  # (m, c) shares each core can take
    packed = np.minimum(per.sum(1) // p, limit)
    at = np.arange(len(core_free))[:, None]
    order = np.argsort(core_free, axis=1, kind="stable")
    per = per[at, order]
    before = np.cumsum(per, 1) - per
    use = np.empty_like(core_free)
    use[at, order] = np.minimum(np.maximum((packed * p)[:, None] - before, 0), per) * share
    return packed, use


def pack_equal_row(cores: list[int], share: int, count: int) -> list[int]:
    """``_pack_equal`` for one row in plain ints: the millicores ``count`` equal shares
    take from each of ``cores`` (free per core; the caller knows they fit)."""
    use = [0] * len(cores)
    for j in sorted(range(len(cores)), key=cores.__getitem__):  # tightest core first, stable
        n = cores[j] // share
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
    # With p roomy cores best fit never runs out of room; with none it never
    # fits; only the rows in between need the packing itself.
    fits = roomy >= len(shares)
    unsure = np.flatnonzero(~fits & (roomy > 0))
    if unsure.size and shares[0] == shares[-1]:  # equal shares: each core takes free // share
        fits[unsure] = (core_free[unsure] // shares[0]).sum(1) >= len(shares)
    elif unsure.size:
        packed, _ = pack_cores(core_free[unsure], shares, np.ones(unsure.size, np.int64))
        fits[unsure] = packed == 1
    return fits
