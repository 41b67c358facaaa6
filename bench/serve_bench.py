"""HTTP serving: actorcore.serve against Ray Serve 2.60, side by side, same load generator.

    python -m bench.serve_bench [--duration 5] [--ray-python /tmp/rayenv/bin/python]
                                [--no-ray] [--markdown bench/RESULTS.md]

Each side runs in a subprocess of its own interpreter (this file, ``--side``):
it starts a node, serves a trivial deployment and a batched one with one and
two replicas, and drives each over HTTP on 127.0.0.1 with an aiohttp client
holding 4 and then 32 connections, each sending its next request as soon as
the last is answered. Reported: requests/s, p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

CONNECTIONS = (4, 32)
REPLICAS = (1, 2)
KINDS = ("trivial", "batched")
MAX_ONGOING = 64
BATCH = {"max_batch_size": 16, "batch_wait_timeout_s": 0.002}


# --- the load generator (shared by both sides) ----------------------------------------------


async def drive(url: str, conns: int, duration: float, warmup: float) -> dict[str, float]:
    """``conns`` clients, each sending a request as soon as the last is answered."""
    import aiohttp

    lat: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=conns, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        measure_from = start + warmup
        end = measure_from + duration

        async def client() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                async with session.get(url) as r:
                    await r.read()
                    ok = r.status == 200
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    if ok:
                        lat.append(t1 - t0)
                    else:
                        errors += 1

        await asyncio.gather(*[client() for _ in range(conns)])
    lat.sort()
    n = len(lat)
    return {
        "rps": n / duration,
        "p50_ms": 1000 * lat[n // 2] if n else float("nan"),
        "p99_ms": 1000 * lat[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "errors": errors,
    }


def _run_load(port: int, prefix: str, duration: float) -> list[dict[str, object]]:
    rows = []
    for conns in CONNECTIONS:
        res = asyncio.run(drive(f"http://127.0.0.1:{port}{prefix}", conns, duration, 1.0))
        rows.append({"connections": conns, **res})
    return rows


# --- actorcore side --------------------------------------------------------------------------


def _actorcore_side(duration: float) -> list[dict[str, object]]:
    import actorcore as ac
    from actorcore import serve

    @serve.deployment(max_ongoing_requests=MAX_ONGOING, actor_options={"num_cpus": 1})
    class Trivial:
        async def __call__(self, request):
            return "ok"

    @serve.deployment(max_ongoing_requests=MAX_ONGOING, actor_options={"num_cpus": 1})
    class Batched:
        @serve.batch(**BATCH)
        async def handle(self, requests):
            return ["ok"] * len(requests)

        async def __call__(self, request):
            return await self.handle(request)

    ac.init(num_cpus=4)
    ports = serve.start(http_host="127.0.0.1", http_port=0)
    port = next(iter(ports.values()))
    out = []
    for kind, dep in (("trivial", Trivial), ("batched", Batched)):
        for n in REPLICAS:
            serve.run(dep.options(num_replicas=n).bind(), name=kind, route_prefix=f"/{kind}")
            for row in _run_load(port, f"/{kind}", duration):
                out.append({"kind": kind, "replicas": n, **row})
        serve.delete(kind)
    serve.shutdown()
    ac.shutdown()
    return out


# --- Ray side --------------------------------------------------------------------------------


def _ray_side(duration: float) -> list[dict[str, object]]:
    import logging

    import ray
    from ray import serve

    @serve.deployment(max_ongoing_requests=MAX_ONGOING, ray_actor_options={"num_cpus": 1})
    class Trivial:
        async def __call__(self, request):
            return "ok"

    @serve.deployment(max_ongoing_requests=MAX_ONGOING, ray_actor_options={"num_cpus": 1})
    class Batched:
        @serve.batch(**BATCH)
        async def handle(self, requests):
            return ["ok"] * len(requests)

        async def __call__(self, request):
            return await self.handle(request)

    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.ERROR)
    port = 18000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    out = []
    for kind, dep in (("trivial", Trivial), ("batched", Batched)):
        for n in REPLICAS:
            serve.run(dep.options(num_replicas=n).bind(), name=kind, route_prefix=f"/{kind}")
            for row in _run_load(port, f"/{kind}", duration):
                out.append({"kind": kind, "replicas": n, **row})
        serve.delete(kind)
    serve.shutdown()
    ray.shutdown()
    return out


# --- the comparison --------------------------------------------------------------------------


def _side(python: str, side: str, duration: float) -> list[dict[str, object]]:
    here = os.path.abspath(__file__)
    proc = subprocess.run(
        [python, here, "--side", side, "--duration", str(duration)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise RuntimeError(f"the {side} side failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def _median(runs: list[list[dict[str, object]]]) -> list[dict[str, object]]:
    """Cell by cell, the median of each figure over the rounds."""
    out = []
    for rows in zip(*runs, strict=True):
        row = dict(rows[0])
        for k in ("rps", "p50_ms", "p99_ms"):
            row[k] = statistics.median(float(r[k]) for r in rows)  # type: ignore[arg-type]
        row["errors"] = sum(int(r["errors"]) for r in rows)  # type: ignore[call-overload]
        out.append(row)
    return out


def _table(ours: list[dict[str, object]], ray: list[dict[str, object]] | None) -> str:
    def key(r: dict[str, object]) -> tuple[object, object, object]:
        return (r["kind"], r["replicas"], r["connections"])

    theirs = {key(r): r for r in ray or []}
    head = "| deployment | replicas | connections | actorcore req/s | p50 / p99 ms |"
    sep = "|---|---:|---:|---:|---:|"
    if ray is not None:
        head += " Ray Serve req/s | p50 / p99 ms | req/s ratio | lower p99 |"
        sep += "---:|---:|---:|:---:|"
    lines = [head, sep]
    for r in ours:
        cells = [
            str(r["kind"]),
            str(r["replicas"]),
            str(r["connections"]),
            f"{r['rps']:,.0f}",
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}",
        ]
        t = theirs.get(key(r))
        if t is not None:
            cells += [
                f"{t['rps']:,.0f}",
                f"{t['p50_ms']:.1f} / {t['p99_ms']:.1f}",
                f"{float(r['rps']) / max(float(t['rps']), 1e-9):.1f}x",
                "yes" if float(r["p99_ms"]) < float(t["p99_ms"]) else "NO",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["actorcore", "ray"])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds; medians reported")
    ap.add_argument("--ray-python", default="/tmp/rayenv/bin/python")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--markdown", help="append the table to this file")
    args = ap.parse_args(argv)
    if args.side:
        fn = _actorcore_side if args.side == "actorcore" else _ray_side
        print("RESULT " + json.dumps(fn(args.duration)), flush=True)
        return 0
    ours_runs: list[list[dict[str, object]]] = []
    ray_runs: list[list[dict[str, object]]] = []
    for _ in range(args.rounds):  # alternate, so both sides see the same machine
        ours_runs.append(_side(sys.executable, "actorcore", args.duration))
        if not args.no_ray:
            ray_runs.append(_side(args.ray_python, "ray", args.duration))
    ours = _median(ours_runs)
    ray = _median(ray_runs) if ray_runs else None
    table = _table(ours, ray)
    print(table)
    if args.markdown:
        cmd = f"python -m bench.serve_bench --duration {args.duration:g} --rounds {args.rounds}"
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        with open(args.markdown, "a") as f:
            f.write(
                f"\n## Serve (issue 13)\n\nRun {stamp} on {os.uname().nodename} "
                f"({os.cpu_count()} cores), with:\n\n    {cmd}\n\n"
                f"Each row: an aiohttp client on 127.0.0.1 holding N connections, each sending "
                f"its next GET when the last is answered, for {args.duration:g} s after 1 s of "
                f"warm-up; median of {args.rounds} alternating round(s) per side; "
                f"max_ongoing_requests={MAX_ONGOING}, one CPU per replica on both sides, "
                f"batching {BATCH}. Load average at the end: {load}.\n\n{table}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
