"""What placement binds: distinct cores, bound cores by load and socket, GPU devices,
records and restart, the Host bindings; and the 422s at intake for what can never bind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oaasd.config import NodeConfig, Settings, parse_nvidia_smi
from oaasd.core import placement as pl
from oaasd.core.placement import Placement, Refusal, Request
from oaasd.core.placement.cores import choose_cores
from oaasd.models import TaskSpec
from oaasd.ports import Binding
from oaasd.service.cluster import Cluster


def table(*specs: dict) -> pl.NodeTable:
    return pl.NodeTable.from_specs(specs)


def one_by_one(t: pl.NodeTable, queue: list[Request], fit: str = "best") -> list:
    """place + reserve in turn on t; the placements (or refusals)."""
    out = []
    for r in queue:
        got = pl.place(t, r, fit)
        if isinstance(got, Placement):
            pl.reserve(t, r, got)
        out.append(got)
    return out


def bindings(t: pl.NodeTable, got: list) -> list:
    return [None if isinstance(p, Refusal) else pl.host_bindings(t, p) for p in got]


def reserved(t: pl.NodeTable, queue: list[Request], got: list) -> list:
    """Reserve a pass's placements in order on t (as the scheduler does: that binds their cores)."""
    for r, p in zip(queue, got):
        if isinstance(p, Placement):
            pl.reserve(t, r, p)
    return got


# ---------------------------------------------------------------- distinct cores


@pytest.mark.parametrize("cores, shares, fits", [
    ([1000, 1000], (100, 100, 100), False),  # three shares of one worker, two cores: never
    ([1000, 1000, 1000], (100, 100, 100), True),
    ([1000, 1000, 100], (500, 500, 500), False),  # the third core cannot take a 500 share
    ([1000, 600, 600], (700, 500, 500), True),
    ([1000, 600], (300, 300, 300), False),  # enough millicores, too few cores
])
def test_shares_of_one_worker_go_to_distinct_cores(cores, shares, fits):
    t = table({"name": "a", "core_milli": cores, "memory_mb": 100})
    r = Request(cores=shares)
    got = pl.place(t, r)
    assert isinstance(got, Placement) == fits
    assert (pl.could_ever_fit(t, r) is None) == fits
    assert isinstance(pl.place_queue(t, [r])[0], Placement) == fits
    if fits:
        assert np.count_nonzero(got.core_use[0]) == len(shares)
        assert sorted(got.core_use[0][got.core_use[0] > 0].tolist()) == sorted(shares)
    else:
        refusal = pl.could_ever_fit(t, r)
        assert refusal.counts == {"InsufficientCores": 1}


def test_a_gang_on_one_node_shares_cores_between_workers_never_within_one():
    t = table({"name": "a", "cpus": 2, "memory_mb": 100})
    r = Request(cores=(400, 400), workers=2)  # 4 shares on 2 cores: one share of each worker per core
    got = pl.place(t, r)
    assert got.hosts == ((0, 2),) and got.core_use.tolist() == [[800, 800]]
    assert isinstance(pl.place(t, Request(cores=(400, 400, 400))), Refusal)


def test_cores_distinct_shortfall_names_the_counts():
    t = table({"name": "a", "cpus": 2, "memory_mb": 100}, {"name": "b", "cpus": 1, "memory_mb": 100})
    got = pl.could_ever_fit(t, Request(cores=(100, 100, 100)))
    assert got.reason == "BadConstraints" and pl.Shortfall("cores_distinct", 3, 2, 2) in got.detail


# ---------------------------------------------------------------- bound cores for plain cpus


def test_two_one_cpu_tasks_on_two_cores_get_distinct_cores():
    t = table({"name": "a", "cpus": 2, "memory_mb": 100})
    r = Request(cpu_milli=1000)
    assert [b[0]["cores"] for b in bindings(t, one_by_one(t.copy(), [r, r]))] == [[0], [1]]
    passed = pl.place_queue(t, [r, r])
    assert [p.bound for p in passed] == [None, None]  # the pass decides nodes; reserve binds cores
    assert [b[0]["cores"] for b in bindings(t, reserved(t, [r, r], passed))] == [[0], [1]]


@pytest.mark.parametrize("load, sockets, milli, want", [
    ([0, 0, 0, 0], 1, 1000, ((0, 1000),)),
    ([1000, 0, 0, 0], 1, 1000, ((1, 1000),)),
    ([0, 0, 0, 0], 1, 1500, ((0, 1000), (1, 500))),
    ([0, 0, 0, 0], 2, 2000, ((0, 1000), (1, 1000))),  # one socket, the first on ties
    ([0, 1000, 0, 0], 2, 2000, ((2, 1000), (3, 1000))),  # socket 1 is the less loaded
    ([0, 500, 0, 0, 0, 0], 2, 3000, ((3, 1000), (4, 1000), (5, 1000))),
    ([0, 0, 0, 0], 2, 3000, ((0, 1000), (1, 1000), (2, 500 + 500))),  # spans two: least loaded overall
    ([300, 200, 100, 0], 1, 250, ((3, 250),)),
])
def test_choose_cores_least_load_one_socket_when_it_fits(load, sockets, milli, want):
    assert choose_cores(load, sockets, milli) == want


def test_socket_preference_and_quota_in_the_binding():
    t = table({"name": "a", "cpus": 4, "sockets": 2, "memory_mb": 1000})
    got = one_by_one(t, [Request(cpu_milli=2000, memory_mb=100), Request(cpu_milli=1500),
                         Request(cpu_milli=500)])
    b = [x[0] for x in bindings(t, got)]
    assert b[0] == {"cores": [0, 1], "cpu_quota": None, "memory_mb": 100, "gpus": [], "socket": 0}
    assert b[1] == {"cores": [2, 3], "cpu_quota": 1.5, "memory_mb": 0, "gpus": [], "socket": 1}
    assert b[2]["cores"] == [3] and b[2]["cpu_quota"] == 0.5  # core 3 held only 500
    assert t.core_bound[0].tolist() == [1000, 1000, 1000, 1000]
    idle = t.configured.copy()
    span = pl.place(idle, Request(cpu_milli=3000))
    pl.reserve(idle, Request(cpu_milli=3000), span)
    assert pl.host_bindings(idle, span)[0]["socket"] is None


def test_bound_cores_avoid_cores_pinned_by_per_core_shares():
    t = table({"name": "a", "cpus": 2, "memory_mb": 100})
    got = one_by_one(t, [Request(cores=(1000,)), Request(cpu_milli=500)])
    assert [x[0]["cores"] for x in bindings(t, got)] == [[0], [1]]


def test_exclusive_binds_every_core():
    t = table({"name": "a", "cpus": 3, "memory_mb": 100, "gpus": 2})
    got = pl.place(t, Request(cpu_milli=100, exclusive=True))
    assert pl.host_bindings(t, got)[0]["cores"] == [0, 1, 2] and pl.host_bindings(t, got)[0]["gpus"] == [0, 1]


# ---------------------------------------------------------------- GPU devices


GPU_NODE = {"name": "g", "cpus": 8, "memory_mb": 8000,
            "gpus": [{"index": 0, "type": "a100"}, {"index": 1, "type": "a100"}, {"index": 5, "type": "v100"}]}


@pytest.mark.parametrize("queue, devices", [
    ([1000, 1000], [[0], [1]]),  # two whole-GPU tasks never share a device
    ([2000, 1000, 1000], [[0, 1], [5], None]),
    ([500, 500, 500], [[0], [0], [1]]),  # shares fill one device before the next
    ([750, 500, 250], [[0], [1], [0]]),  # never spanning two: 500 does not fit the 250 left on 0
    ([250, 1000, 1000, 1000], [[0], [1], [5], None]),  # a whole device must be wholly free
    ([3000], [[0, 1, 5]]),
    ([4000], [None]),
])
def test_device_choice(queue, devices):
    t = table(GPU_NODE)
    got = one_by_one(t, [Request(cpu_milli=100, gpu_milli=g) for g in queue])
    assert [None if b is None else b[0]["gpus"] for b in bindings(t, got)] == devices
    assert (t.gpu_free >= 0).all() and t.free[0, 2] == t.gpu_free[0].sum()
    fresh = table(GPU_NODE)
    q = [Request(cpu_milli=100, gpu_milli=g) for g in queue]
    passed = reserved(fresh, q, pl.place_queue(fresh, q))
    assert [None if b is None else b[0]["gpus"] for b in bindings(fresh, passed)] == devices


@pytest.mark.parametrize("gpu_type, gpus, devices", [
    ("v100", 1000, [5]), ("a100", 2000, [0, 1]), ("a100", 500, [0]), ("v100", 2000, None), ("h100", 1000, None),
])
def test_gpu_type_filters_devices(gpu_type, gpus, devices):
    t = table(GPU_NODE, {"name": "cpu", "cpus": 8, "memory_mb": 8000})
    got = pl.place(t, Request(cpu_milli=100, gpu_milli=gpus, gpu_type=gpu_type))
    if devices is None:
        assert isinstance(got, Refusal) and "InsufficientGpus" in got.counts
    else:
        assert pl.host_bindings(t, got)[0]["gpus"] == devices


def test_gpu_gang_spreads_devices_over_nodes():
    t = table({"name": "a", "cpus": 4, "memory_mb": 100, "gpus": 1}, {"name": "b", "cpus": 4, "memory_mb": 100, "gpus": 1})
    got = pl.place(t, Request(cpu_milli=100, gpu_milli=1000, workers=2))
    assert sorted(h[0] for h in got.hosts) == [0, 1] and [b["gpus"] for b in pl.host_bindings(t, got)] == [[0], [0]]
    assert isinstance(pl.place(t, Request(cpu_milli=100, gpu_milli=1000, workers=3)), Refusal)


def test_request_refuses_a_fraction_above_one():
    with pytest.raises(ValueError, match="multiple of 1000"):
        Request(gpu_milli=1500)


def test_parse_nvidia_smi_and_devices_in_config():
    text = "0, NVIDIA A100-SXM4-40GB, 40960\n1, Tesla V100-SXM2-16GB, 16160\nNo devices were found\n"
    devs = parse_nvidia_smi(text)
    assert [(d.index, d.type, d.memory_mb) for d in devs] == [(0, "a100", 40960), (1, "v100", 16160)]
    cfg = NodeConfig(name="x", cpus=2, memory_mb=100, gpus=devs, gpu_vendor="amd")
    assert [d.index for d in cfg.devices] == [0, 1]
    assert [d.index for d in NodeConfig(name="y", cpus=2, memory_mb=100, gpus=3).devices] == [0, 1, 2]
    with pytest.raises(ValueError, match="distinct"):
        NodeConfig(name="z", cpus=2, memory_mb=100, gpus=[{"index": 0}, {"index": 0}])
    with pytest.raises(ValueError, match="sockets"):
        NodeConfig(name="z", cpus=2, memory_mb=100, sockets=3)


# ---------------------------------------------------------------- records, restart, hosts_of


def cluster_of(*nodes: dict) -> Cluster:
    return Cluster(Settings(nodes=[NodeConfig(**n) for n in nodes]))


def spec(**resources) -> TaskSpec:
    return TaskSpec(command=["true"], resources=resources)


def test_hosts_of_gives_the_binding_and_a_rebuild_restores_bound_load_and_devices():
    c = cluster_of({"name": "a", "cpus": 4, "sockets": 2, "memory_mb": 1000, "gpus": 2, "gpu_vendor": "amd"})
    placed = {}
    for task_id, s in enumerate([spec(cpus=1.5, memory_mb=200, gpus=0.5), spec(cpus=1, gpus=1), spec(cpus=1)]):
        req = c.request_for(s)
        got = pl.place_queue(c.table, [req], c.fit, c.weights)[0]
        c.reserve(task_id, req, got)  # as the scheduler does after its pass: binds the cores
        placed[task_id] = got
    assert c.hosts_of(placed[0])[0].binding == Binding(cores=(0, 1), cpu_quota=1.5, memory_mb=200, gpus=(0,),
                                                       gpu_vendor="amd", socket=0)
    assert c.hosts_of(placed[1])[0].binding.gpus == (1,) and c.hosts_of(placed[1])[0].binding.cores == (2,)
    assert c.hosts_of(placed[2])[0].binding.cores == (3,)
    view = c.view("a")
    assert view["sockets"] == 2 and view["gpu_vendor"] == "amd"
    assert [(d["index"], d["used"]) for d in view["gpu_devices"]] == [(0, 0.5), (1, 1.0)]
    assert view["free"]["gpus"] == 0.5
    before = (c.table.free.copy(), c.table.core_bound.copy(), c.table.gpu_free.copy())
    records = {t: json.loads(json.dumps(c.reservations[t][1])) for t in c.reservations}
    # a restart: a new cluster re-applies the stored records, as recovery does
    again = cluster_of({"name": "a", "cpus": 4, "sockets": 2, "memory_mb": 1000, "gpus": 2, "gpu_vendor": "amd"})
    for t, rec in records.items():
        back = again.placement_from_json(rec)
        again.reserve(t, c.reservations[t][0], back)
        assert again.hosts_of(back) == c.hosts_of(placed[t])
    assert all(np.array_equal(a, b) for a, b in zip(before, (again.table.free, again.table.core_bound,
                                                             again.table.gpu_free)))
    assert records[0]["binding"] == {"a": {"cores": [0, 1], "cpu_quota": 1.5, "memory_mb": 200, "gpus": [0],
                                           "socket": 0}}
    for t in list(again.reservations):
        again.release(t)
    assert (again.table.core_bound == 0).all() and (again.table.gpu_free == again.table.gpu_total).all()


def test_a_record_of_the_old_format_still_loads():
    c = cluster_of({"name": "a", "cpus": 2, "memory_mb": 1000, "gpus": 2})
    old = {"hosts": [["a", 1]], "use": [[1000, 100, 1]], "cores": [[]], "exclusive": False}
    req = c.request_for(spec(cpus=1, memory_mb=100, gpus=1))
    placed = c.placement_from_json(old)
    c.reserve(7, req, placed)
    assert c.table.free[0].tolist() == [1000, 900, 1000] and c.table.gpu_free[0].tolist() == [0, 1000]
    assert c.hosts_of(placed)[0].binding.cores == () and c.hosts_of(placed)[0].binding.gpus == (0,)
    c.rebuild()
    assert c.table.gpu_free[0].tolist() == [0, 1000]
    c.release(7)
    assert (c.table.free == c.table.total).all()


# ---------------------------------------------------------------- 422 at intake, over HTTP


INTAKE = ('[[nodes]]\nname = "n1"\ncpus = 2\nmemory_mb = 1000\n'
          'gpus = [{index = 0, type = "a100", memory_mb = 40960}, {index = 1, type = "a100"}]\n'
          '[[nodes]]\nname = "n2"\ncpus = 2\nmemory_mb = 1000\n')


@pytest.fixture(scope="module")
def gpu_daemon(tmp_path_factory):
    from conftest import Daemon
    d = Daemon(tmp_path_factory.mktemp("bind"), INTAKE)
    d.start()
    yield d
    d.stop()


@pytest.mark.parametrize("resources, field, check", [
    ({"cores": [100, 100, 100]}, "resources.cores", "cores_distinct"),
    ({"gpus": 1.5}, "resources.gpus", None),
    ({"gpus": 3}, "resources.gpus", "gpu_devices"),
    ({"gpus": 1, "gpu_type": "h100"}, "resources.gpu_type", "gpu_type"),
    ({"gpus": 0.0001}, "resources.gpus", None),
])
def test_unbindable_requests_are_422_at_intake(gpu_daemon, resources, field, check):
    status, body = gpu_daemon.request("POST", "/v1/tasks", {"command": ["true"], "resources": resources})
    assert status == 422, body
    hit = [d for d in body["detail"] if d["field"] == field]
    assert hit, body
    if check is not None:
        assert any(d.get("check") == check for d in hit), body


def test_node_view_lists_devices_and_a_task_sees_its_binding(gpu_daemon):
    status, node = gpu_daemon.request("GET", "/v1/nodes/n1")
    assert status == 200 and node["sockets"] == 1 and node["gpu_vendor"] == "nvidia"
    assert node["gpu_devices"] == [{"index": 0, "type": "a100", "memory_mb": 40960, "used": 0.0},
                                   {"index": 1, "type": "a100", "memory_mb": 0, "used": 0.0}]
    assert node["capacity"]["gpus"] == 2
    view = gpu_daemon.wait(gpu_daemon.submit({"command": ["true"], "require_result": False,
                                              "resources": {"cpus": 0.5, "gpus": 0.25, "gpu_type": "a100"}}))
    binding = view["attempts"][0]["binding"]
    assert binding == {"n1": {"cores": [0], "cpu_quota": 0.5, "memory_mb": 0, "gpus": [0], "socket": 0}}


def test_local_nodes_discover_gpus_from_nvidia_smi_when_none_are_given(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, 81559'\necho '1, NVIDIA H100 80GB HBM3, 81559'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    found = NodeConfig(name="l", cpus=2, memory_mb=100)
    assert [(d.index, d.type, d.memory_mb) for d in found.devices] == [(0, "h100", 81559), (1, "h100", 81559)]
    assert NodeConfig(name="l", cpus=2, memory_mb=100, gpus=0).devices == []  # given: not discovered
    assert NodeConfig(name="r", launcher="ssh", cpus=2, memory_mb=100).devices == []  # the head is not that node
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert NodeConfig(name="l", cpus=2, memory_mb=100).devices == []
