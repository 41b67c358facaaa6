"""actorcore embedded in an aiohttp app that owns the event loop (asyncio and uvloop)."""

import asyncio
import importlib.util
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example():
    path = os.path.join(ROOT, "examples", "aiohttp_app.py")
    spec = importlib.util.spec_from_file_location("aiohttp_app_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(90)
async def test_aiohttp_app_counts_requests_with_an_actor():
    app = load_example().make_app()
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        texts = []
        for word in ("one", "two"):
            resp = await client.get("/", params={"say": word})
            assert resp.status == 200
            texts.append(await resp.text())
        assert texts == ["ONE (hit 1)\n", "TWO (hit 2)\n"]
        # concurrent requests on the app's loop: the actor serializes the count
        resps = await asyncio.gather(*(client.get("/") for _ in range(20)))
        bodies = [await r.text() for r in resps]
        hits = sorted(int(b.split("hit ")[1].rstrip(")\n")) for b in bodies)
        assert hits == list(range(3, 23))
    # on_cleanup ran `await ac.shutdown()`
    import actorcore as ac

    assert not ac.is_initialized()
