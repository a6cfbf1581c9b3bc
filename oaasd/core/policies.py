"""Queue policies: the order in which a scheduling pass tries pending jobs (pure, no asyncio).

A policy is named by ``[scheduler] policy``. Each gives a sort key per
queued job, so the scheduler can keep its queue sorted as jobs come and go
(one ``bisect`` per job, not a sort per pass), and an ``order`` over a
whole snapshot, which ``schedule.decide`` calls. ``reserves`` says whether
the pass holds a reservation for the first job that does not fit (EASY
backfill) instead of letting any later job that fits overtake it;
``static`` whether the key depends on the job alone (``fifo``, ``backfill``,
``sjf``) or also on usage and time (``fair``, ``priority``: their ``order``
advances a usage ``Ledger`` to ``now``, and the scheduler re-sorts its
queue by the key from time to time).

A job (``schedule.Job``) carries ``priority``, ``task_id``,
``submitted_at``, ``user``, ``time_limit_s`` and ``estimated_runtime_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


def fifo_key(priority: int, task_id: int, submitted_at: float) -> tuple[int, int]:
    """FIFO within priority: higher priority first, then submission order (ids grow with it)."""
    return (-priority, task_id)


@dataclass(frozen=True)
class Fifo:
    """Priority, then submission; any later job that fits starts (may starve wide jobs)."""

    name: str = "fifo"
    reserves: bool = False
    static: bool = True  # ``order`` is the sort by ``key``: a queue kept sorted by it is in order

    def key(self, job: Any) -> tuple:
        """The sort key of one queued job (smaller goes first)."""
        return fifo_key(job.priority, job.task_id, job.submitted_at)

    def order(self, queue: Sequence[Any], running: Sequence[Any], now: float) -> list[Any]:
        """The jobs in placement order (a stable sort: an already sorted queue costs one scan)."""
        return sorted(queue, key=self.key)


@dataclass(frozen=True)
class Backfill(Fifo):
    """FIFO order with EASY backfill: the first job that does not fit holds a reservation."""

    name: str = "backfill"
    reserves: bool = True


@dataclass(frozen=True)
class Sjf(Fifo):
    """Shortest job first within priority: by ``estimated_runtime_s`` (else ``time_limit_s``;
    neither: last), then submission. Greedy: a long job can wait as long as short ones come."""

    name: str = "sjf"

    def key(self, job: Any) -> tuple:
        est = job.estimated_runtime_s if job.estimated_runtime_s is not None else job.time_limit_s
        return (-job.priority, INF if est is None else est, job.task_id)


INF = float("inf")


@dataclass
class Ledger:
    """Per-user usage (cpu-seconds, each running task's ``rate``), halved every ``half_life_s``.

    ``advance(running, now)`` decays what was and charges what ran since the
    last call: a function of the calls' sequence, the same in the daemon and
    the simulator (each pass calls it once with its ``now``).
    """

    half_life_s: float = 86400.0
    usage: dict[str, float] = field(default_factory=dict)
    at: float | None = None

    def advance(self, running: Sequence[Any], now: float) -> None:
        """Decay to ``now`` and charge each running task's user for the time since the last call."""
        if self.at is None or now <= self.at:
            self.at = now if self.at is None else self.at
            return
        dt, self.at = now - self.at, now
        decay = 0.5 ** (dt / self.half_life_s)
        rates: dict[str, float] = {}
        for r in running:
            rates[r.user] = rates.get(r.user, 0.0) + r.rate
        usage, mean = self.usage, dt * (1 + decay) / 2  # what ran decays over dt too: its mean weight
        for user in usage:
            usage[user] *= decay
        for user, rate in rates.items():
            usage[user] = usage.get(user, 0.0) + rate * mean

    def share_used(self, user: str, shares: dict[str, float]) -> float:
        """The user's usage over their share (default share 1)."""
        return self.usage.get(user, 0.0) / shares.get(user, 1.0)


@dataclass(eq=False)
class Fair:
    """Fair share: the user with the least recent usage per share first, then priority, submission."""

    name: str = "fair"
    reserves: bool = False
    static: bool = False
    shares: dict[str, float] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)

    def key(self, job: Any) -> tuple:
        return (self.ledger.share_used(job.user, self.shares), -job.priority, job.task_id)

    def order(self, queue: Sequence[Any], running: Sequence[Any], now: float) -> list[Any]:
        self.ledger.advance(running, now)
        return sorted(queue, key=self.key)


PRIORITY_FACTORS = ("age", "fair_share", "size", "priority", "qos")
PRIORITY_SCALE = 10.0  # own priority at which its factor is 3/4 (and -10 at 1/4)


def own_factor(priority: int) -> float:
    """A task's own priority as a factor in (0, 1): monotone, 1/2 at 0, independent of the queue."""
    return 0.5 + priority / (2.0 * (abs(priority) + PRIORITY_SCALE))


@dataclass(eq=False)
class Priority:
    """Multifactor priority, as Slurm's: a weighted sum of factors in [0, 1], highest first.

    age: waited / ``max_age_s`` (capped at 1); fair_share: ``2 ** -(usage / share /
    FAIR_SCALE)``; size: ``1 / (1 + cpus asked)`` (small first; a negative weight favours
    wide jobs); priority: the task's own ``p`` as ``own_factor(p)`` = 1/2 + p / (2 (|p| +
    PRIORITY_SCALE)), in (0, 1), 1/2 for the default 0, the same whatever else is queued (a
    factor scaled by the queue's own span would change every task's key whenever a new
    extreme arrived); qos: the user's ``qos`` factor (default 0). Ties: submission order.
    """

    name: str = "priority"
    reserves: bool = False
    static: bool = False
    weights: dict[str, float] = field(default_factory=lambda: {"age": 1000.0, "fair_share": 1000.0, "size": 0.0,
                                                               "priority": 1000.0, "qos": 0.0})
    max_age_s: float = 7 * 86400.0
    qos: dict[str, float] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    now: float = 0.0

    def factors(self, job: Any, now: float | None = None) -> dict[str, float]:
        """Each factor of one job in [0, 1] (the ``sprio`` view)."""
        now = self.now if now is None else now
        used = self.ledger.share_used(job.user, self.shares)
        cpus = job.request.workers * job.request.cpu_milli / 1000
        own = own_factor(job.priority)
        return {"age": min(max(now - job.submitted_at, 0.0) / self.max_age_s, 1.0),
                "fair_share": 2.0 ** (-used / FAIR_SCALE), "size": 1.0 / (1.0 + cpus),
                "priority": own, "qos": self.qos.get(job.user, 0.0)}

    def score(self, job: Any, now: float | None = None) -> float:
        """The weighted sum of the job's factors."""
        f = self.factors(job, now)
        return sum(self.weights.get(k, 0.0) * f[k] for k in PRIORITY_FACTORS)

    def key(self, job: Any) -> tuple:
        """``(-score, task_id)``: ``score`` inlined (it runs for every queued job on a sort)."""
        w = self.weights
        own = own_factor(job.priority)
        used = self.ledger.usage.get(job.user, 0.0) / self.shares.get(job.user, 1.0) if self.ledger.usage else 0.0
        request = job.request
        score = (w.get("age", 0.0) * min(max(self.now - job.submitted_at, 0.0) / self.max_age_s, 1.0)
                 + w.get("fair_share", 0.0) * 2.0 ** (-used / FAIR_SCALE)
                 + w.get("size", 0.0) / (1.0 + request.workers * request.cpu_milli / 1000)
                 + w.get("priority", 0.0) * own + w.get("qos", 0.0) * self.qos.get(job.user, 0.0))
        return (-score, job.task_id)

    def order(self, queue: Sequence[Any], running: Sequence[Any], now: float) -> list[Any]:
        self.ledger.advance(running, now)
        self.now = now
        return sorted(queue, key=self.key)


RESORT_S = 5.0  # a queue kept sorted by a key that changes with time is re-sorted this often
FAIR_SCALE = 3600.0  # cpu-seconds per share at which the fair-share factor halves

POLICIES: dict[str, Any] = {p.name: p for p in (Fifo(), Backfill(), Sjf(), Fair(), Priority())}


def policy_named(name: str, cfg: Any = None) -> Any:
    """A fresh policy of that name (parameters from ``cfg``, a ``[scheduler]`` section, when given);
    ValueError naming the choices for another name."""
    if name not in POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name in ("fair", "priority"):
        ledger = Ledger(getattr(cfg, "half_life_s", 86400.0))
        shares = dict(getattr(cfg, "shares", None) or {})
        if name == "fair":
            return Fair(shares=shares, ledger=ledger)
        weights = {**Priority().weights, **(getattr(cfg, "priority_weights", None) or {})}
        return Priority(weights=weights, max_age_s=getattr(cfg, "max_age_s", 7 * 86400.0),
                        qos=dict(getattr(cfg, "qos", None) or {}), shares=shares, ledger=ledger)
    return POLICIES[name]
