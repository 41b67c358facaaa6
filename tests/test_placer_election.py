"""The placer's election on a real etcd, without node daemons: one holder at a time,
every campaigner agrees on it, and when the holder's lease ends another takes over
(callbacks ``on_elected`` / ``on_lost`` tell each node)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from actorcore.gcs import EtcdControlStore, EtcdProcess

from actorcore._placer_service import PLACER_KEY, PlacerElection

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def etcd():
    with EtcdProcess(namespace="election") as server:
        yield server


async def _until(nodes, cond, timeout: float = 15.0) -> None:
    """Until ``cond()``, woken by any node's election change, within ``timeout``."""
    async with asyncio.timeout(timeout):
        while not cond():
            waits = [asyncio.ensure_future(e.changed.wait()) for e in nodes]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()


async def _node(address: str, name: bytes, events: list) -> PlacerElection:
    store = EtcdControlStore(address)
    await store.ping()
    lease = await store.grant_lease(10.0)  # (no keepalive here: it must outlive the test)
    m = SimpleNamespace(node_id=name, store=store, lease=lease)
    e = PlacerElection(m, ("127.0.0.1", 1000 + len(events)))
    e.subscribe(lambda: events.append(("elected", name)), lambda: events.append(("lost", name)))
    return e


def test_one_holder_and_takeover_when_its_lease_ends(etcd):
    address = etcd.address_for("election-1")

    async def main() -> None:
        events: list = []
        nodes = [await _node(address, bytes([i]) * 16, events) for i in range(3)]
        for e in nodes:
            e.start()
        await _until(nodes, lambda: all(e.holder is not None for e in nodes))
        holder = nodes[0].holder
        assert all(e.holder == holder for e in nodes)
        assert events == [("elected", holder)]
        old = next(e for e in nodes if e.node_id == holder)
        await old.membership.store.revoke_lease(old.membership.lease)  # its node "died"
        old.membership.lease = 0  # (it cannot campaign again)
        await _until(nodes, lambda: all(e.holder not in (None, holder) for e in nodes))
        new = nodes[1].holder
        assert all(e.holder == new for e in nodes) and new != holder
        # (each node's callbacks run on its own watch: their order across nodes varies)
        assert sorted(events) == sorted([("elected", holder), ("lost", holder), ("elected", new)])
        late: list = []
        winner = next(e for e in nodes if e.node_id == new)
        winner.subscribe(lambda: late.append("elected"))
        assert late == ["elected"]  # a late subscriber on the holder learns it at once
        await winner.resign()
        await _until(nodes, lambda: all(e.holder not in (None, new) for e in nodes))
        for e in nodes:
            await e.aclose()
            await e.membership.store.aclose()

    asyncio.run(main())


def test_the_key_lives_under_the_clusters_namespace(etcd):
    address = etcd.address_for("election-2")

    async def main() -> None:
        e = await _node(address, b"\x07" * 16, [])
        e.start()
        await _until([e], lambda: e.is_placer)
        kv = await e.membership.store.get(PLACER_KEY)
        assert kv is not None and kv.lease == e.membership.lease
        other = EtcdControlStore(etcd.address_for("election-3"))
        assert await other.get(PLACER_KEY) is None  # another cluster sees nothing
        await other.aclose()
        await e.aclose()
        await e.membership.store.aclose()

    asyncio.run(main())
