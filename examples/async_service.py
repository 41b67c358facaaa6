"""Actors as stateful services behind an asyncio app: rate limiter, cache, slow backend.

Every request from the app goes through three actors, each awaited:
a token-bucket `RateLimiter` per client, an LRU `Cache`, and a `Backend`
whose answers take tens of milliseconds (and one key takes seconds). The app
gives the backend a deadline with `asyncio.wait_for` and, when it passes,
cancels the call with `ac.cancel`, so the backend stops working on it. The
run ends by showing that the services kept serving and what they counted.

Run: python examples/async_service.py [--small] [--address etcd://host:2379/NAME]
"""

import argparse
import asyncio
import random
import time
from collections import OrderedDict

import actorcore as ac


@ac.remote
class RateLimiter:
    def __init__(self, rate, burst):
        self.rate, self.burst, self.buckets = rate, burst, {}

    async def allow(self, client):
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        self.buckets[client] = (tokens - 1, now) if tokens >= 1 else (tokens, now)
        return tokens >= 1


@ac.remote
class Cache:
    def __init__(self, capacity):
        self.data, self.capacity, self.hits, self.misses = OrderedDict(), capacity, 0, 0

    async def get(self, key):
        if key in self.data:
            self.hits += 1
            self.data.move_to_end(key)
            return self.data[key]
        self.misses += 1
        return None

    async def put(self, key, value):
        self.data[key] = value
        if len(self.data) > self.capacity:
            self.data.popitem(last=False)

    async def stats(self):
        return {"hits": self.hits, "misses": self.misses, "size": len(self.data)}


@ac.remote
class Backend:
    def __init__(self):
        self.served, self.cancelled = 0, 0

    async def fetch(self, key):
        try:
            await asyncio.sleep(3.0 if key == "slow" else random.uniform(0.01, 0.05))
        except asyncio.CancelledError:
            self.cancelled += 1  # count it, then let the cancellation through
            raise
        self.served += 1
        return f"value-of-{key}"

    async def stats(self):
        return {"served": self.served, "cancelled": self.cancelled}


async def handle(services, client, key, deadline):
    """One request: (status, seconds)."""
    limiter, cache, backend = services
    t0 = time.perf_counter()
    if not await limiter.allow(client):
        return 429, time.perf_counter() - t0
    if await cache.get(key) is None:
        ref = backend.fetch.remote(key)
        try:
            value = await asyncio.wait_for(ref, deadline)
        except TimeoutError:
            ac.cancel(ref)  # the deadline passed: stop the backend's work too
            return 504, time.perf_counter() - t0
        await cache.put(key, value)
    return 200, time.perf_counter() - t0


async def client(services, name, n, think, deadline, rng):
    """A user of the app: n requests for mostly hot keys, pausing `think` seconds between them."""
    results = []
    for _ in range(n):
        key = f"k{int(rng.paretovariate(1.2)) % 200}"
        results.append(await handle(services, name, key, deadline))
        await asyncio.sleep(think)
    return results


async def main_async(args) -> None:
    await ac.init(address=args.address)
    services = (RateLimiter.remote(rate=20, burst=10), Cache.remote(capacity=50), Backend.remote())
    rng = random.Random(0)
    n, deadline = args.requests, args.deadline
    users = [client(services, f"user{i}", n, 0.05, deadline, rng) for i in range(args.users)]
    greedy = client(services, "greedy", 4 * n, 0.0, deadline, rng)  # never pauses

    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(greedy, *users) for r in rs]
    dt = time.perf_counter() - t0
    codes = [code for code, _ in results]
    lat = sorted(s for code, s in results if code == 200)
    print(
        f"{args.users} users + 1 greedy client: {len(results)} requests in {dt:.2f} s "
        f"({len(results) / dt:,.0f}/s), {codes.count(200)} ok, {codes.count(429)} rate-limited"
    )
    print(
        f"latency of ok requests: p50 {lat[len(lat) // 2] * 1e3:.1f} ms, "
        f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms"
    )

    # a deadline: the backend takes 3 s for this key, the app gives it args.deadline
    status, took = await handle(services, "patient-user", "slow", args.deadline)
    print(f"a request for the slow key: {status} after {took:.2f} s, its backend call cancelled")

    # an explicit cancel of a call in flight, then the same backend answers the next call
    ref = services[2].fetch.remote("slow")
    await asyncio.sleep(0.1)
    ac.cancel(ref)
    try:
        await ref
        cancelled = False
    except ac.errors.TaskCancelledError:
        cancelled = True
    t1 = time.perf_counter()
    after, _ = await handle(services, "patient-user", "fresh-key", args.deadline)
    after_s = time.perf_counter() - t1
    cache, backend = await services[1].stats(), await services[2].stats()
    print(
        f"ac.cancel of a call in flight: TaskCancelledError={cancelled}; "
        f"the next request got {after} in {after_s * 1e3:.0f} ms"
    )
    print(f"cache {cache}, backend {backend}")
    hit_rate = cache["hits"] / max(1, cache["hits"] + cache["misses"])
    ok = status == 504 and cancelled and after == 200 and backend["cancelled"] >= 2
    print(
        f"RESULT timeout_status={status} backend_cancelled={backend['cancelled']} "
        f"served_after_cancel={after == 200} cache_hit_rate={hit_rate:.2f} service_ok={ok}"
    )
    await ac.shutdown()
    if not ok:
        raise SystemExit("the services did not behave as expected")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=None, help="etcd://host:2379/NAME to join a cluster")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--requests", type=int, default=50, help="requests per user")
    ap.add_argument("--deadline", type=float, default=0.5, help="seconds the app gives the backend")
    ap.add_argument("--small", action="store_true", help="a quick run for CI")
    args = ap.parse_args()
    if args.small:
        args.users, args.requests = 5, 20
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
