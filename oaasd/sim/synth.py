"""A synthetic workload: heavy-tailed durations, diurnal arrivals, mixed sizes, several users.

- arrivals: a Poisson process whose rate follows the day,
  ``rate * (1 + 0.6 sin(2 pi t / 86400))``, drawn by thinning;
- durations: Pareto (shape 1.5, at least 60 s, mean about 3 min, capped at 2 days): most tasks
  are short, a few run for hours;
- sizes: 70 % one worker of 1 cpu; 12 % one worker of 2-8 cpus; 10 % GPU
  tasks (1-2 GPUs, 4 cpus); 8 % gangs of 2-8 workers of 1-2 cpus;
- users: ``users`` of them, Zipf-like shares (the first submits most);
- limits: 90 % give ``time_limit_s`` of 1.2-3x their duration (users
  over-estimate), rounded up to a minute; ``estimated_runtime_s`` is the
  duration off by a log-normal factor.
"""

from __future__ import annotations

import math

import numpy as np

from oaasd.sim.trace import TraceRow

DAY_S = 86400.0


def generate(n: int, *, seed: int = 0, users: int = 5, rate_per_s: float = 0.1) -> list[TraceRow]:
    """``n`` tasks of a synthetic trace, sorted by submit time (the same for the same seed)."""
    rng = np.random.default_rng(seed)
    times, t = [], 0.0
    peak = rate_per_s * 1.6
    while len(times) < n:  # thinning: candidates at the peak rate, kept with rate(t) / peak
        t += rng.exponential(1.0 / peak)
        if rng.random() * peak <= rate_per_s * (1 + 0.6 * math.sin(2 * math.pi * t / DAY_S)):
            times.append(t)
    duration = np.minimum(60.0 * (1 + rng.pareto(1.5, n)), 2 * DAY_S)
    share = 1.0 / np.arange(1, users + 1)
    who = rng.choice(users, n, p=share / share.sum())
    kind = rng.random(n)
    limited = rng.random(n) < 0.9
    over = rng.uniform(1.2, 3.0, n)
    guess = np.exp(rng.normal(0.0, 0.5, n))
    rows = []
    for k in range(n):
        workers, cpus, gpus = 1, 1.0, 0
        if 0.70 <= kind[k] < 0.82:
            cpus = float(rng.integers(2, 9))
        elif 0.82 <= kind[k] < 0.92:
            cpus, gpus = 4.0, int(rng.integers(1, 3))
        elif kind[k] >= 0.92:
            workers, cpus = int(rng.integers(2, 9)), float(rng.integers(1, 3))
        d = round(float(duration[k]), 1)
        rows.append(TraceRow(
            submit_s=round(times[k], 3), duration_s=d, workers=workers, cpus=cpus, memory_mb=int(512 * cpus),
            gpus=gpus, user=f"user{who[k]}",
            time_limit_s=float(math.ceil(d * over[k] / 60) * 60) if limited[k] else None,
            estimated_runtime_s=round(d * float(guess[k]), 1)))
    return rows
