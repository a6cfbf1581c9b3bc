"""What a placement binds on each node, and the placement's persisted record.

A plain ``cpu_milli`` request is bound, when first reserved, to
``ceil(cpu_milli * slots / 1000)`` cores of each node it lands on
(``table.choose_cores``: least loaded first, ONE socket when one holds that
many); a ``cores`` request to the cores its shares took; an exclusive one to
every core. ``host_bindings`` says per node what the node must enforce;
``placement_record`` / ``placement_from_record`` persist a placement by node
name, its bound cores and devices included. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from oaasd.core.placement.table import CPU, GPU_MILLI, MEMORY, NodeTable, Placement


# ---------------------------------------------------------------- what each node enforces


def host_bindings(table: NodeTable, placement: Placement) -> list[dict[str, Any]]:
    """Per host, what the node enforces: ``cores`` (indices), ``cpu_quota`` (cores' worth
    of CPU when not whole, else None), ``memory_mb``, ``gpus`` (device indices) and
    ``socket`` (when every core lies in one, else None)."""
    out = []
    for row, (i, _) in enumerate(placement.hosts):
        if placement.exclusive:
            cores = list(range(int(table.ncores[i])))
        elif placement.bound is not None:
            cores = [j for j, _ in placement.bound[row]]
        else:
            cores = np.flatnonzero(placement.core_use[row]).tolist()
        gpus = []
        if placement.gpu_use is not None:
            gpus = table.gpu_index[i, np.flatnonzero(placement.gpu_use[row])].tolist()
        cpu = int(placement.use[row, CPU])
        sockets = {table.socket_of(i, j) for j in cores}
        out.append({"cores": cores, "cpu_quota": cpu / 1000 if cpu % 1000 and not placement.exclusive else None,
                    "memory_mb": int(placement.use[row, MEMORY]), "gpus": gpus,
                    "socket": sockets.pop() if len(sockets) == 1 else None})
    return out


# ---------------------------------------------------------------- records


RECORD_VERSION = 2  # 2: gpu_milli units, device and bound-core lists, binding; absent: the old record


def placement_record(table: NodeTable, placement: Placement) -> dict[str, Any]:
    """A JSON-able record of a placement keyed by node name, to persist and re-apply.

    ``binding`` maps each node to what it enforces (``host_bindings``);
    ``gpus`` and ``bound`` per host list [device column, milli-GPUs] and
    [core, millicores] pairs, as ``cores`` lists per-core shares.
    """
    names = table.names
    gpu = placement.gpu_use
    return {
        "v": RECORD_VERSION,
        "hosts": [[names[i], s] for i, s in placement.hosts],
        "use": placement.use.tolist(),
        "cores": [[[int(j), int(u[j])] for j in np.flatnonzero(u)] for u in placement.core_use],
        "gpus": [] if gpu is None else [[[int(d), int(u[d])] for d in np.flatnonzero(u)] for u in gpu],
        "bound": None if placement.bound is None else [[list(p) for p in pairs] for pairs in placement.bound],
        "exclusive": placement.exclusive,
        "binding": {names[i]: b for (i, _), b in zip(placement.hosts, host_bindings(table, placement))},
    }


def placement_from_record(table: NodeTable, record: Mapping[str, Any]) -> Placement:
    """The Placement a ``placement_record`` describes, on ``table`` (possibly rebuilt since).

    A record of the old format (no ``v``: GPUs counted whole, no devices, no
    bound cores) loads too: its GPUs take the lowest free whole devices of
    ``table`` as it is now, and it binds no cores (its processes run unbound). Raises KeyError for a node no longer in the
    table, ValueError for a core or device it lacks.
    """
    index = {name: i for i, name in enumerate(table.names)}
    hosts = tuple((index[name], int(s)) for name, s in record["hosts"])
    if len({h[0] for h in hosts}) != len(hosts):
        raise ValueError("a placement names each node once")
    core_use = _pairs(record["cores"], len(hosts), table.core_free.shape[1], "core", record)
    use = np.array(record["use"], np.int64).reshape(len(hosts), 3)
    if "v" not in record:
        use[:, 2] *= GPU_MILLI
        # its processes run unbound: no cores are chosen for it now (an empty binding per host)
        return Placement(hosts, use, core_use, bool(record["exclusive"]), _old_devices(table, hosts, use),
                         tuple(() for _ in hosts))
    gpu_use = None
    if record.get("gpus"):
        gpu_use = _pairs(record["gpus"], len(hosts), table.gpu_free.shape[1], "GPU device", record)
    bound = record.get("bound")
    if bound is not None:
        bound = tuple(tuple((int(j), int(u)) for j, u in pairs) for pairs in bound)
        for (i, _), pairs in zip(hosts, bound):
            if any(j >= table.ncores[i] for j, _ in pairs):
                raise ValueError(f"node {table.names[i]!r} has no core for {pairs}")
    return Placement(hosts, use, core_use, bool(record["exclusive"]), gpu_use, bound)


def _pairs(per_host: list, m: int, width: int, what: str, record: Mapping[str, Any]) -> np.ndarray:
    """(m, width) int64 from per-host [[column, amount], ...] lists."""
    out = np.zeros((m, width), np.int64)
    for row, pairs in enumerate(per_host):
        for j, u in pairs:
            if j >= width:
                raise ValueError(f"node {record['hosts'][row][0]!r} has no {what} {j}")
            out[row, j] = u
    return out


def _old_devices(table: NodeTable, hosts: tuple[tuple[int, int], ...], use: np.ndarray) -> np.ndarray | None:
    """Devices for an old record's whole-GPU counts: the lowest whole free ones now."""
    if not use[:, 2].any():
        return None
    gpu_use = np.zeros((len(hosts), table.gpu_free.shape[1]), np.int64)
    for row, (i, _) in enumerate(hosts):
        whole = np.flatnonzero(table.gpu_free[i] == GPU_MILLI)[: use[row, 2] // GPU_MILLI]
        gpu_use[row, whole] = GPU_MILLI
    return gpu_use
