"""RetryingControlStore: writes wait out an outage; a node that may have lost its
lease writes nothing (``may_write``), however long the write has waited."""

from __future__ import annotations

import asyncio

import pytest

from actorcore.gcs import (
    ControlStoreUnavailableError,
    EmbeddedControlStore,
    NameRegistry,
    PutOp,
    RetryingControlStore,
)
from actorcore.gcs._retry import NotVouchedError

pytestmark = pytest.mark.timeout(30)


class Flaky(EmbeddedControlStore):
    """An embedded store that is "unreachable" while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.tries = 0
        self.retried = asyncio.Event()  # set at the second try: the write is waiting

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        self.tries += 1
        if self.tries >= 2:
            self.retried.set()
        if self.down:
            raise ControlStoreUnavailableError("etcd away (test)")
        return await super().put(key, value, lease=lease)


def test_writes_are_refused_and_reads_go_when_not_vouched():
    async def main():
        async with EmbeddedControlStore() as inner:
            vouched = True
            store = RetryingControlStore(inner, max_wait_s=5, may_write=lambda: vouched)
            await store.put(b"/k", b"1")
            names = NameRegistry(store)
            assert await names.claim("ns", "a", b"actor-1")
            vouched = False
            with pytest.raises(NotVouchedError):
                await store.put(b"/k", b"2")
            with pytest.raises(NotVouchedError):
                await store.delete(b"/k")
            with pytest.raises(NotVouchedError):
                await store.txn([], [PutOp(b"/k", b"3")])
            with pytest.raises(NotVouchedError):
                await names.release("ns", "a", b"actor-1")
            assert (await store.get(b"/k")).value == b"1"  # reads still go
            assert await names.lookup("ns", "a") == b"actor-1"  # the name stays
            assert store.refused == 4
            vouched = True
            await store.put(b"/k", b"4")
            assert (await inner.get(b"/k")).value == b"4"

    asyncio.run(main())


def test_a_write_waiting_out_an_outage_is_refused_once_the_node_is_not_vouched():
    async def main():
        inner = Flaky()
        async with inner:
            vouched = True
            store = RetryingControlStore(inner, max_wait_s=20, may_write=lambda: vouched)
            inner.down = True
            write = asyncio.create_task(store.put(b"/k", b"late"))
            await asyncio.wait_for(inner.retried.wait(), 10)  # it waits for etcd
            vouched = False  # e.g. the node fenced meanwhile
            inner.down = False  # etcd is back: the write must not land now
            with pytest.raises(NotVouchedError):
                await asyncio.wait_for(write, 10)
            assert await inner.get(b"/k") is None

    asyncio.run(main())


def test_without_may_write_an_outage_is_waited_out():
    async def main():
        inner = Flaky()
        async with inner:
            store = RetryingControlStore(inner, max_wait_s=20)
            inner.down = True
            write = asyncio.create_task(store.put(b"/k", b"v"))
            await asyncio.wait_for(inner.retried.wait(), 10)
            inner.down = False
            await asyncio.wait_for(write, 10)
            assert (await inner.get(b"/k")).value == b"v"

    asyncio.run(main())
