"""``python -m bench.pg_cluster``: placement groups across nodes, actorcore and Ray side by side.

Two nodes on this machine (1 CPU and ``custom: 100`` each; the driver on the
first), real etcd for actorcore, ``ray.cluster_utils.Cluster`` for Ray
(``--ray-python``, default ``/tmp/rayenv/bin/python``). Each side runs in its
own subprocess. A round creates 100 groups, waits for each, then removes them
(as Ray's ``ray_perf.py`` placement-group row does); groups/s per round.

Rows:

* PACK, one bundle ``{custom: 0.001}`` (Ray's ``ray_perf`` row, now on a cluster);
* STRICT_SPREAD, two bundles ``{custom: 0.001}``: one on each node;
* STRICT_SPREAD, two bundles, scheduled into: create, wait, run one task in
  each bundle, remove (the time to use a group, not just to reserve it).

    python -m bench.pg_cluster [--rounds 5] [--ray-python PATH] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from bench._sides import run_side

NUM_PGS = 100
WITH_TASKS = 20


def _workloads(api: Any, util: Any, strategy_cls: Any, rounds: int) -> dict[str, list[float]]:
    @api.remote(num_cpus=0)
    def noop() -> int:
        return 1

    def create_remove(bundles: list[dict[str, float]], strategy: str, n: int) -> None:
        pgs = [util.placement_group(bundles, strategy=strategy) for _ in range(n)]
        for pg in pgs:
            assert pg.wait(timeout_seconds=60)
        for pg in pgs:
            util.remove_placement_group(pg)

    def used(n: int) -> None:
        for _ in range(n):
            pg = util.placement_group([{"custom": 0.001}] * 2, strategy="STRICT_SPREAD")
            assert pg.wait(timeout_seconds=60)
            refs = [
                noop.options(scheduling_strategy=strategy_cls(pg, i)).remote() for i in range(2)
            ]
            assert api.get(refs, timeout=60) == [1, 1]
            util.remove_placement_group(pg)

    def rate(fn: Any, n: int) -> list[float]:
        fn()  # warm-up (connections, workers)
        out = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            out.append(n / (time.perf_counter() - t))
        return out

    return {
        "PACK, 1 bundle: created and removed (groups/s)": rate(
            lambda: create_remove([{"custom": 0.001}], "PACK", NUM_PGS), NUM_PGS
        ),
        "STRICT_SPREAD over 2 nodes: created and removed (groups/s)": rate(
            lambda: create_remove([{"custom": 0.001}] * 2, "STRICT_SPREAD", NUM_PGS), NUM_PGS
        ),
        "STRICT_SPREAD over 2 nodes, a task in each bundle (groups/s)": rate(
            lambda: used(WITH_TASKS), WITH_TASKS
        ),
    }


def _side_actorcore(rounds: int) -> dict[str, Any]:
    import actorcore as ac
    from actorcore.testing import Cluster
    from actorcore.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    with Cluster(num_nodes=0, ttl_s=5.0) as c:
        for _ in range(2):
            c.add_node(num_cpus=1, resources={"custom": 100}, wait=False)
        c.wait_registered()
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            return _workloads(ac, ac.util, PlacementGroupSchedulingStrategy, rounds)
        finally:
            ac.shutdown()


def _side_ray(rounds: int) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"custom": 100}})
    c.add_node(num_cpus=1, resources={"custom": 100})
    ray.init(address=c.address, log_to_driver=False)
    try:
        return _workloads(ray, ray.util, PlacementGroupSchedulingStrategy, rounds)
    finally:
        ray.shutdown()
        c.shutdown()


def _run_side(python: str, side: str, rounds: int) -> dict[str, Any]:
    return dict(run_side("pg_cluster", python, side, "--rounds", str(rounds)))


def _fmt(xs: list[float]) -> str:
    m = statistics.median(xs)
    spread = (max(xs) - min(xs)) / 2 / m * 100 if m else 0.0
    return f"{m:,.0f} (±{spread:.0f}%)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ray-python", default="/tmp/rayenv/bin/python")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--side", choices=["actorcore", "ray"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        side = _side_actorcore if args.side == "actorcore" else _side_ray
        print(json.dumps(side(args.rounds)))
        return
    mine = _run_side(sys.executable, "actorcore", args.rounds)
    ray = {} if args.no_ray else _run_side(args.ray_python, "ray", args.rounds)
    print("| row | actorcore | Ray 2.60 | ratio |")
    print("|---|---:|---:|---:|")
    for row, xs in mine.items():
        r = ray.get(row)
        ratio = f"{statistics.median(xs) / statistics.median(r):.1f}x" if r else ""
        print(f"| {row} | {_fmt(xs)} | {_fmt(r) if r else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
