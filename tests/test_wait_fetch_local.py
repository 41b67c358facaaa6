"""``ac.wait(fetch_local=...)`` (issue 7, item 9): a ref is ready once its value
is readable on this node (True) or once it exists anywhere (False).

On one node every ready value is local; a cross-node pull plugs into
``_values.is_local`` / ``_values.pull_local``. Here those hooks stand in for a
value held by another node, to show what ``wait`` does with each setting.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import actorcore as ac
from actorcore import _values


@ac.remote
def add(a, b):
    return a + b


@pytest.mark.timeout(60)
def test_fetch_local_must_be_a_bool(runtime):
    ref = ac.put(1)
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="fetch_local"):
            ac.wait([ref], fetch_local=bad)


@pytest.mark.timeout(60)
def test_on_one_node_ready_values_are_local_either_way(runtime):
    refs = [ac.put(np.ones(300_000)), add.remote(1, 2)]  # one in the store, one inline
    for fetch_local in (True, False):
        ready, rest = ac.wait(refs, num_returns=2, timeout=30, fetch_local=fetch_local)
        assert ready == refs and rest == []


class _Remote:
    """Pretend the values of some objects are on another node until pulled."""

    def __init__(self, monkeypatch, oids):
        self.remote = set(oids)
        self.pulls = []
        monkeypatch.setattr(_values, "is_local", lambda rt, e: e.oid not in self.remote)
        monkeypatch.setattr(_values, "pull_local", self.pull)

    def pull(self, rt, e, done):
        self.pulls.append((e, done))

    def arrive(self):
        """The pulls end: the values are local now."""
        for e, done in self.pulls:
            self.remote.discard(e.oid)
            done(e)
        self.pulls.clear()


@pytest.mark.timeout(60)
def test_fetch_local_waits_for_the_pull_and_false_does_not(runtime, monkeypatch):
    here, there = ac.put("here"), ac.put(np.ones(300_000))
    elsewhere = _Remote(monkeypatch, [there.id])

    ready, rest = ac.wait([here, there], num_returns=2, timeout=30, fetch_local=False)
    assert ready == [here, there] and not elsewhere.pulls

    ready, rest = ac.wait([here, there], num_returns=2, timeout=0.2, fetch_local=True)
    assert ready == [here] and rest == [there]
    assert [e.oid for e, _ in elsewhere.pulls] == [there.id]  # a pull was asked for

    elsewhere.pulls.clear()
    box = {}
    waiter = threading.Thread(
        target=lambda: box.update(out=ac.wait([there], num_returns=1, timeout=30))
    )
    waiter.start()
    from actorcore.testing import wait_for

    wait_for(lambda: elsewhere.pulls, 30, what="a pull asked for")
    assert waiter.is_alive()
    elsewhere.arrive()
    waiter.join(30)
    assert box["out"] == ([there], [])
    assert ac.wait([there], timeout=0, fetch_local=True) == ([there], [])


@pytest.mark.timeout(60)
def test_awaited_wait_honours_fetch_local(runtime, monkeypatch):
    there = ac.put(np.ones(300_000))
    elsewhere = _Remote(monkeypatch, [there.id])

    async def main():
        ready, _rest = await ac.wait([there], fetch_local=False)
        assert ready == [there]
        task = asyncio.ensure_future(ac.wait([there], num_returns=1, timeout=30))
        while not elsewhere.pulls:  # noqa: ASYNC110 (a hook called from the runtime)
            await asyncio.sleep(0.01)
        assert not task.done()
        elsewhere.arrive()
        assert await asyncio.wait_for(task, 30) == ([there], [])

    asyncio.run(main())
