"""Placement core: which nodes can take a request, and which of them should.

Pure numpy over a struct of arrays, one row per node; no I/O, no asyncio. The
daemon, the trace simulator and the benchmarks call the same stages, one
module each, each importing only those above it in this list:

    cores    per-core (and per-GPU-device) packing of equal or unequal shares,
             each share of a worker on its own core, shared by check and choice;
             choose_cores: the cores a plain cpu request is bound to
    table    NodeTable (struct of arrays), Request, Placement; reserve / release
             subtract / add back in place, bit for bit; reserve binds the cores
             of a plain cpu request (least load, one socket when it fits)
    binding  what each node of a placement enforces (cores, quota, memory, GPU
             devices, socket); records by node name
    checks   (table, request) -> (n,) bool, nodes that FAIL, one per reason;
             a Refusal counts them (a "no" is data)
    scoring  (table, request) -> (n,) float in [0, 1]: least / most allocated,
             balanced; first, best and worst fit
    select   place: argmax, ties by node order; a gang of k workers takes the
             best rows with room, all or nothing; could_ever_fit for intake
    passes   place_queue: in order, each placement assumed before the next
    batch    assign_batch: single-worker requests, linear_sum_assignment
             (import it from ``oaasd.core.placement.batch``: it loads scipy)

The names callers use are re-exported here: ``from oaasd.core.placement import
place, Request``.
"""

from oaasd.core.placement.binding import host_bindings, placement_from_record, placement_record
from oaasd.core.placement.checks import CHECKS, Refusal, Shortfall, failures, passing
from oaasd.core.placement.passes import place_queue
from oaasd.core.placement.scoring import SCORERS
from oaasd.core.placement.select import could_ever_fit, place
from oaasd.core.placement.table import (
    GPU_MILLI,
    RESOURCES,
    NodeTable,
    Placement,
    Request,
    node_use,
    release,
    reserve,
)

__all__ = [
    "CHECKS",
    "GPU_MILLI",
    "RESOURCES",
    "SCORERS",
    "NodeTable",
    "Placement",
    "Refusal",
    "Request",
    "Shortfall",
    "could_ever_fit",
    "failures",
    "host_bindings",
    "node_use",
    "passing",
    "place",
    "place_queue",
    "placement_from_record",
    "placement_record",
    "release",
    "reserve",
]
