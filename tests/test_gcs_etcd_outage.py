"""Adversity for the etcd back end: etcd stopped and restarted, etcd hung.

Each test runs its own etcd (the outage would disturb a shared one).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psutil
import pytest

from actorcore.gcs import (
    ControlStoreUnavailableError,
    EtcdControlStore,
    EtcdProcess,
    Watch,
    WatchEvent,
)

T = TypeVar("T")

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed"),
]

CALL_TIMEOUT = 1.0  # the store's per-call deadline in these tests


async def take(watch: Watch, n: int, deadline: float) -> list[WatchEvent]:
    it = aiter(watch)
    return [await asyncio.wait_for(anext(it), deadline) for _ in range(n)]


async def until_up(call: Callable[[], Awaitable[T]], deadline: float = 10.0) -> T:
    """Retry ``call`` while etcd is still coming back."""
    until = time.monotonic() + deadline
    while True:
        try:
            return await call()
        except ControlStoreUnavailableError:
            if time.monotonic() > until:
                raise
            await asyncio.sleep(0.05)  # polling a condition under a deadline


async def until_stopped(pid: int, deadline: float = 5.0) -> None:
    """Wait until ``pid`` is really stopped (state T), not merely signalled."""
    end = time.monotonic() + deadline
    while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
        if time.monotonic() > end:
            raise TimeoutError(f"pid {pid} did not stop")
        await asyncio.sleep(0.005)  # polling a state with a deadline


async def assert_unavailable_fast(call: Awaitable[object], bound: float) -> None:
    start = time.monotonic()
    with pytest.raises(ControlStoreUnavailableError):
        await call
    assert time.monotonic() - start < bound


@pytest.mark.timeout(40)
async def test_watch_resumes_after_etcd_restart_and_calls_fail_while_down():
    async with (
        EtcdProcess() as etcd,
        EtcdControlStore(etcd.address, call_timeout=CALL_TIMEOUT) as store,
        store.watch_prefix(b"/w/") as watch,
    ):
        r1 = await store.put(b"/w/1", b"a")
        assert [e.revision for e in await take(watch, 1, 5.0)] == [r1]
        later = asyncio.ensure_future(take(watch, 2, deadline=30.0))

        await etcd.astop()
        await assert_unavailable_fast(store.get(b"/w/1"), CALL_TIMEOUT + 1)
        await assert_unavailable_fast(store.put(b"/w/x", b"x"), CALL_TIMEOUT + 1)
        await assert_unavailable_fast(store.grant_lease(5), CALL_TIMEOUT + 1)
        await assert_unavailable_fast(store.refresh_lease(1), CALL_TIMEOUT + 1)
        await assert_unavailable_fast(
            EtcdControlStore.connect(etcd.address, call_timeout=CALL_TIMEOUT), CALL_TIMEOUT + 1
        )
        assert not later.done(), "a watch waits through an outage; it does not fail"

        await etcd.astart()
        # written before the watch has reconnected: it must resume from revision r1 + 1
        r2 = await until_up(lambda: store.put(b"/w/2", b"b"))
        r3 = await store.put(b"/w/3", b"c")
        events = await later
        assert [(e.key, e.revision) for e in events] == [(b"/w/2", r2), (b"/w/3", r3)]
        assert r2 == r1 + 1, "the data survived the restart"


@pytest.mark.timeout(30)
async def test_hung_etcd_fails_calls_after_the_timeout_then_recovers():
    async with EtcdProcess() as etcd:
        async with EtcdControlStore(etcd.address, call_timeout=CALL_TIMEOUT) as store:
            async with store.watch_prefix(b"/h/") as watch:
                assert etcd.pid is not None
                os.kill(etcd.pid, signal.SIGSTOP)
                try:
                    await until_stopped(etcd.pid)  # kill() returns before the process stops
                    await assert_unavailable_fast(store.put(b"/h/1", b"a"), CALL_TIMEOUT + 1)
                finally:
                    os.kill(etcd.pid, signal.SIGCONT)
                revision = await until_up(lambda: store.put(b"/h/2", b"b"))
                # the put that timed out may or may not have been applied: etcd was only paused
                seen: list[WatchEvent] = []
                while not seen or seen[-1].key != b"/h/2":
                    seen += await take(watch, 1, deadline=10.0)
        assert seen[-1].revision == revision
        assert [e.key for e in seen[:-1]] in ([], [b"/h/1"])
