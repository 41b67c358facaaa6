"""Streaming generators against Ray's, same workload, same run (issue 12).

    python -m bench.streaming [--items 20000] [--rounds 3] [--ray-python /tmp/rayenv/bin/python]

Rows: items per second consumed from one generator task and from one async
generator actor method (small int items, a plain ``for ref in gen: get(ref)``
consumer), with and without back-pressure, and the time from ``.remote()`` to
the first item. The same code runs with actorcore in this process and with
Ray in a subprocess (``--backend ray``), which prints its figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

RAY_PYTHON = "/tmp/rayenv/bin/python"


def _workload(lib: Any, items: int, rounds: int) -> dict[str, float]:
    streaming = {"num_returns": "streaming"}

    @lib.remote
    def produce(n):
        for i in range(n):  # noqa: UP028 (the same code runs on Ray)
            yield i

    @lib.remote
    class Source:
        async def produce(self, n):
            for i in range(n):
                yield i

    src = Source.remote()
    for ref in src.produce.options(**streaming).remote(1):  # the actor is up
        lib.get(ref)

    def rate(make, n: int) -> float:
        start = time.perf_counter()
        got = 0
        for ref in make(n):
            lib.get(ref)
            got += 1
        assert got == n, (got, n)
        return n / (time.perf_counter() - start)

    def first(make) -> float:
        times = []
        for _ in range(50):
            start = time.perf_counter()
            gen = make(1)
            lib.get(next(gen))
            times.append(time.perf_counter() - start)
            for _ref in gen:
                pass
        return statistics.median(times) * 1000

    bp = {"_generator_backpressure_num_objects": 64}
    makers = {
        "generator task": lambda n: produce.options(**streaming).remote(n),
        "generator task, back-pressure 64": lambda n: produce.options(**streaming, **bp).remote(n),
        "async generator actor method": lambda n: src.produce.options(**streaming).remote(n),
    }
    out: dict[str, Any] = {}
    rate(makers["generator task"], min(items, 2000))  # warm up workers and code
    # first items before the long runs, whose dropped refs are still being freed after
    out["generator task: first item (ms)"] = [first(makers["generator task"])]
    out["async generator actor method: first item (ms)"] = [
        first(makers["async generator actor method"])
    ]
    for name, make in makers.items():
        out[f"{name} (items/s)"] = [rate(make, items) for _ in range(rounds)]
    return out


def run(backend: str, items: int, rounds: int) -> dict[str, Any]:
    if backend == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            return _workload(ray, items, rounds)
        finally:
            ray.shutdown()
    import actorcore as ac

    ac.init(num_cpus=2)
    try:
        return _workload(ac, items, rounds)
    finally:
        ac.shutdown()


def _ray(python: str, items: int, rounds: int) -> dict[str, Any] | None:
    cmd = [python, "-m", "bench.streaming", "--backend", "ray", "--json"]
    cmd += ["--items", str(items), "--rounds", str(rounds)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"Ray run failed: {e}", file=sys.stderr)
        return None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    print(f"Ray run printed no result:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return None


def _cell(values: list[float]) -> str:
    med = statistics.median(values)
    spread = (max(values) - min(values)) / 2 / med * 100 if med and len(values) > 1 else 0
    text = f"{med:,.0f}" if med >= 100 else f"{med:.2f}"
    return f"{text} (±{spread:.0f}%)" if len(values) > 1 else text


def table(ours: dict[str, Any], ray: dict[str, Any] | None) -> str:
    lines = ["| row | actorcore | Ray 2.60 | ratio |", "|---|---:|---:|---:|"]
    for name, values in ours.items():
        theirs = (ray or {}).get(name)
        ratio = "-"
        if theirs:
            a, b = statistics.median(values), statistics.median(theirs)
            lower_better = "(ms)" in name
            ratio = f"{(b / a if lower_better else a / b):.1f}x"
        lines.append(f"| {name} | {_cell(values)} | {_cell(theirs) if theirs else '-'} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["actorcore", "ray"], default="actorcore")
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ray-python", default=RAY_PYTHON)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.json:
        print(json.dumps(run(args.backend, args.items, args.rounds)))
        return
    ray = None if args.no_ray else _ray(args.ray_python, args.items, args.rounds)
    ours = run("actorcore", args.items, args.rounds)
    print(table(ours, ray))


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
