"""``python -m bench.cluster``: work and objects across nodes, actorcore and Ray side by side.

Four nodes on this machine (A: the driver's, 2 CPUs; B, C, D: 1 CPU and a
resource of their own each), real etcd for actorcore, ``ray.cluster_utils.Cluster``
for Ray (``--ray-python``, default ``/tmp/rayenv/bin/python``). Every side runs
in its own subprocess; the loopback TCP floor is measured in the same run.

Rows:

* cross-node get of a 200 MiB array made by a task on B (GB/s);
* actor on B called from the driver on A: one call at a time, and 1000 in flight;
* a task on B whose 100 MiB argument was put on A (s per task, fresh object each);
* broadcast: one 200 MiB object put on A read at once by tasks on B, C and D (s).

    python -m bench.cluster [--rounds 3] [--ray-python PATH] [--no-ray] [--modes unix,tcp,tls]

actorcore runs once per mode: ``unix`` (same-host peers over Unix sockets, the
default when nodes share a machine), ``tcp`` (every link between nodes over
TCP, ``ACTORCORE_UNIX_SOCKETS=0``: as between machines, the honest comparison)
and ``tls`` (TCP with mutual TLS, certificates made by ``openssl``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from bench._sides import run_side

MiB = 1 << 20
CALLS_ONE = 2000
IN_FLIGHT = 1000


def _workloads(api: Any, rounds: int) -> dict[str, Any]:
    """The rows, with ``api`` the ``actorcore`` or ``ray`` module (driver on node A)."""
    import numpy as np

    @api.remote(num_cpus=0)
    def make(n: int) -> Any:
        return np.ones(n, dtype=np.uint8)

    @api.remote(num_cpus=0)
    def size_of(a: Any) -> int:
        return int(a.nbytes)  # (reads the array: a store object is mapped, not copied)

    @api.remote(num_cpus=0)
    class Echo:
        def m(self, x: int = 0) -> int:
            return x

    out: dict[str, Any] = {}
    on = {n: {"resources": {n: 1}} for n in ("nb", "nc", "nd")}

    gets = []
    for _ in range(rounds):
        ref = make.options(**on["nb"]).remote(200 * MiB)
        api.wait([ref], fetch_local=False, timeout=120)
        t = time.perf_counter()
        assert api.get(ref, timeout=120).nbytes == 200 * MiB
        gets.append(200 * MiB / (time.perf_counter() - t) / 1e9)
        del ref
    out["get 200 MiB from another node (GB/s)"] = gets

    h = Echo.options(**on["nb"]).remote()  # type: ignore[attr-defined]
    api.get(h.m.remote(), timeout=120)
    for _ in range(200):
        api.get(h.m.remote())
    one = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(CALLS_ONE):
            api.get(h.m.remote())
        one.append(CALLS_ONE / (time.perf_counter() - t))
    out["actor calls to another node, one at a time (calls/s)"] = one
    many = []
    for _ in range(rounds):
        t = time.perf_counter()
        api.get([h.m.remote(i) for i in range(IN_FLIGHT)])
        many.append(IN_FLIGHT / (time.perf_counter() - t))
    out[f"actor calls to another node, {IN_FLIGHT} in flight (calls/s)"] = many

    api.get(size_of.options(**on["nb"]).remote(np.ones(1)), timeout=120)  # a worker on B is up
    args = []
    for _ in range(rounds):
        arg = api.put(np.ones(100 * MiB, dtype=np.uint8))
        t = time.perf_counter()
        assert api.get(size_of.options(**on["nb"]).remote(arg), timeout=120) == 100 * MiB
        args.append(time.perf_counter() - t)
        del arg
    out["task on another node, 100 MiB argument (s)"] = args

    api.get([size_of.options(**on[n]).remote(np.ones(1)) for n in on], timeout=120)
    casts = []
    for _ in range(rounds):
        obj = api.put(np.ones(200 * MiB, dtype=np.uint8))
        t = time.perf_counter()
        refs = [size_of.options(**on[n]).remote(obj) for n in on]
        assert api.get(refs, timeout=180) == [200 * MiB] * 3
        casts.append(time.perf_counter() - t)
        del obj, refs
    out["broadcast 200 MiB to 3 other nodes (s)"] = casts
    return out


MODES = {
    "unix": "actorcore (same-host Unix sockets)",
    "tcp": "actorcore, TCP",
    "tls": "actorcore, TCP + mutual TLS",
}


def _side_actorcore(rounds: int, mode: str = "tcp") -> dict[str, Any]:
    """``mode``: "unix" (same-host peers over Unix sockets, the default on one
    machine), "tcp" (every link between nodes over TCP, as between machines),
    "tls" (TCP with mutual TLS)."""
    import tempfile

    import actorcore as ac
    from actorcore.testing import Cluster, make_tls_certificates

    if mode != "unix":
        os.environ["ACTORCORE_UNIX_SOCKETS"] = "0"  # the nodes, their workers, this driver
    gib = 1 << 30
    with tempfile.TemporaryDirectory() as d:
        tls = make_tls_certificates(d)["node"] if mode == "tls" else {}
        with Cluster(num_nodes=0, ttl_s=5.0) as c:
            c.add_node(num_cpus=2, object_store_memory=gib, **tls)
            for n in ("nb", "nc", "nd"):
                c.add_node(num_cpus=1, resources={n: 100}, object_store_memory=gib, **tls)
            ac.init(address=c.address, attach_node=c.nodes[0].node_id)
            try:
                return _workloads(ac, rounds)
            finally:
                ac.shutdown()


def _side_ray(rounds: int) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    gib = 1 << 30
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": gib},
    )
    for n in ("nb", "nc", "nd"):
        c.add_node(num_cpus=1, resources={n: 100}, object_store_memory=gib)
    ray.init(address=c.address, log_to_driver=False)
    try:
        return _workloads(ray, rounds)
    finally:
        ray.shutdown()
        c.shutdown()


def _floor(rounds: int) -> list[float]:
    from bench.p2p import Floor

    f = Floor(200 * MiB)
    try:
        f.round()
        return [f.round() for _ in range(rounds)]
    finally:
        f.close()


def _run_side(python: str, side: str, rounds: int) -> dict[str, Any]:
    return dict(run_side("cluster", python, side, "--rounds", str(rounds)))


def _fmt(xs: list[float]) -> str:
    m = statistics.median(xs)
    return f"{m:,.0f}" if m >= 100 else f"{m:.2f}"


def _ratio(row: str, ours: list[float] | None, ray: list[float] | None) -> str:
    if not ours or not ray:
        return "-"
    m, r = statistics.median(ours), statistics.median(ray)
    return f"{(r / m if row.endswith('(s)') else m / r):.1f}x"


def measure(
    rounds: int = 3, ray_python: str | None = "/tmp/rayenv/bin/python", modes: str = "unix,tcp,tls"
) -> dict[str, Any]:
    """Every side in its own subprocess, one after the other, with the floor
    before and after: ``{"floor": [...], "ray": rows, "<mode>": rows, "load": [...]}``."""
    load = [os.getloadavg()[0]]
    out: dict[str, Any] = {"floor": _floor(rounds)}
    for mode in [m for m in modes.split(",") if m]:
        out[mode] = _run_side(sys.executable, mode, rounds)
        load.append(os.getloadavg()[0])
    if ray_python:
        out["ray"] = _run_side(ray_python, "ray", rounds)
        load.append(os.getloadavg()[0])
    out["floor"] += _floor(rounds)
    out["load"] = load
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ray-python", default="/tmp/rayenv/bin/python")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--modes", default="unix,tcp,tls", help="actorcore sides: unix,tcp,tls")
    p.add_argument("--side", choices=["ray", *MODES], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        rows = (
            _side_ray(args.rounds)
            if args.side == "ray"
            else _side_actorcore(args.rounds, args.side)
        )
        print(json.dumps(rows))
        return
    got = measure(args.rounds, None if args.no_ray else args.ray_python, args.modes)
    modes = [m for m in args.modes.split(",") if m]
    ray = got.get("ray", {})
    head = [MODES[m] for m in modes] + (["Ray 2.60"] if ray else [])
    head += [f"{m} / Ray" for m in modes if ray and m != "unix"]
    print("| row | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for row in got[modes[0]]:
        cells = [_fmt(got[m][row]) for m in modes]
        if ray:
            cells.append(_fmt(ray[row]))
            cells += [_ratio(row, got[m][row], ray[row]) for m in modes if m != "unix"]
        print(f"| {row} | " + " | ".join(cells) + " |")
    fl = got["floor"]
    print(f"\nloopback TCP floor {_fmt(fl)} GB/s (median of {len(fl)} rounds, before and after; "
          f"{', '.join(f'{x:.2f}' for x in fl)})")  # fmt: skip
    print("load average (1 min) before and after each side: "
          + ", ".join(f"{x:.1f}" for x in got["load"]))  # fmt: skip


if __name__ == "__main__":
    main()
