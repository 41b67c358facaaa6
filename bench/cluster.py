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

    python -m bench.cluster [--rounds 3] [--ray-python PATH] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

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

    h = Echo.options(**on["nb"]).remote()
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


def _side_actorcore(rounds: int) -> dict[str, Any]:
    import actorcore as ac
    from actorcore.testing import Cluster

    gib = 1 << 30
    with Cluster(num_nodes=0, ttl_s=5.0) as c:
        c.add_node(num_cpus=2, object_store_memory=gib)
        for n in ("nb", "nc", "nd"):
            c.add_node(num_cpus=1, resources={n: 100}, object_store_memory=gib)
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
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [python, "-m", "bench.cluster", "--side", side, "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        cwd=here,
        timeout=900,
        env={**os.environ, "PYTHONPATH": here},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{out.stderr[-4000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _fmt(xs: list[float]) -> str:
    m = statistics.median(xs)
    return f"{m:,.0f}" if m >= 100 else f"{m:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ray-python", default="/tmp/rayenv/bin/python")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--side", choices=["actorcore", "ray"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        side = _side_actorcore if args.side == "actorcore" else _side_ray
        print(json.dumps(side(args.rounds)))
        return
    floor = _floor(args.rounds)
    print(f"loopback TCP floor: {_fmt(floor)} GB/s", flush=True)
    mine = _run_side(sys.executable, "actorcore", args.rounds)
    ray = {} if args.no_ray else _run_side(args.ray_python, "ray", args.rounds)
    floor += _floor(args.rounds)
    print(f"loopback TCP floor (after): {_fmt(floor)} GB/s")
    print("| row | actorcore | Ray 2.60 | ratio |")
    print("|---|---:|---:|---:|")
    for row, xs in mine.items():
        r = ray.get(row)
        m = statistics.median(xs)
        ratio = ""
        if r:
            rm = statistics.median(r)
            ratio = f"{(rm / m if row.endswith('(s)') else m / rm):.1f}x"
        print(f"| {row} | {_fmt(xs)} | {_fmt(r) if r else '-'} | {ratio} |")
    print(f"\nfloor {_fmt(floor)} GB/s (median of {len(floor)} rounds, before and after)")


if __name__ == "__main__":
    main()
