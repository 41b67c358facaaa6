"""actorcore.serve end to end: real replicas (actors in worker processes), real HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import actorcore as ac
from actorcore import serve
from actorcore.testing import kill_pid, wait_for

pytestmark = pytest.mark.timeout(90)

LIGHT = {"num_cpus": 0.1}  # a process of its own per replica, without using up the CPUs


@pytest.fixture(scope="module")
def rt():
    ac.init(num_cpus=4)
    try:
        yield ac
    finally:
        serve.shutdown()
        ac.shutdown()


@serve.deployment(num_replicas=2, max_ongoing_requests=3, actor_options=LIGHT)
class Worker:
    def __init__(self, tag="v1"):
        self.tag = tag
        self.running = 0
        self.peak = 0

    async def __call__(self, x=None, delay=0.0):
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if delay:
                await asyncio.sleep(delay)
            return {"pid": os.getpid(), "tag": self.tag, "x": x}
        finally:
            self.running -= 1

    def sync_double(self, x):
        return 2 * x

    async def peak_seen(self):
        return os.getpid(), self.peak

    async def fail(self, msg):
        raise ValueError(msg)

    def count(self, n):
        yield from range(n)


def _replicas(app, dep):
    return serve.status().applications[app].deployments[dep].replicas


def _running_pids(app, dep):
    return {r.pid for r in _replicas(app, dep) if r.state == "RUNNING"}


def test_handle_calls_responses_and_composition(rt):
    h = serve.run(Worker.bind("a"), name="calls", route_prefix=None)
    r = h.remote(1)
    assert ac.get(r)["x"] == 1  # a response is an ObjectRef
    assert r.result(timeout_s=10)["tag"] == "a"
    assert h.sync_double.remote(21).result() == 42
    ready, _ = ac.wait([h.remote(2), h.remote(3)], num_returns=2, timeout=10)
    assert len(ready) == 2
    with pytest.raises(ValueError, match="nope"):
        h.fail.remote("nope").result()
    assert h.remote(h.sync_double.remote(2)).result()["x"] == 4  # a response passed on
    assert list(h.options(stream=True).count.remote(4)) == [0, 1, 2, 3]

    @serve.deployment(actor_options=LIGHT)
    class Front:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, x):
            first = await self.inner.remote(x)
            return (await self.inner.sync_double.remote(first["x"]), first["tag"])

    f = serve.run(Front.bind(Worker.bind("inner")), name="front", route_prefix=None)
    assert f.remote(5).result(timeout_s=10) == (10, "inner")

    async def on_a_loop():
        assert (await h.sync_double(4)) == 8
        rs = await asyncio.gather(*[h.remote(i) for i in range(30)])
        return [x["x"] for x in rs]

    assert asyncio.run(on_a_loop()) == list(range(30))
    serve.delete("front")


def test_routing_balance_and_the_max_ongoing_bound(rt):
    h = serve.run(Worker.bind("b"), name="bound", route_prefix=None)
    with ThreadPoolExecutor(12) as pool:  # 12 callers, 2 replicas x 3 slots
        results = list(pool.map(lambda i: h.remote(i, delay=0.02).result(timeout_s=30), range(240)))
    counts = {}
    for r in results:
        counts[r["pid"]] = counts.get(r["pid"], 0) + 1
    assert len(counts) == 2 and min(counts.values()) >= 240 * 0.3, counts
    peaks = {h.peak_seen.remote().result() for _ in range(20)}
    assert {p for _, p in peaks} and max(p for _, p in peaks) <= 3, peaks


def test_the_bound_holds_across_routers(rt):
    # two routers (this driver and a Fan replica) each keep to 2 in flight; the replica
    # itself makes sure it never runs more than 2 at once in total
    inner = Worker.options(num_replicas=1, max_ongoing_requests=2)

    @serve.deployment(actor_options=LIGHT)
    class Fan:
        def __init__(self, h):
            self.h = h

        async def __call__(self, n):
            return len(await asyncio.gather(*[self.h.remote(i, delay=0.02) for i in range(n)]))

    fan = serve.run(Fan.bind(inner.bind("x")), name="fan", route_prefix=None)
    h = serve.get_deployment_handle("Worker", app_name="fan")
    fanned = [fan.remote(10) for _ in range(3)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: h.remote(i, delay=0.02).result(timeout_s=30), range(30)))
    assert [f.result(timeout_s=30) for f in fanned] == [10, 10, 10]
    assert h.peak_seen.remote().result()[1] == 2
    serve.delete("fan")


def test_queue_timeout_raises_backpressure(rt):
    app = Worker.options(num_replicas=1, max_ongoing_requests=1, queue_timeout_s=0.3)
    h = serve.run(app.bind(), name="tiny", route_prefix=None)
    slow = h.remote(delay=3.0)

    async def second():
        with pytest.raises(serve.BackPressureError):
            await h.remote(1)

    asyncio.run(second())
    with pytest.raises(serve.BackPressureError):
        h.remote(2)  # a plain thread blocks in remote() and gives up
    assert slow.result(timeout_s=10)["x"] is None
    serve.delete("tiny")


@serve.deployment(num_replicas=1, max_ongoing_requests=32, actor_options=LIGHT)
class Batched:
    def __init__(self):
        self.sizes = []

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def square(self, xs):
        self.sizes.append(len(xs))
        return [ValueError(f"negative {x}") if x < 0 else x * x for x in xs]

    async def sizes_seen(self):
        return self.sizes


def test_batching_sizes_and_errors_to_their_callers(rt):
    h = serve.run(Batched.bind(), name="batch", route_prefix=None)

    async def go():
        xs = [*range(1, 20), -1, -2, *range(20, 30)]
        rs = await asyncio.gather(*[h.square.remote(x) for x in xs], return_exceptions=True)
        return xs, rs

    xs, rs = asyncio.run(go())
    for x, r in zip(xs, rs, strict=True):
        if x < 0:
            assert isinstance(r, ValueError) and f"negative {x}" in str(r)
        else:
            assert r == x * x
    sizes = h.sizes_seen.remote().result()
    assert max(sizes) <= 8 and max(sizes) > 1 and sum(sizes) == len(xs)
    serve.delete("batch")


class _Load:
    """Threads calling a handle in a loop until stopped; counts outcomes."""

    def __init__(self, h, n=4, **kw):
        self.h, self.kw = h, kw
        self.ok, self.errors, self.tags = 0, [], []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                r = self.h.remote(**self.kw).result(timeout_s=30)
                self.ok += 1
                self.tags.append(r["tag"])
            except Exception as e:
                self.errors.append(repr(e))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_autoscaling_up_under_load_and_down_when_idle(rt):
    app = Worker.options(
        max_ongoing_requests=4,
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": 3,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0.2,
            "downscale_delay_s": 0.5,
        },
    )
    h = serve.run(app.bind("auto"), name="auto", route_prefix=None)
    assert len(_running_pids("auto", "Worker")) == 1
    load = _Load(h, n=6, delay=0.05)
    try:
        wait_for(lambda: len(_running_pids("auto", "Worker")) == 3, 30, 0.05, "scaled up to 3")
    finally:
        load.finish()
    wait_for(lambda: len(_replicas("auto", "Worker")) == 1, 30, 0.05, "scaled back down to 1")
    assert load.ok > 0 and not load.errors, load.errors[:3]
    serve.delete("auto")


def test_rolling_update_under_load_has_no_failed_requests(rt):
    h = serve.run(Worker.bind("v1"), name="roll", route_prefix=None)
    old = _running_pids("roll", "Worker")
    load = _Load(h, n=4, delay=0.01)
    try:
        wait_for(lambda: load.ok > 20, 20, 0.02, "load running")
        serve.run(Worker.bind("v2"), name="roll", route_prefix=None)
        assert not (_running_pids("roll", "Worker") & old)
        n = load.ok
        wait_for(lambda: load.ok > n + 20, 20, 0.02, "load on the new version")
    finally:
        load.finish()
    assert not load.errors, load.errors[:3]
    assert load.tags[-1] == "v2" and "v1" in load.tags
    serve.delete("roll")


def test_replica_death_under_load_is_absorbed_and_replaced(rt):
    h = serve.run(Worker.bind("d"), name="death", route_prefix=None)
    pids = _running_pids("death", "Worker")
    load = _Load(h, n=4, delay=0.01)
    try:
        wait_for(lambda: load.ok > 20, 20, 0.02, "load running")
        victim = sorted(pids)[0]
        kill_pid(victim)
        wait_for(
            lambda: len(_running_pids("death", "Worker") - {victim}) == 2,
            30,
            0.05,
            "a replacement replica",
        )
        n = load.ok
        wait_for(lambda: load.ok > n + 20, 20, 0.02, "load after the replacement")
    finally:
        load.finish()
    assert not load.errors, load.errors[:3]
    serve.delete("death")


@serve.deployment(
    num_replicas=1, health_check_period_s=0.2, health_check_timeout_s=2, actor_options=LIGHT
)
class Sickly:
    def __init__(self):
        self.sick = False

    async def __call__(self):
        return os.getpid()

    async def make_sick(self):
        self.sick = True

    def check_health(self):
        if self.sick:
            raise RuntimeError("sick")


def test_failing_health_check_replaces_the_replica(rt):
    h = serve.run(Sickly.bind(), name="sick", route_prefix=None)
    first = h.remote().result()
    h.make_sick.remote().result()
    wait_for(lambda: _running_pids("sick", "Sickly") - {first}, 30, 0.05, "a healthy replica")
    assert h.remote().result(timeout_s=10) != first
    serve.delete("sick")


def test_status_and_cli(rt, capsys):
    from actorcore._cli import main

    serve.run(Worker.bind("s"), name="stat", route_prefix="/stat")
    st = serve.status().applications["stat"]
    assert st.status == "RUNNING" and st.route_prefix == "/stat"
    assert [r.state for r in st.deployments["Worker"].replicas] == ["RUNNING", "RUNNING"]
    assert main(["serve", "status"]) == 0
    out = capsys.readouterr().out
    assert "stat" in out and "Worker" in out and "RUNNING" in out
    serve.delete("stat")


# --- HTTP ------------------------------------------------------------------------------------


@serve.deployment(num_replicas=1, actor_options=LIGHT)
class Web:
    async def __call__(self, request: serve.Request):
        if request.method == "POST":
            return {"sum": sum(request.json()["xs"]), "sub": request.subpath}
        if request.subpath == "/text":
            return "hello"
        if request.subpath == "/boom":
            raise RuntimeError("boom")
        if request.subpath == "/teapot":
            return serve.HTTPResponse("short and stout", status=418)
        return {"q": request.query_params.get("q")}


@serve.deployment(num_replicas=1, actor_options=LIGHT)
class Streamer:
    async def __call__(self, request: serve.Request):
        n = int(request.query_params.get("n", "3"))
        for i in range(n):
            yield f"line {i}\n"
            await asyncio.sleep(0.01)


async def _check_web(base, session):
    async with session.get(f"{base}/api?q=7") as r:
        assert r.status == 200 and (await r.json()) == {"q": "7"}
    async with session.post(f"{base}/api/add", json={"xs": [1, 2, 3]}) as r:
        assert (await r.json()) == {"sum": 6, "sub": "/add"}
    async with session.get(f"{base}/api/text") as r:
        assert (await r.text()) == "hello"
    async with session.get(f"{base}/api/boom") as r:
        assert r.status == 500 and "boom" in await r.text()
    async with session.get(f"{base}/api/teapot") as r:
        assert r.status == 418


@pytest.mark.timeout(60)
async def test_http_proxy_routes_by_prefix_and_streams(rt):
    import aiohttp

    await serve.run(Web.bind(), name="web", route_prefix="/api")
    await serve.run(Streamer.bind(), name="stream", route_prefix="/stream")
    ports = await serve.start(http_host="127.0.0.1", http_port=0)
    base = f"http://127.0.0.1:{next(iter(ports.values()))}"
    async with aiohttp.ClientSession() as session:
        await _check_web(base, session)
        async with session.get(f"{base}/nothing-here") as r:
            assert r.status == 404
        async with session.get(f"{base}/stream?n=5") as r:
            chunks = [line async for line in r.content]
        assert chunks == [f"line {i}\n".encode() for i in range(5)]
    h = await serve.get_app_handle("stream")
    items = [x async for x in h.options(stream=True).remote(_req("/stream?n=3"))]
    assert items == ["line 0\n", "line 1\n", "line 2\n"]


def _req(path):
    p, _, q = path.partition("?")
    return serve.Request("GET", p, "/stream", dict([q.split("=")]) if q else {}, {}, b"")


@pytest.mark.timeout(60)
async def test_mount_in_an_existing_aiohttp_app(rt):
    import aiohttp
    from aiohttp import web

    h = await serve.run(Web.bind(), name="mounted", route_prefix=None)
    app = web.Application()

    async def own(_request):
        return web.Response(text="mine")

    app.router.add_get("/own", own)
    serve.mount(app, "/api", h)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            await _check_web(base, session)
            async with session.get(f"{base}/own") as r:
                assert (await r.text()) == "mine"
    finally:
        await runner.cleanup()


def test_example_serve_model_runs(rt):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "serve_model.py"), "--small"],
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout
    r = dict(f.split("=", 1) for f in lines[-1].split()[1:])
    assert int(r["failed"]) == 0 and int(r["requests"]) > 0, r


@serve.deployment(actor_options=LIGHT)
class Broken:
    def __init__(self):
        raise RuntimeError("cannot start")

    async def __call__(self):
        return 1


def test_a_deployment_that_cannot_start_fails_serve_run(rt):
    with pytest.raises(serve.DeploymentFailedError, match="cannot start"):
        serve.run(Broken.bind(), name="broken", route_prefix=None)
    assert serve.status().applications["broken"].status == "DEPLOY_FAILED"
    serve.delete("broken")
