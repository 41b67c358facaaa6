"""A node's lease survives its loop stalling (issue 10 item 1: a loaded machine).

The daemon's loop is blocked outright for longer than the TTL; the lease,
refreshed by :class:`~actorcore._lease_keeper.LeaseKeeper` from its own
thread, stays alive. Real etcd.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from actorcore.gcs import EtcdControlStore, EtcdOptions, EtcdProcess

from actorcore._lease_keeper import LeaseKeeper

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]

TTL = 2.0


@pytest.fixture(scope="module")
def etcd():
    with EtcdProcess(namespace="keeper", fast_leases=False) as server:
        yield server


async def _stalled_loop_keeps_its_lease(address: str) -> None:
    async with EtcdControlStore(address) as store:
        lease = await store.grant_lease(TTL)
        await store.put(b"/alive", b"1", lease=lease)
        lost: list[int] = []
        keeper = LeaseKeeper(
            address, EtcdOptions(), TTL, lambda: lease, lost.append, asyncio.get_running_loop()
        )
        keeper.start()
        try:
            time.sleep(2.5 * TTL)  # noqa: ASYNC251 - the point: this loop stalls past the TTL
            kv = await store.get(b"/alive")
            assert kv is not None and kv.lease == lease, "the lease expired while the loop stalled"
            assert keeper.refreshes >= 4 and not lost
        finally:
            await asyncio.to_thread(keeper.stop)
        await store.revoke_lease(lease)


async def _a_lost_lease_is_reported(address: str) -> None:
    async with EtcdControlStore(address) as store:
        lease = await store.grant_lease(TTL)
        await store.revoke_lease(lease)  # gone behind the node's back
        reported = asyncio.get_running_loop().create_future()
        keeper = LeaseKeeper(
            address,
            EtcdOptions(),
            TTL,
            lambda: lease,
            lambda gone: reported.done() or reported.set_result(gone),
            asyncio.get_running_loop(),
        )
        keeper.start()
        try:
            assert await asyncio.wait_for(reported, 10 * TTL) == lease
        finally:
            await asyncio.to_thread(keeper.stop)


def test_a_stalled_loop_keeps_its_lease(etcd):
    asyncio.run(_stalled_loop_keeps_its_lease(etcd.address_for("keeper")))


def test_a_lost_lease_is_reported_to_the_loop(etcd):
    asyncio.run(_a_lost_lease_is_reported(etcd.address_for("keeper")))
