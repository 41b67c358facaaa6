"""The rows of ``ray microbenchmark`` (Ray 2.60, ``ray/_private/ray_perf.py``),
written once and run under either framework.

Run as a script with ``--framework ray`` (by a Python that has Ray) or
``--framework actorcore``; it then reads row names on stdin, one per line,
and answers each with one JSON line. The workloads are Ray's, line for line;
only the timing loop is ours (the same for both frameworks): a warm-up, then
``rounds`` rounds of about ``round_s`` seconds, reporting the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

fw: Any = None  # the framework module: ray, or actorcore
ROUNDS = 5
ROUND_S = 1.0
WARMUP_S = 1.0


def timeit(fn: Callable[[], Any], multiplier: float = 1) -> dict[str, Any]:
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < WARMUP_S:
        fn()
        count += 1
    step = count // 10 + 1
    stats = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < ROUND_S:
            for _ in range(step):
                fn()
            count += step
        stats.append(multiplier * count / (time.perf_counter() - start))
    return {
        "median": statistics.median(stats),
        "mean": statistics.fmean(stats),
        "sd": statistics.pstdev(stats),
        "rounds": stats,
    }


def define() -> dict[str, Callable[[], dict[str, Any]]]:
    """Ray's workloads, against ``fw``. Returns row name -> measuring function."""
    ray = fw

    @ray.remote(num_cpus=0)
    class Actor:
        def small_value(self):
            return b"ok"

        def small_value_arg(self, x):
            return b"ok"

        def small_value_batch(self, n):
            ray.get([small_value.remote() for _ in range(n)])

    @ray.remote
    class AsyncActor:
        async def small_value(self):
            return b"ok"

        async def small_value_with_arg(self, x):
            return b"ok"

        async def small_value_batch(self, n):
            await asyncio.wait([small_value.remote() for _ in range(n)])

    @ray.remote(num_cpus=0)
    class Client:
        def __init__(self, servers):
            if not isinstance(servers, list):
                servers = [servers]
            self.servers = servers

        def small_value_batch(self, n):
            results = []
            for s in self.servers:
                results.extend([s.small_value.remote() for _ in range(n)])
            ray.get(results)

        def small_value_batch_arg(self, n):
            x = ray.put(0)
            results = []
            for s in self.servers:
                results.extend([s.small_value_arg.remote(x) for _ in range(n)])
            ray.get(results)

    @ray.remote
    def small_value():
        return b"ok"

    @ray.remote
    def create_object_containing_ref():
        obj_refs = []
        for _ in range(10000):
            obj_refs.append(ray.put(1))
        return obj_refs

    @ray.remote
    def do_put_small():
        for _ in range(100):
            ray.put(0)

    @ray.remote
    def do_put():
        for _ in range(10):
            ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))

    rows: dict[str, Callable[[], dict[str, Any]]] = {}

    def row(name: str) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], dict[str, Any]]]:
        def add(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
            rows[name] = fn
            return fn

        return add

    n_cpu = multiprocessing.cpu_count() // 2

    @row("single client get calls (Plasma Store)")
    def _():
        value = ray.put(0)
        return timeit(lambda: ray.get(value))

    @row("single client put calls (Plasma Store)")
    def _():
        return timeit(lambda: ray.put(0))

    @row("multi client put calls (Plasma Store)")
    def _():
        return timeit(lambda: ray.get([do_put_small.remote() for _ in range(10)]), 1000)

    @row("single client put gigabytes")
    def _():
        arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
        return timeit(lambda: ray.put(arr), 8 * 0.1)

    @row("single client tasks and get batch")
    def _():
        def batch():
            submitted = [small_value.remote() for _ in range(1000)]
            ray.get(submitted)

        return timeit(batch)

    @row("multi client put gigabytes")
    def _():
        return timeit(lambda: ray.get([do_put.remote() for _ in range(10)]), 10 * 8 * 0.1)

    @row("single client get object containing 10k refs")
    def _():
        obj_containing_ref = create_object_containing_ref.remote()
        return timeit(lambda: ray.get(obj_containing_ref))

    @row("single client wait 1k refs")
    def _():
        def wait_multiple_refs():
            num_objs = 1000
            not_ready = [small_value.remote() for _ in range(num_objs)]
            fetch_local = True
            for _ in range(num_objs):
                _ready, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
                if fetch_local:
                    fetch_local = False

        return timeit(wait_multiple_refs)

    @row("single client tasks sync")
    def _():
        return timeit(lambda: ray.get(small_value.remote()))

    @row("single client tasks async")
    def _():
        return timeit(lambda: ray.get([small_value.remote() for _ in range(1000)]), 1000)

    @row("multi client tasks async")
    def _():
        n, m = 10000, 4
        actors = [Actor.remote() for _ in range(m)]
        return timeit(lambda: ray.get([a.small_value_batch.remote(n) for a in actors]), n * m)

    @row("1:1 actor calls sync")
    def _():
        a = Actor.remote()
        return timeit(lambda: ray.get(a.small_value.remote()))

    @row("1:1 actor calls async")
    def _():
        a = Actor.remote()
        return timeit(lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000)

    @row("1:1 actor calls concurrent")
    def _():
        a = Actor.options(max_concurrency=16).remote()
        return timeit(lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000)

    @row("1:n actor calls async")
    def _():
        n = 5000
        actors = [Actor.remote() for _ in range(n_cpu)]
        client = Client.remote(actors)
        return timeit(lambda: ray.get(client.small_value_batch.remote(n)), n * len(actors))

    @row("n:n actor calls async")
    def _():
        n, m = 5000, 4
        a = [Actor.remote() for _ in range(n_cpu)]

        @ray.remote
        def work(actors):
            ray.get([actors[i % n_cpu].small_value.remote() for i in range(n)])

        return timeit(lambda: ray.get([work.remote(a) for _ in range(m)]), m * n)

    @row("n:n actor calls with arg async")
    def _():
        n = 1000
        actors = [Actor.remote() for _ in range(n_cpu)]
        clients = [Client.remote(a) for a in actors]
        return timeit(
            lambda: ray.get([c.small_value_batch_arg.remote(n) for c in clients]), n * len(clients)
        )

    @row("1:1 async-actor calls sync")
    def _():
        a = AsyncActor.remote()
        return timeit(lambda: ray.get(a.small_value.remote()))

    @row("1:1 async-actor calls async")
    def _():
        a = AsyncActor.remote()
        return timeit(lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000)

    @row("1:1 async-actor calls with args async")
    def _():
        a = AsyncActor.remote()
        return timeit(
            lambda: ray.get([a.small_value_with_arg.remote(i) for i in range(1000)]), 1000
        )

    @row("1:n async-actor calls async")
    def _():
        n = 5000
        actors = [AsyncActor.remote() for _ in range(n_cpu)]
        client = Client.remote(actors)
        return timeit(lambda: ray.get(client.small_value_batch.remote(n)), n * len(actors))

    @row("n:n async-actor calls async")
    def _():
        n, m = 5000, 4
        a = [AsyncActor.remote() for _ in range(n_cpu)]

        @ray.remote
        def async_actor_work(actors):
            ray.get([actors[i % n_cpu].small_value.remote() for i in range(n)])

        return timeit(lambda: ray.get([async_actor_work.remote(a) for _ in range(m)]), m * n)

    @row("placement group create/removal")
    def _():
        util = ray.util
        num_pgs = 100
        # as ray_perf.py: a node with a custom resource for the bundles
        ray.shutdown()
        init_framework(resources={"custom": 100})

        def create_remove():
            pgs = [util.placement_group(bundles=[{"custom": 0.001}]) for _ in range(num_pgs)]
            [pg.wait(timeout_seconds=30) for pg in pgs]
            for pg in pgs:
                util.remove_placement_group(pg)

        try:
            return timeit(create_remove, num_pgs)
        finally:
            ray.shutdown()
            init_framework()

    # --- beyond Ray's rows ---------------------------------------------------------

    def get_array(mib: int) -> dict[str, Any]:
        ref = ray.put(np.ones(mib * 1024 * 1024 // 8, dtype=np.float64))

        def get_once() -> None:
            a = ray.get(ref)
            assert a.shape[0] == mib * 1024 * 1024 // 8

        return timeit(get_once)

    @row("single client get calls, 2 MiB numpy array")
    def _():
        return get_array(2)

    @row("single client get calls, 200 MiB numpy array")
    def _():
        return get_array(200)

    @row("1:1 actor call latency (p50/p99 us)")
    def _():
        a = Actor.remote()
        ray.get(a.small_value.remote())
        samples = []
        deadline = time.perf_counter() + ROUNDS * ROUND_S
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            ray.get(a.small_value.remote())
            samples.append((time.perf_counter() - t) * 1e6)
        samples.sort()
        p50 = samples[len(samples) // 2]
        p99 = samples[int(len(samples) * 0.99)]
        return {"median": p50, "p99": p99, "n": len(samples), "unit": "us"}

    @row("asyncio driver, 100 coroutines awaiting actor calls")
    def _():
        a = AsyncActor.remote()

        async def one(k: int) -> None:
            for _ in range(k):
                await a.small_value.remote()

        async def batch() -> None:
            await asyncio.gather(*(one(10) for _ in range(100)))

        loop = asyncio.new_event_loop()
        try:
            return timeit(lambda: loop.run_until_complete(batch()), 1000)
        finally:
            loop.close()

    @row("asyncio driver, async-actor calls awaited one at a time")
    def _():
        a = AsyncActor.remote()

        async def seq() -> None:
            for _ in range(100):
                await a.small_value.remote()

        loop = asyncio.new_event_loop()
        try:
            return timeit(lambda: loop.run_until_complete(seq()), 100)
        finally:
            loop.close()

    @row("cancel of a task blocked in time.sleep, to its error (s)")
    def _():
        @ray.remote
        def sleeper(path: str) -> None:
            open(path, "w").close()
            time.sleep(60)

        import tempfile

        samples = []
        for i in range(3):
            path = os.path.join(tempfile.mkdtemp(), f"started{i}")
            ref = sleeper.remote(path)
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)  # a benchmark's own polling, not a test
            t = time.perf_counter()
            ray.cancel(ref)
            try:
                ray.get(ref, timeout=CANCEL_CAP_S)
            except Exception as e:  # the cancel's error (or the cap: it did not land)
                if "imeout" in type(e).__name__:
                    samples.append(CANCEL_CAP_S)
                    ray.cancel(ref, force=True)
                    continue
            samples.append(time.perf_counter() - t)
        return {"median": statistics.median(samples), "rounds": samples, "unit": "s"}

    return rows


CANCEL_CAP_S = 10.0  # a cancel that has not landed by then is reported as this


def light_actors(n: int) -> dict[str, Any]:
    """Create ``n`` light actors, call each once; time and memory of the node."""
    import psutil

    @fw.remote
    class Light:
        def __init__(self):
            self.v = 0

        def ping(self):
            return 1

    t0 = time.perf_counter()
    actors = [Light.remote() for _ in range(n)]  # type: ignore[attr-defined]
    total = sum(fw.get([a.ping.remote() for a in actors]))
    dt = time.perf_counter() - t0
    assert total == n
    procs = psutil.Process().children(recursive=True)
    rss = sum(_rss(p) for p in procs)
    del actors
    return {"median": n / dt, "seconds": dt, "rss_mb": rss / 2**20, "processes": len(procs), "n": n}


def _rss(p: Any) -> int:
    try:
        return int(p.memory_info().rss)
    except Exception:
        return 0


def idle_rss() -> dict[str, Any]:
    """RSS summed over every runtime process (not the driver), idle after one task."""
    import psutil

    @fw.remote
    def one():
        return 1

    fw.get(one.remote())
    time.sleep(2.0)  # let start-up work settle; this measures an idle node
    me = psutil.Process()
    procs = me.children(recursive=True)  # both frameworks start their node below the driver
    rss = sum(_rss(p) for p in procs)
    return {
        "median": rss / 2**20,
        "processes": len(procs),
        "driver_mb": me.memory_info().rss / 2**20,
        "unit": "MB",
    }


def init_framework(**kw: Any) -> None:
    if fw.__name__ == "ray":
        fw.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, **kw)
    else:
        fw.init(**kw)


def serve(framework: str) -> None:
    global fw
    if framework == "ray":
        import ray

        fw = ray
    else:
        import actorcore

        fw = actorcore
    init_framework()
    rows = define()
    extra = {"idle RSS of runtime processes (MB)": idle_rss}
    print(json.dumps({"ready": sorted(rows) + sorted(extra)}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        try:
            if name.startswith("light actors "):
                result = light_actors(int(name.split()[-1]))
            elif name in extra:
                result = extra[name]()
            elif name in rows:
                result = rows[name]()
            else:
                result = {"error": f"unknown row {name!r}"}
        except Exception as e:  # report and go on with the next row
            result = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps({"row": name, **result}), flush=True)
    fw.shutdown()


def main() -> None:
    global ROUNDS, ROUND_S, WARMUP_S
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=["ray", "actorcore"], required=True)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--round-s", type=float, default=ROUND_S)
    ap.add_argument("--warmup-s", type=float, default=WARMUP_S)
    args = ap.parse_args()
    ROUNDS, ROUND_S, WARMUP_S = args.rounds, args.round_s, args.warmup_s
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    serve(args.framework)


if __name__ == "__main__":
    main()
