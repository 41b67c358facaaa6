"""``python -m bench.scheduling``: two-level scheduling on real nodes, actorcore and Ray.

Every side runs in its own subprocess on this machine (real etcd for actorcore,
``ray.cluster_utils.Cluster`` for Ray via ``--ray-python``). Rows:

* eight 0.5 s tasks submitted at once on two 1-CPU nodes (s; ideal 2.0), warm;
* one task submitted while the driver's node is busy, so it runs on the other
  node (ms, submit to result, a fresh lease each time): what a spilled task
  pays, against the same task when the driver's node has room (local);
  actorcore: the placer on the driver's node (2 nodes, as Ray's head) and on a
  third node (one more network hop each way). Ray: its raylet spills back to
  the other node (the owner asks there again);
* actorcore only: placer failover, SIGKILL of the placer's node to the next
  placement of spilled work (node TTL 3 s; etcd counts whole seconds).

    python -m bench.scheduling [--rounds 5] [--ray-python PATH] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from bench._sides import run_side

LINGER_S = 0.3  # > the owner's lease linger (0.2 s): each timed task asks a new lease


def _burst(api: Any, rounds: int) -> list[float]:
    @api.remote(num_cpus=1)
    def nap(t: float) -> int:
        time.sleep(t)
        return 1

    api.get([nap.remote(0.01) for _ in range(8)], timeout=120)  # workers up on both nodes
    out = []
    for _ in range(rounds + 1):
        time.sleep(LINGER_S)
        t = time.perf_counter()
        api.get([nap.remote(0.5) for _ in range(8)], timeout=120)
        out.append(time.perf_counter() - t)
    return out[1:]  # (the first round warms what is left)


def _hop(api: Any, rounds: int, here: str, node_of: Any) -> dict[str, list[float]]:
    """Latency of one 1-CPU task: local (the driver's node idle) and spilled (busy)."""

    @api.remote(num_cpus=1)
    def where() -> str:
        return node_of()

    @api.remote(num_cpus=1)
    class Hog:
        def node(self) -> str:
            return node_of()

    def one() -> tuple[float, str]:
        time.sleep(LINGER_S)  # the last lease went back: this one asks again
        t = time.perf_counter()
        node = api.get(where.remote(), timeout=60)
        return (time.perf_counter() - t) * 1e3, node

    for _ in range(3):
        one()
    local = []
    for _ in range(rounds * 2):
        ms, node = one()
        if node == here:
            local.append(ms)
    hog = Hog.options(**_pin(api, here)).remote()
    assert api.get(hog.node.remote(), timeout=60) == here
    spilled = []
    for _ in range(rounds * 2):
        ms, node = one()
        assert node != here
        spilled.append(ms)
    api.kill(hog)
    return {"task, driver's node idle: local (ms)": local, "task spilled (ms)": spilled}


def _pin(api: Any, node: str) -> dict[str, Any]:
    if api.__name__ == "ray":
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as A
    else:
        from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy as A
    return {"scheduling_strategy": A(node, soft=False)}


def _side_actorcore(rounds: int) -> dict[str, Any]:
    import actorcore as ac
    from actorcore import _protocol as P
    from actorcore._rpc import next_rid
    from actorcore.testing import Cluster, wait_for

    def node_of() -> str:
        return ac.get_runtime_context().get_node_id()

    out: dict[str, Any] = {}
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        a = c.add_node(num_cpus=1)  # first: it holds the placer
        c.add_node(num_cpus=1)
        ac.init(address=c.address, attach_node=a.node_id)
        try:
            out["8 x 0.5 s tasks on two 1-CPU nodes (s)"] = _burst(ac, rounds)
            hop = _hop(ac, rounds, a.node_id, node_of)
            out.update({k.replace("(ms)", "(ms), placer on it"): v for k, v in hop.items()})
        finally:
            ac.shutdown()
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        p = c.add_node(num_cpus=0.001)  # the placer's node (runs no 1-CPU work)
        a = c.add_node(num_cpus=1)
        c.add_node(num_cpus=1)
        wait_for(lambda: _placer(a, P, next_rid) == p.node_id, 30)
        ac.init(address=c.address, attach_node=a.node_id)
        try:
            hop = _hop(ac, rounds, a.node_id, node_of)
            out["task spilled (ms), placer on a third node"] = hop["task spilled (ms)"]
            out["placer failover: SIGKILL to next placement (s)"] = [_failover(ac, c, p, a)]
        finally:
            ac.shutdown()
    return out


def _placer(node: Any, P: Any, next_rid: Any) -> str | None:
    return node.ask(P.ClusterInfoMsg(next_rid(), "placer"))["node_id"]


def _failover(ac: Any, c: Any, p: Any, a: Any) -> float:
    """Kill the placer's node while A is busy; time until a task that must spill ran."""

    @ac.remote(num_cpus=1)
    def where() -> str:
        return ac.get_runtime_context().get_node_id()

    @ac.remote(num_cpus=1)
    class Hog:
        def node(self) -> str:
            return ac.get_runtime_context().get_node_id()

    hog = Hog.options(**_pin(ac, a.node_id)).remote()
    ac.get(hog.node.remote(), timeout=60)
    time.sleep(LINGER_S)
    t = time.perf_counter()
    c.stop_node(p, kill=True)
    node = ac.get(where.remote(), timeout=60)
    took = time.perf_counter() - t
    assert node not in (a.node_id, p.node_id)
    ac.kill(hog)
    return took


def _side_ray(rounds: int) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    def node_of() -> str:
        return ray.get_runtime_context().get_node_id()

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    try:
        out: dict[str, Any] = {"8 x 0.5 s tasks on two 1-CPU nodes (s)": _burst(ray, rounds)}
        here = ray.get_runtime_context().get_node_id()
        hop = _hop(ray, rounds, here, node_of)
        out.update({k.replace("(ms)", "(ms), placer on it"): v for k, v in hop.items()})
        return out
    finally:
        ray.shutdown()
        c.shutdown()


def _run_side(python: str, side: str, rounds: int) -> dict[str, Any]:
    return dict(run_side("scheduling", python, side, "--rounds", str(rounds)))


def _fmt(xs: list[float]) -> str:
    m = statistics.median(xs)
    return f"{m:.1f}" if m >= 10 else f"{m:.2f}"


def _span(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if max(xs) < 10 else f"{min(xs):.1f}-{max(xs):.1f}"


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
    ray = {} if args.no_ray else _run_side(args.ray_python, "ray", args.rounds)
    mine = _run_side(sys.executable, "actorcore", args.rounds)
    print("| row | actorcore median (min-max) | Ray 2.60 median (min-max) |")
    print("|---|---:|---:|")
    for row in dict.fromkeys([*mine, *ray]):
        xs, r = mine.get(row), ray.get(row)
        a = f"{_fmt(xs)} ({_span(xs)})" if xs else "-"
        b = f"{_fmt(r)} ({_span(r)})" if r else "-"
        print(f"| {row} | {a} | {b} |")


if __name__ == "__main__":
    main()
