"""The cluster as the daemon holds it: node configs, admin intent, health,
reservations, and the numpy table the placement core works on.

Reservations are kept by task id as name-keyed placement records, so the
table can be rebuilt (a node added, drained, removed, or a restart) and the
reservations re-applied to give exactly the same free arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from oaasd.config import NodeConfig, Settings
from oaasd.core import placement as pl
from oaasd.core.jobs import shape
from oaasd.models import TaskSpec
from oaasd.ports import Binding, Host

NODE_STATES = ("IDLE", "MIXED", "ALLOCATED", "DRAINING", "DRAINED", "DOWN")


# A refusal is formatted in the fields and units of the task spec a user wrote,
# not the placement core's: (field, divisor, unit words, what the capacity is).
API_UNITS: dict[str, tuple[str, int, str, str]] = {
    "cpu_milli": ("resources.cpus", 1000, "", "largest node has"),
    "memory_mb": ("resources.memory_mb", 1, "", "largest node has"),
    "gpu_milli": ("resources.gpus", 1000, "", "largest node has"),
    "gpu_devices": ("resources.gpus", 1, " device(s) for one worker", "most devices that fit on one node:"),
    "core_milli": ("resources.cores", 1, " millicores on one core", "largest core has"),
    "cores_distinct": ("resources.cores", 1, " distinct cores (one per share)", "largest node has"),
    "workers": ("workers", 1, " workers", "the nodes that fit one hold"),
}


def _in_units(amount: int, scale: int) -> int | float:
    return amount // scale if amount % scale == 0 else amount / scale


@dataclass
class Intent:
    """What an admin (or the health loop) said about a node."""

    state: str  # DRAIN or DOWN
    reason: str
    user: str | None = None
    at: float = 0.0


class Cluster:
    """Nodes, their state and the free-resource arrays."""

    def __init__(self, settings: Settings):
        self.nodes: dict[str, NodeConfig] = {n.name: n for n in settings.nodes}
        self.intents: dict[str, Intent] = {}
        self.health: dict[str, str] = {}  # node -> reason it is DOWN by probe
        self.reservations: dict[int, tuple[pl.Request, dict[str, Any]]] = {}
        self.configure(settings)
        self.rebuild()

    def configure(self, settings: Settings) -> None:
        """Take fit and weights from the settings."""
        sched = settings.scheduler
        self.fit = sched.fit
        self.weights = np.array([sched.weights.get(k, 1.0) for k in ("cpu", "memory", "gpus")])

    # ---- the table --------------------------------------------------
    def schedulable(self, name: str) -> bool:
        """False when an admin drained or downed the node, or probes fail."""
        return name not in self.intents and name not in self.health

    def rebuild(self) -> None:
        """Build the table from the node list and re-apply every reservation."""
        specs = [{"name": n.name, "cpus": n.cpus, "memory_mb": n.memory_mb, "gpus": n.devices,
                  "labels": n.labels, "core_milli": n.core_capacity, "sockets": n.sockets,
                  "schedulable": self.schedulable(n.name)}
                 for n in self.nodes.values()]
        self.table = pl.NodeTable.from_specs(specs)
        self._fits: dict[tuple, pl.Refusal | None] = {}
        for request, record in self.reservations.values():
            live = [h for h in record["hosts"] if h[0] in self.nodes]
            if len(live) == len(record["hosts"]):
                pl.reserve(self.table, request, pl.placement_from_record(self.table, record))

    def set_schedulable(self) -> None:
        """Refresh the schedulable mask after an intent or health change."""
        self.table.schedulable[:] = [self.schedulable(n) for n in self.table.names]

    def add_node(self, cfg: NodeConfig) -> None:
        """A node joins (config, API or reload); the table is rebuilt."""
        self.nodes[cfg.name] = cfg
        self.rebuild()

    def remove_node(self, name: str) -> None:
        """A node leaves; reservations on it are no longer applied."""
        self.nodes.pop(name, None)
        self.intents.pop(name, None)
        self.health.pop(name, None)
        self.rebuild()

    def set_intent(self, name: str, intent: Intent | None) -> None:
        """Store an admin's DRAIN/DOWN (None resumes)."""
        if intent is None:
            self.intents.pop(name, None)
        else:
            self.intents[name] = intent
        self.set_schedulable()

    def load_stored(self, rows: list[dict[str, Any]]) -> None:
        """Apply the store's run-time node rows over the configured nodes."""
        for row in rows:
            if row["source"] == "api" and row["config"]:
                self.nodes[row["name"]] = NodeConfig.model_validate(row["config"])
            elif row["source"] == "deleted":
                self.nodes.pop(row["name"], None)
            if row["intent"] and row["name"] in self.nodes:
                self.intents[row["name"]] = Intent(row["intent"], row["reason"], row["intent_user"], row["intent_at"])
        self.rebuild()

    def reserve(self, task_id: int, request: pl.Request, placed: pl.Placement) -> None:
        """Take a placement's resources for a task."""
        pl.reserve(self.table, request, placed)
        self.reservations[task_id] = (request, pl.placement_record(self.table, placed))

    def release(self, task_id: int) -> None:
        """Give a task's resources back (no-op when it holds none)."""
        held = self.reservations.pop(task_id, None)
        if held is None:
            return
        request, record = held
        if all(h[0] in self.nodes for h in record["hosts"]):
            pl.release(self.table, request, pl.placement_from_record(self.table, record))

    # ---- requests ---------------------------------------------------
    @staticmethod
    def request_for(spec: TaskSpec) -> pl.Request:
        """The placement request of a task spec."""
        res = spec.resources
        return pl.Request(cpu_milli=res.cpu_milli, memory_mb=res.memory_mb, gpu_milli=res.gpu_milli,
                          cores=tuple(res.cores or ()), workers=spec.workers, labels=spec.labels,
                          spread=spec.placement == "spread", exclusive=spec.exclusive, gpu_type=res.gpu_type)

    def never_fits(self, request: pl.Request) -> pl.Refusal | None:
        """A Refusal when no node could hold the request even in an empty cluster.

        Answers are cached by request shape until the node list changes:
        intake asks this for every submission.
        """
        key = request_key(request)
        if key not in self._fits:
            if len(self._fits) > 4096:
                self._fits.clear()
            self._fits[key] = pl.could_ever_fit(self.table, request)
        return self._fits[key]

    def refusal_detail(self, refusal: pl.Refusal, request: pl.Request | None = None) -> list[dict[str, Any]]:
        """The API detail of a refusal: per-check counts and shortfalls (and an unknown ``gpu_type``)."""
        detail: list[dict[str, Any]] = [
            {"field": "resources", "problem": f"{code}: {count} node(s)", "check": code, "nodes": count}
            for code, count in refusal.counts.items() if count]
        if request is not None and request.gpu_type is not None and request.gpu_type not in self.gpu_types():
            known = ", ".join(repr(t) for t in sorted(self.gpu_types())) or "none"
            detail.append({"field": "resources.gpu_type", "check": "gpu_type",
                           "problem": f"no node has GPUs of type {request.gpu_type!r} (types: {known})"})
        for s in refusal.detail:
            field, scale, unit, has = API_UNITS.get(s.resource, (f"resources.{s.resource}", 1, "", "largest node has"))
            requested, capacity = _in_units(s.requested, scale), _in_units(s.capacity, scale)
            entry = {"field": field, "problem": f"requested {requested:g}{unit}, {has} {capacity:g}",
                     "requested": requested, "capacity": capacity}
            if s.resource in ("cores_distinct", "gpu_devices"):
                entry["check"] = s.resource
            detail.append(entry)
        return detail

    def gpu_types(self) -> set[str]:
        """The GPU types some node has (a device's ``type``; "" for untyped ones)."""
        return {d.type for n in self.nodes.values() for d in n.devices}

    def placement_to_json(self, placed: pl.Placement) -> dict[str, Any]:
        """The persisted form of a placement."""
        return pl.placement_record(self.table, placed)

    def placement_from_json(self, record: dict[str, Any]) -> pl.Placement:
        """A placement from its persisted form, on the current table."""
        return pl.placement_from_record(self.table, record)

    def hosts_of(self, placed: pl.Placement) -> list[Host]:
        """The hosts (node, address, slots) of a placement, best first, each with the
        Binding its node enforces (cores, CPU quota, memory, GPU devices, socket)."""
        out = []
        for (i, slots), b in zip(placed.hosts, pl.host_bindings(self.table, placed)):
            node = self.nodes[self.table.names[i]]
            binding = Binding(cores=tuple(b["cores"]), cpu_quota=b["cpu_quota"], memory_mb=b["memory_mb"],
                              gpus=tuple(b["gpus"]), gpu_vendor=node.gpu_vendor, socket=b["socket"])
            out.append(Host(node=node.name, address=node.host, slots=slots, binding=binding))
        return out

    # ---- views ------------------------------------------------------
    def states(self) -> dict[str, str]:
        """Each node's state: admin intent and health over derived use."""
        use = pl.node_use(self.table)
        out = {}
        for i, name in enumerate(self.table.names):
            intent = self.intents.get(name)
            if name in self.health or (intent and intent.state == "DOWN"):
                out[name] = "DOWN"
            elif intent and intent.state == "DRAIN":
                out[name] = "DRAINED" if use[i] == "IDLE" else "DRAINING"
            else:
                out[name] = str(use[i])
        return out

    def views(self) -> list[dict[str, Any]]:
        """The API view of every node."""
        states = self.states()
        return [self.view(name, states[name]) for name in self.table.names]

    def view(self, name: str, state: str | None = None) -> dict[str, Any]:
        """The API view of one node."""
        i = self.table.names.index(name)
        node = self.nodes[name]
        intent = self.intents.get(name)
        reason = self.health.get(name) or (intent.reason if intent else None)
        return {
            "name": name, "state": state or self.states()[name], "reason": reason,
            "launcher": node.launcher, "host": node.host, "labels": node.labels,
            "capacity": resources(self.table.total[i]), "free": resources(self.table.free[i]),
            "intent": None if intent is None else {"state": intent.state, "reason": intent.reason,
                                                   "user": intent.user, "at": intent.at},
            "sockets": int(self.table.sockets[i]), "gpu_vendor": node.gpu_vendor, "gpu_devices": self.devices_of(i),
        }

    def devices_of(self, i: int) -> list[dict[str, Any]]:
        """Row i's GPU devices: index, type, memory_mb and the share in use (0 to 1)."""
        t, by_index = self.table, {d.index: d for d in self.nodes[self.table.names[i]].devices}
        out = []
        for d in np.flatnonzero(t.gpu_total[i]).tolist():
            dev = by_index[int(t.gpu_index[i, d])]
            used = int(t.gpu_total[i, d] - t.gpu_free[i, d])
            out.append({"index": dev.index, "type": dev.type, "memory_mb": dev.memory_mb, "used": used / pl.GPU_MILLI})
        return out


def request_key(r: pl.Request) -> tuple:
    """A hashable shape of a request: equal keys get equal placement answers (``jobs.shape``, the one definition)."""
    return shape(r)


def resources(row: np.ndarray) -> dict[str, Any]:
    """One row of the table's resource columns in API units (cpus, memory_mb, gpus: whole
    devices, a share of one in thousandths)."""
    gpus = int(row[2])
    return {"cpus": int(row[0]) / 1000, "memory_mb": int(row[1]),
            "gpus": gpus // pl.GPU_MILLI if gpus % pl.GPU_MILLI == 0 else gpus / pl.GPU_MILLI}

