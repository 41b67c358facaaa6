"""One behaviour suite for every ControlStore back end: embedded and a real etcd.

The etcd server starts once per module; each test works in its own namespace.
Waits are for events, under deadlines; the only sleeps let lease time pass.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from actorcore.gcs import (
    Compare,
    ControlStore,
    DeleteOp,
    EmbeddedControlStore,
    EtcdAddress,
    EtcdControlStore,
    EtcdNotFoundError,
    EtcdProcess,
    EventType,
    GetOp,
    KeyValue,
    LeaseExpiredError,
    PutOp,
    RevisionCompactedError,
    Watch,
    WatchEvent,
    open_control_store,
)

pytestmark = pytest.mark.timeout(30)

EVENT_DEADLINE = 5.0


@dataclass
class Backend:
    kind: str
    etcd: EtcdProcess | None
    ttl: float  # a short lease TTL the back end honours exactly

    @asynccontextmanager
    async def open(self) -> AsyncIterator[ControlStore]:
        if self.etcd is None:
            store: ControlStore = EmbeddedControlStore()
        else:
            store = EtcdControlStore(self.etcd.address_for(f"t{uuid.uuid4().hex[:12]}"))
        async with store:
            yield store


@pytest.fixture(scope="module", params=["embedded", pytest.param("etcd", marks=pytest.mark.etcd)])
def backend(request: pytest.FixtureRequest):
    if request.param == "embedded":
        yield Backend("embedded", None, ttl=0.3)
        return
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    proc = EtcdProcess()
    proc.start()
    try:
        yield Backend("etcd", proc, ttl=1.0)
    finally:
        proc.close()


async def next_event(watch: Watch, deadline: float = EVENT_DEADLINE) -> WatchEvent:
    return await asyncio.wait_for(anext(aiter(watch)), deadline)


async def take(watch: Watch, n: int, deadline: float = EVENT_DEADLINE) -> list[WatchEvent]:
    return [await next_event(watch, deadline) for _ in range(n)]


# --- keys --------------------------------------------------------------------


async def test_put_get_revisions_and_versions(backend: Backend):
    async with backend.open() as store:
        assert await store.get(b"/k") is None
        r1 = await store.put(b"/k", b"v1")
        kv = await store.get(b"/k")
        assert kv == KeyValue(b"/k", b"v1", r1, r1, 1, 0)
        r2 = await store.put(b"/k", b"v2")
        assert r2 > r1
        assert await store.get(b"/k") == KeyValue(b"/k", b"v2", r1, r2, 2, 0)
        assert await store.delete(b"/k")
        r3 = await store.put(b"/k", b"v3")
        assert await store.get(b"/k") == KeyValue(b"/k", b"v3", r3, r3, 1, 0)
        r4 = await store.put(b"/other", b"x")
        assert r4 == r3 + 1, "one store-wide revision"


async def test_get_prefix_is_sorted_and_reports_revision(backend: Backend):
    async with backend.open() as store:
        for name in [b"c", b"a", b"b", b"aa"]:
            last = await store.put(b"/p/" + name, name)
        await store.put(b"/q", b"outside")
        await store.put(b"/p", b"the prefix itself is not under /p/")
        kvs, revision = await store.get_prefix(b"/p/")
        assert [kv.key for kv in kvs] == [b"/p/a", b"/p/aa", b"/p/b", b"/p/c"]
        assert [kv.value for kv in kvs] == [b"a", b"aa", b"b", b"c"]
        assert revision >= last + 2
        assert await store.get_prefix(b"/none/") == ([], revision)


async def test_delete_and_delete_prefix(backend: Backend):
    async with backend.open() as store:
        assert not await store.delete(b"/missing")
        for key in [b"/d/1", b"/d/2", b"/d/3/x", b"/dd"]:
            await store.put(key, b"v")
        assert await store.delete(b"/d/1")
        assert not await store.delete(b"/d/1")
        assert await store.delete_prefix(b"/d/") == 2
        assert await store.delete_prefix(b"/d/") == 0
        kvs, _ = await store.get_prefix(b"/d")
        assert [kv.key for kv in kvs] == [b"/dd"]


# --- compare-and-swap and transactions ----------------------------------------


async def test_put_if_absent_is_exactly_once_under_contention(backend: Backend):
    async with backend.open() as store:
        claims = [store.put_if_absent(b"/name", b"c%d" % i) for i in range(20)]
        won = await asyncio.gather(*claims)
        assert won.count(True) == 1
        kv = await store.get(b"/name")
        assert kv is not None and kv.value == b"c%d" % won.index(True)
        assert kv.version == 1


async def test_compare_and_put(backend: Backend):
    async with backend.open() as store:
        r1 = await store.put(b"/cas", b"1")
        assert await store.compare_and_put(b"/cas", b"2", expect_mod_revision=r1)
        assert not await store.compare_and_put(b"/cas", b"3", expect_mod_revision=r1)
        kv = await store.get(b"/cas")
        assert kv is not None and kv.value == b"2"
        assert not await store.compare_and_put(b"/absent", b"x", expect_mod_revision=5)
        assert await store.compare_and_put(b"/absent", b"x", expect_mod_revision=0)


async def test_txn_runs_failure_branch_and_returns_responses(backend: Backend):
    async with backend.open() as store:
        r1 = await store.put(b"/t/a", b"1")
        result = await store.txn(
            [Compare(b"/t/a", "value", "==", b"nope")],
            [PutOp(b"/t/won", b"x")],
            [PutOp(b"/t/b", b"2"), GetOp(b"/t/", prefix=True), DeleteOp(b"/t/a")],
        )
        assert not result.succeeded
        r2, got, deleted = result.responses
        assert r2 == result.revision == r1 + 1
        assert isinstance(got, list)
        assert [(kv.key, kv.value) for kv in got] == [(b"/t/a", b"1"), (b"/t/b", b"2")]
        assert deleted == 1
        assert await store.get(b"/t/won") is None
        assert await store.get(b"/t/a") is None
        b = await store.get(b"/t/b")
        assert b is not None and b.mod_revision == r2, "all writes share one revision"


async def test_txn_compare_targets_and_ops(backend: Backend):
    async with backend.open() as store:
        lease = await store.grant_lease(30)
        r1 = await store.put(b"/c", b"m")
        r2 = await store.put(b"/c", b"n", lease=lease)
        holds = [
            Compare(b"/c", "value", "==", b"n"),
            Compare(b"/c", "value", "!=", b"m"),
            Compare(b"/c", "value", ">", b"m"),
            Compare(b"/c", "value", "<", b"o"),
            Compare(b"/c", "version", "==", 2),
            Compare(b"/c", "create", "==", r1),
            Compare(b"/c", "mod", ">", r1),
            Compare(b"/c", "mod", "==", r2),
            Compare(b"/c", "lease", "==", lease),
            Compare(b"/missing", "version", "==", 0),
            Compare(b"/missing", "lease", "==", 0),
        ]
        for c in holds:
            assert (await store.txn([c], [])).succeeded, c
        fails = [
            Compare(b"/c", "version", "<", 2),
            Compare(b"/c", "lease", "!=", lease),
            Compare(b"/missing", "value", "!=", b"anything"),  # etcd: missing value never compares
        ]
        for c in fails:
            assert not (await store.txn([c], [])).succeeded, c
        await store.revoke_lease(lease)


async def test_txn_rejects_what_etcd_rejects(backend: Backend):
    async with backend.open() as store:
        too_many = [PutOp(b"/many/%d" % i, b"") for i in range(129)]
        with pytest.raises(ValueError, match="128"):
            await store.txn([], too_many)
        with pytest.raises(ValueError, match="duplicate"):
            await store.txn([], [PutOp(b"/x", b"1"), PutOp(b"/x", b"2")])
        with pytest.raises(ValueError, match="duplicate"):
            await store.txn([], [DeleteOp(b"/x/", prefix=True), PutOp(b"/x/1", b"2")])
        assert (await store.txn([], [PutOp(b"/many/%d" % i, b"") for i in range(128)])).succeeded


# --- leases ------------------------------------------------------------------


async def test_lease_expiry_deletes_keys_and_notifies_watchers(backend: Backend):
    async with backend.open() as store:
        lease = await store.grant_lease(backend.ttl)
        await store.put(b"/node/a", b"A", lease=lease)
        await store.put(b"/node/b", b"B", lease=lease)
        await store.put(b"/node/c", b"C")
        async with store.watch_prefix(b"/node/") as watch:
            events = await take(watch, 2, deadline=backend.ttl + EVENT_DEADLINE)
        assert [e.type for e in events] == [EventType.DELETE, EventType.DELETE]
        assert [e.key for e in events] == [b"/node/a", b"/node/b"]
        assert [e.kv for e in events] == [None, None]
        assert [e.prev_kv.value for e in events if e.prev_kv] == [b"A", b"B"]
        assert events[0].revision == events[1].revision, "one revision per expiry"
        kvs, _ = await store.get_prefix(b"/node/")
        assert [kv.key for kv in kvs] == [b"/node/c"]
        assert await store.refresh_lease(lease) <= 0
        with pytest.raises(LeaseExpiredError):
            await store.put(b"/node/a", b"again", lease=lease)


async def test_revoke_deletes_keys_now(backend: Backend):
    async with backend.open() as store:
        lease = await store.grant_lease(60)
        await store.put(b"/r/a", b"A", lease=lease)
        async with store.watch_prefix(b"/r/") as watch:
            await store.revoke_lease(lease)
            event = await next_event(watch)
        assert event.type is EventType.DELETE and event.key == b"/r/a"
        assert event.prev_kv is not None and event.prev_kv.lease == lease
        assert await store.get(b"/r/a") is None
        with pytest.raises(LeaseExpiredError):
            await store.put(b"/r/a", b"A", lease=lease)
        await store.revoke_lease(lease)  # already gone: not an error


async def test_refresh_keeps_lease_alive(backend: Backend):
    async with backend.open() as store:
        # a TTL with room for a loop stalled by a loaded machine between refreshes,
        # outlived 2.5 times over: without the refreshes the lease would expire
        ttl = max(backend.ttl, 1.2)
        lease = await store.grant_lease(ttl)
        await store.put(b"/alive", b"1", lease=lease)
        until = time.monotonic() + 2.5 * ttl
        while time.monotonic() < until:
            assert await store.refresh_lease(lease) > 0
            await asyncio.sleep(ttl / 4)  # letting lease time pass is the point
        kv = await store.get(b"/alive")
        assert kv is not None and kv.lease == lease
        await store.revoke_lease(lease)


# --- watches -----------------------------------------------------------------


async def test_watch_sees_puts_and_deletes_under_its_prefix_only(backend: Backend):
    async with backend.open() as store:
        async with store.watch_prefix(b"/w/") as watch:
            r1 = await store.put(b"/w/a", b"1")
            await store.put(b"/elsewhere", b"x")
            r2 = await store.put(b"/w/a", b"2")
            assert await store.delete(b"/w/a")
            rz = await store.put(b"/w/z", b"z")
            put1, put2, deleted, put_z = await take(watch, 4)
        assert (put1.type, put1.revision, put1.prev_kv) == (EventType.PUT, r1, None)
        assert put1.kv is not None and put1.kv.value == b"1"
        assert put2.revision == r2 and put2.prev_kv is not None and put2.prev_kv.value == b"1"
        assert (deleted.type, deleted.revision, deleted.kv) == (EventType.DELETE, r2 + 1, None)
        assert deleted.prev_kv is not None and deleted.prev_kv.value == b"2"
        assert (put_z.key, put_z.revision) == (b"/w/z", rz)


async def test_watch_from_past_revision_replays_then_follows(backend: Backend):
    async with backend.open() as store:
        first = await store.put(b"/h/1", b"a")
        await store.put(b"/x", b"not mine")
        await store.put(b"/h/2", b"b")
        await store.delete(b"/h/1")
        async with store.watch_prefix(b"/h/", start_revision=first) as watch:
            replayed = await take(watch, 3)
            live = await store.put(b"/h/3", b"c")
            followed = await next_event(watch)
        assert [(e.type, e.key) for e in replayed] == [
            (EventType.PUT, b"/h/1"),
            (EventType.PUT, b"/h/2"),
            (EventType.DELETE, b"/h/1"),
        ]
        assert replayed[0].revision == first
        assert followed.revision == live and followed.key == b"/h/3"


async def test_watch_from_compacted_revision_raises(backend: Backend):
    async with backend.open() as store:
        first = await store.put(b"/cmp/1", b"a")
        last = await store.put(b"/cmp/2", b"b")
        assert isinstance(store, EmbeddedControlStore | EtcdControlStore)
        await store.compact(last)
        async with store.watch_prefix(b"/cmp/", start_revision=first) as watch:
            with pytest.raises(RevisionCompactedError):
                await next_event(watch)
        async with store.watch_prefix(b"/cmp/", start_revision=last) as watch:
            assert (await next_event(watch)).revision == last


async def test_watch_aclose_ends_pending_iteration(backend: Backend):
    async with backend.open() as store:
        watch = store.watch_prefix(b"/quiet/")
        pending = asyncio.ensure_future(anext(aiter(watch)))
        for _ in range(5):
            await asyncio.sleep(0)  # let the reader block: nothing is ever written
        assert not pending.done()
        await watch.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, EVENT_DEADLINE)
        await watch.aclose()  # idempotent

        consumed: list[WatchEvent] = []

        async def consume(w: Watch) -> None:
            async for event in w:
                consumed.append(event)

        watch = store.watch_prefix(b"/quiet/")
        task = asyncio.ensure_future(consume(watch))
        await asyncio.sleep(0)
        await watch.aclose()
        await asyncio.wait_for(task, EVENT_DEADLINE)
        assert consumed == []


async def test_store_aclose_ends_its_watches(backend: Backend):
    async with backend.open() as store:
        watch = store.watch_prefix(b"/s/")
        pending = asyncio.ensure_future(anext(aiter(watch)))
        await asyncio.sleep(0)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, EVENT_DEADLINE)


# --- embedded only -----------------------------------------------------------


async def test_embedded_slow_watch_catches_up_from_history():
    async with EmbeddedControlStore(history_size=100, max_pending=5) as store:
        async with store.watch_prefix(b"/slow/") as watch:
            revisions = [await store.put(b"/slow/%d" % i, b"") for i in range(20)]
            seen = [e.revision for e in await take(watch, 20)]
        assert seen == revisions

        async with store.watch_prefix(b"/slow/") as watch:
            for i in range(150):  # more than the history holds
                await store.put(b"/slow/%d" % i, b"")
            assert (await next_event(watch)).revision == revisions[-1] + 1
            with pytest.raises(RevisionCompactedError):
                await take(watch, 150)


async def test_watch_closes_promptly_with_a_full_backlog(backend: Backend):
    async with backend.open() as store:
        async with store.watch_prefix(b"/b/") as watch:
            await store.txn([], [PutOp(b"/b/%d" % i, b"") for i in range(128)])
            for _ in range(10):
                await store.txn([], [PutOp(b"/b/%d" % i, b"x") for i in range(128)])
            first = await next_event(watch)
            start = time.monotonic()
        assert first.key == b"/b/0"
        assert time.monotonic() - start < 5.0  # no wait on the backlog (generous: loaded CI)


# --- etcd only ---------------------------------------------------------------


@pytest.mark.etcd
@pytest.mark.parametrize("backend", ["etcd"], indirect=True)
async def test_etcd_namespaces_are_isolated(backend: Backend):
    assert backend.etcd is not None
    async with (
        EtcdControlStore(backend.etcd.address_for("ns-a")) as a,
        EtcdControlStore(backend.etcd.address_for("ns-ab")) as ab,
    ):
        await a.delete_prefix(b"")
        await ab.delete_prefix(b"")
        async with a.watch_prefix(b"") as watch:
            await ab.put(b"/k", b"ab")
            revision = await a.put(b"/k", b"a")
            event = await next_event(watch)
        assert (event.key, event.revision) == (b"/k", revision), "keys come back unprefixed"
        assert [kv.value for kv in (await a.get_prefix(b""))[0]] == [b"a"]
        assert await ab.delete_prefix(b"") == 1
        kv = await a.get(b"/k")
        assert kv is not None and kv.value == b"a"


def test_addresses_and_back_end_choice():
    assert EtcdAddress.parse("etcd://h:1234/prod") == EtcdAddress("h", 1234, "prod")
    assert EtcdAddress.parse("etcd://h") == EtcdAddress("h", 2379, "default")
    assert str(EtcdAddress.parse("etcd://[::1]:5/x")) == "etcd://[::1]:5/x"
    for bad in ["http://h:1/x", "etcd:///x", "etcd://h:1/a/b"]:
        with pytest.raises(ValueError):
            EtcdAddress.parse(bad)
    assert isinstance(open_control_store(None), EmbeddedControlStore)
    assert isinstance(open_control_store("etcd://127.0.0.1:1/x"), EtcdControlStore)
    with pytest.raises(ValueError):
        open_control_store("redis://h")


def test_etcd_process_explains_a_missing_binary(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EtcdNotFoundError, match="apt-get install etcd-server"):
        EtcdProcess()
