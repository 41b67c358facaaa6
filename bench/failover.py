"""``python -m bench.failover``: recovery after a node is SIGKILLed, actorcore and Ray side by side.

Three nodes on this machine: A (the driver's, 2 CPUs), B and C (2 CPUs and
2 of resource ``w`` each). An actor (``max_restarts=1``, ``w: 1``) and a 1 MiB
object made by a retryable task live on the same ``w`` node; that node is
killed without grace (actorcore: SIGKILL of the daemon's process group, its
workers too; Ray: ``ray.cluster_utils.Cluster.remove_node(allow_graceful=False)``).
From the kill, each round times:

* **death seen**: every node and the driver list the node as dead (Ray: the
  driver's ``ray.nodes()``, i.e. the GCS);
* **actor answering**: calls made from right after the kill (one at a time,
  an error asks again) until one returns from the restarted actor on the
  other node (``__init__`` ran again; an answer from the killed node's
  orphaned worker does not count);
* **object rebuilt**: a ``get`` made right after the kill returns the object,
  rebuilt by lineage;
* **actor call with a lost argument**: a call made right after the kill, to
  an actor on the driver's node, with another such object as its argument
  returns (the argument rebuilt by lineage while the call waits for it; not
  the object of the row above, whose failed ``get`` starts its rebuild early).

actorcore runs at its default node TTL (``Config.node_ttl_s``) unless
``--ttl`` is given. Every side runs in its own subprocess.

    python -m bench.failover [--rounds 3] [--ray-python PATH] [--no-ray] [--ttl S]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Any

from bench._sides import run_side

MiB = 1 << 20


def _timed(fn: Any, out: dict[str, float], key: str, t0: float) -> threading.Thread:
    def run() -> None:
        try:
            fn()
            out[key] = time.perf_counter() - t0
        except Exception as e:  # reported as a missing figure
            out[key + "_error"] = repr(e)  # type: ignore[assignment]

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _setup(api: Any, affinity: Any) -> tuple[Any, Any, Any, Any, Any]:
    import numpy as np

    @api.remote(num_cpus=0)
    class Reader:
        def size(self, a: Any) -> int:
            return int(a.size)

    @api.remote
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def incr(self) -> tuple[int, str]:
            self.n += 1
            return self.n, api.get_runtime_context().get_node_id()

    @api.remote(max_retries=3, num_returns=2)
    def make(n: int) -> Any:
        return np.ones(n, dtype=np.uint8), api.get_runtime_context().get_node_id()

    here = api.get_runtime_context().get_node_id()
    reader = Reader.options(scheduling_strategy=affinity(here, soft=False)).remote()
    api.get(reader.size.remote(np.ones(1)), timeout=120)
    actor = Counter.options(max_restarts=1, max_task_retries=1, resources={"w": 1}).remote()
    node = api.get(actor.incr.remote(), timeout=120)[1]
    objs = []
    for _ in range(100):
        obj, where = make.options(resources={"w": 0.5}).remote(MiB)
        if api.get(where, timeout=120) == node:
            api.wait([obj], timeout=120, fetch_local=False)
            objs.append(obj)
            if len(objs) == 2:
                return actor, objs[0], node, reader, objs[1]
    raise RuntimeError("could not place the object on the actor's node")


def _after_kill(
    api: Any, actor: Any, obj: Any, node: str, call: Any, t0: float, out: dict[str, float]
) -> list[Any]:
    def answered_elsewhere() -> None:
        # the first answer from the restarted actor: a worker orphaned by the kill may
        # still answer for a moment (Ray's does), which is no recovery
        deadline = time.monotonic() + 120
        errors = []
        while time.monotonic() < deadline:
            try:
                _n, where = api.get(actor.incr.remote(), timeout=120)
            except Exception as e:  # during the restart: asked again
                errors.append(repr(e))
                continue
            if where != node:
                out["actor_calls_failed"] = float(len(errors))
                return
        raise TimeoutError(f"the actor never answered from another node: {errors[-3:]}")

    return [
        _timed(answered_elsewhere, out, "actor", t0),
        _timed(lambda: api.get(obj, timeout=120), out, "object", t0),
        _timed(lambda: api.get(call(), timeout=120), out, "call", t0),
    ]


def _actorcore_round(ttl: float | None) -> dict[str, float]:
    import actorcore as ac
    from actorcore._cluster_testing import _killpg
    from actorcore._config import Config
    from actorcore.testing import Cluster, wait_for

    ttl_s = ttl if ttl is not None else Config().node_ttl_s
    out: dict[str, float] = {"ttl_s": ttl_s}
    with Cluster(num_nodes=0, ttl_s=ttl_s) as c:
        c.add_node(num_cpus=2, wait=False)
        c.add_node(num_cpus=2, resources={"w": 2}, wait=False)
        c.add_node(num_cpus=2, resources={"w": 2}, wait=False)
        c.wait_registered()
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            actor, obj, node, reader, obj2 = _setup(ac, NodeAffinitySchedulingStrategy)
            doomed = next(n for n in c.nodes if n.node_id == node)
            others = [n for n in c.nodes if n is not doomed]
            t0 = time.perf_counter()
            import signal

            _killpg(doomed.pid, signal.SIGKILL)
            threads = _after_kill(ac, actor, obj, node, lambda: reader.size.remote(obj2), t0, out)

            def seen() -> bool:
                views = [o.nodes() for o in others] + [ac.nodes()]
                return all(any(r["NodeID"] == node and not r["Alive"] for r in v) for v in views)

            wait_for(seen, 60, interval=0.01, what="death seen")
            out["death"] = time.perf_counter() - t0
            for th in threads:
                th.join(120)
        finally:
            ac.shutdown()
            c.stop_node(doomed, kill=True)
    return out


def _ray_round() -> dict[str, float]:
    import ray
    from ray.cluster_utils import Cluster

    out: dict[str, float] = {}
    # no dashboard: its fixed port may be taken by another Ray on this machine
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    nodes = [c.add_node(num_cpus=2, resources={"w": 2}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address)
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor, obj, node, reader, obj2 = _setup(ray, NodeAffinitySchedulingStrategy)
        doomed = next(n for n in nodes if n.node_id == node)
        t0 = time.perf_counter()
        c.remove_node(doomed, allow_graceful=False)
        threads = _after_kill(ray, actor, obj, node, lambda: reader.size.remote(obj2), t0, out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(r["NodeID"] == node and not r["Alive"] for r in ray.nodes()):
                out["death"] = time.perf_counter() - t0
                break
            time.sleep(0.01)  # polling a state with a deadline
        for th in threads:
            th.join(120)
    finally:
        ray.shutdown()
        c.shutdown()
    return out


def _side(which: str, rounds: int, ttl: float | None) -> list[dict[str, float]]:
    results = []
    for _ in range(rounds):
        results.append(_actorcore_round(ttl) if which == "actorcore" else _ray_round())
    return results


def _run_side(python: str, which: str, rounds: int, ttl: float | None) -> list[dict[str, Any]]:
    extra = ["--ttl", str(ttl)] if ttl is not None else []
    return list(run_side("failover", python, which, "--rounds", str(rounds), *extra, timeout=1800))


def _median(rows: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in rows if isinstance(r.get(key), float)]
    if not vals:
        errors = [r.get(key + "_error") for r in rows if r.get(key + "_error")]
        return f"failed ({errors[0]})" if errors else "-"
    return f"{statistics.median(vals):.2f} s ({min(vals):.2f}-{max(vals):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ray-python", default="/tmp/rayenv/bin/python")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--ttl", type=float, default=None)
    p.add_argument("--side", choices=["actorcore", "ray"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps(_side(args.side, args.rounds, args.ttl)))
        return
    sides = {"actorcore": _run_side(sys.executable, "actorcore", args.rounds, args.ttl)}
    if not args.no_ray:
        try:
            sides["ray 2.60"] = _run_side(args.ray_python, "ray", args.rounds, None)
        except RuntimeError as e:  # the actorcore figures still count
            print(f"(the Ray side failed: {str(e)[-600:]})")
    print(f"rounds: {args.rounds}; median (min-max) seconds from the SIGKILL")
    print("| | " + " | ".join(sides) + " |")
    print("|---|" + "---|" * len(sides))
    for key, label in (
        ("death", "death seen by every node"),
        ("actor", "actor answering on another node"),
        ("object", "lost object rebuilt (lineage)"),
        ("call", "actor call with a lost argument answered"),
    ):
        print(f"| {label} | " + " | ".join(_median(r, key) for r in sides.values()) + " |")
    ttl = sides["actorcore"][0].get("ttl_s")
    print(f"actorcore node TTL: {ttl} s")


if __name__ == "__main__":
    main()
