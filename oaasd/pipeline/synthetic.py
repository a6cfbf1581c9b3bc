"""Random but plausible pipelines, for tests, benchmarks and the simulator.

Profiles follow the usual shape of measured inference servers: a variant's
batch-1 latency grows with its accuracy, batch latency grows sublinearly
with the batch (``l(b) = l(1) * (1 + k * (b - 1))``, 0 < k < 1) and one
replica serves one batch at a time (``throughput = 1000 * b / l(b)``).
Nothing here is a measurement.
"""

from __future__ import annotations

import numpy as np

from oaasd.pipeline.model import Pipeline, Profile, Stage, Variant

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)


def random_stage(rng: np.random.Generator, name: str, n_variants: int,
                 batches: tuple[int, ...], max_replicas: int) -> Stage:
    """A stage whose variants trade accuracy for latency and cores."""
    acc = np.sort(rng.uniform(0.55, 0.99, n_variants))
    lat1 = np.sort(rng.uniform(2.0, 40.0, n_variants))  # ms at batch 1
    cores = np.sort(rng.choice([0.5, 1, 2, 4, 8], n_variants))
    variants = []
    for v in range(n_variants):
        k = rng.uniform(0.25, 0.8)
        profiles = []
        for b in batches:
            lat = float(lat1[v] * (1 + k * (b - 1)))
            profiles.append(Profile(batch=b, latency_ms=round(lat, 3),
                                    throughput_rps=round(1000.0 * b / lat, 3)))
        variants.append(Variant(name=f"{name}-v{v}", accuracy=round(float(acc[v]), 4),
                                cores=float(cores[v]), profiles=profiles))
    return Stage(name=name, variants=variants, max_replicas=max_replicas)


def random_pipeline(rng: np.random.Generator, n_stages: int, n_variants: int = 5,
                    batches: tuple[int, ...] = BATCHES, max_replicas: int = 32,
                    accuracy_combine: str = "product") -> Pipeline:
    """A pipeline of ``n_stages`` random stages, an SLO that binds, and weights
    under which accuracy, cores and batch all matter."""
    stages = [random_stage(rng, f"s{i}", n_variants, batches, max_replicas)
              for i in range(n_stages)]
    # SLO between the all-fastest and the all-slowest batch-4-ish pipeline.
    mid = sum(float(np.median([v.profiles[min(2, len(v.profiles) - 1)].latency_ms
                               for v in st.variants])) for st in stages)
    return Pipeline(name=f"random-{n_stages}", stages=stages,
                    slo_ms=round(mid * rng.uniform(1.2, 3.0), 3),
                    alpha=1.0, beta=round(float(rng.uniform(0.001, 0.01)), 5),
                    gamma=round(float(rng.uniform(0.0, 0.002)), 5),
                    accuracy_combine=accuracy_combine)


def random_load(rng: np.random.Generator, pipeline: Pipeline) -> float:
    """A load (requests/s) between light and enough to cap some options."""
    return round(float(rng.uniform(20.0, 1500.0)), 2)
