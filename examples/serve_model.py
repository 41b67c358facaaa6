"""A numpy model behind HTTP with actorcore.serve: batching, autoscaling, a load generator.

Run: python examples/serve_model.py [--seconds 5] [--connections 16] [--dim 256]
     [--small] [--address etcd://host:2379/NAME]

It serves a two-layer numpy network at /predict (POST {"x": [...]} ->
{"label": k, "score": s}); concurrent requests are grouped into one matrix
product by @serve.batch, and replicas are added under load and removed when
idle. Then it drives the server with an aiohttp client and prints throughput
and latency percentiles, and the replicas serve.status() saw.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import numpy as np

import actorcore as ac
from actorcore import serve


@serve.deployment(
    max_ongoing_requests=32,
    actor_options={"num_cpus": 0.5},
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 1.0,
        "downscale_delay_s": 5.0,
    },
)
class Model:
    def __init__(self, dim: int, classes: int = 10, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.standard_normal((dim, 4 * dim), dtype=np.float32) / np.sqrt(dim)
        self.w2 = rng.standard_normal((4 * dim, classes), dtype=np.float32) / np.sqrt(4 * dim)
        self.dim = dim

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, xs: list[np.ndarray]) -> list[dict[str, float]]:
        x = np.stack(xs)  # one matrix product for the whole batch
        logits = np.maximum(x @ self.w1, 0) @ self.w2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return [
            {"label": int(k), "score": float(p[i, k]), "batch": len(xs)}
            for i, k in enumerate(p.argmax(axis=1))
        ]

    async def __call__(self, request: serve.Request) -> dict[str, float]:
        x = np.asarray(request.json()["x"], dtype=np.float32)
        if x.shape != (self.dim,):
            return serve.HTTPResponse(f"x must have {self.dim} numbers\n", status=400)
        return await self.predict(x)


async def load(url: str, dim: int, connections: int, seconds: float) -> dict[str, float]:
    """``connections`` clients posting random inputs back to back for ``seconds``."""
    rng = np.random.default_rng(1)
    bodies = [{"x": rng.standard_normal(dim).round(3).tolist()} for _ in range(64)]
    lat: list[float] = []
    batches: list[int] = []
    failed = 0
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:

        async def client(i: int) -> None:
            nonlocal failed
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                async with s.post(url, json=bodies[i % len(bodies)]) as r:
                    if r.status != 200:
                        failed += 1
                        continue
                    batches.append((await r.json())["batch"])
                lat.append(time.perf_counter() - t0)
                i += connections

        await asyncio.gather(*[client(i) for i in range(connections)])
    lat.sort()
    n = max(len(lat), 1)
    return {
        "requests": len(lat),
        "failed": failed,
        "rps": len(lat) / seconds,
        "p50_ms": 1000 * lat[n // 2] if lat else 0.0,
        "p99_ms": 1000 * lat[min(n - 1, int(n * 0.99))] if lat else 0.0,
        "mean_batch": sum(batches) / max(len(batches), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--port", type=int, default=0, help="HTTP port (0: any free port)")
    ap.add_argument("--small", action="store_true", help="a quick run: 1 s, 4 connections")
    ap.add_argument("--address", default=None, help="a cluster to join (default: a node here)")
    args = ap.parse_args()
    if args.small:
        args.seconds, args.connections, args.dim = 1.0, 4, 16

    ac.init(address=args.address)
    ports = serve.start(http_host="127.0.0.1", http_port=args.port)
    port = next(iter(ports.values()))
    serve.run(Model.bind(args.dim), name="model", route_prefix="/predict")
    url = f"http://127.0.0.1:{port}/predict"
    print(f"serving at {url}; load: {args.connections} connections for {args.seconds:g} s")
    r = asyncio.run(load(url, args.dim, args.connections, args.seconds))
    print(
        f"{r['requests']} requests ({r['failed']} failed): {r['rps']:,.0f} req/s, "
        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, mean batch {r['mean_batch']:.1f}"
    )
    dep = serve.status().applications["model"].deployments["Model"]
    print(f"replicas now: {len(dep.replicas)} (target {dep.target_replicas}, {dep.status})")
    print(
        f"RESULT requests={r['requests']} failed={r['failed']} rps={r['rps']:.0f} "
        f"p50_ms={r['p50_ms']:.1f} p99_ms={r['p99_ms']:.1f} mean_batch={r['mean_batch']:.1f}"
    )
    serve.shutdown()
    ac.shutdown()


if __name__ == "__main__":
    main()
