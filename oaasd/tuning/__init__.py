"""Tuning: the task description, its search space, samplers, GP, early stopping, Pareto fronts.

Pure: numpy, scipy and pydantic only; no I/O, no asyncio; deterministic for
a seed. The daemon drives a tuning through ``Tuner`` (see ``tuner``).
"""

from oaasd.tuning.description import TuningDescription
from oaasd.tuning.pareto import pareto_front
from oaasd.tuning.pruners import Asha, Decision, MedianRule, NoStopping
from oaasd.tuning.samplers import (
    GPSampler,
    Observation,
    RandomSampler,
    SobolSampler,
    make_sampler,
)
from oaasd.tuning.space import Space
from oaasd.tuning.tuner import Suggestion, Trial, Tuner, space_fingerprint

__all__ = [
    "Asha", "Decision", "GPSampler", "MedianRule", "NoStopping", "Observation", "RandomSampler",
    "SobolSampler", "Space", "Suggestion", "Trial", "Tuner", "TuningDescription", "make_sampler",
    "pareto_front", "space_fingerprint",
]
