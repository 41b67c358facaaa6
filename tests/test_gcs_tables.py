"""The typed tables (actors, names, nodes) on the embedded store, plus one etcd case."""

from __future__ import annotations

import asyncio
import shutil

import msgpack
import pytest

from actorcore.gcs import (
    ActorRecord,
    ActorTable,
    ControlStore,
    EmbeddedControlStore,
    EtcdControlStore,
    EtcdProcess,
    EventType,
    LeaseExpiredError,
    NameRegistry,
    NodeRegistry,
)

pytestmark = pytest.mark.timeout(30)


def record(n: int, **changes: object) -> ActorRecord:
    fields: dict[str, object] = dict(
        actor_id=bytes([n]) * 16,
        name=f"actor-{n}",
        namespace="web",
        state="ALIVE",
        node_id=b"\x01" * 16,
        address=["127.0.0.1", 7000 + n],
        epoch=0,
        owner=None,
        detached=False,
        class_name="Counter",
    )
    fields.update(changes)
    return ActorRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def etcd():
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    with EtcdProcess(namespace="tables") as proc:
        yield proc


def test_actor_record_round_trips_and_ignores_unknown_fields():
    rec = record(3, owner=["127.0.0.1", 9000, b"worker"], death_cause=None, epoch=2)
    assert ActorRecord.from_bytes(rec.to_bytes()) == rec
    raw = msgpack.unpackb(rec.to_bytes())
    raw["added_in_a_later_version"] = 1
    assert ActorRecord.from_bytes(msgpack.packb(raw, use_bin_type=True)) == rec


async def check_actor_table(store: ControlStore) -> None:
    table = ActorTable(store)
    assert await table.get(b"\x07" * 16) is None
    await table.put(record(2))
    await table.put(record(1))
    await table.put(record(1, state="RESTARTING", epoch=1))
    assert await table.get(record(1).actor_id) == record(1, state="RESTARTING", epoch=1)
    assert [r.actor_id for r in await table.list()] == [record(1).actor_id, record(2).actor_id]
    assert await table.delete(record(2).actor_id)
    assert not await table.delete(record(2).actor_id)
    assert len(await table.list()) == 1


async def check_name_claims(store: ControlStore) -> None:
    names = NameRegistry(store)
    claimants = [bytes([i]) * 16 for i in range(20)]
    won = await asyncio.gather(*(names.claim("web", "hits", a) for a in claimants))
    assert won.count(True) == 1
    owner = claimants[won.index(True)]
    assert await names.lookup("web", "hits") == owner
    assert await names.claim("web", "hits", owner), "claiming again what one holds is a no-op"
    other = claimants[(won.index(True) + 1) % 20]
    assert not await names.release("web", "hits", other)
    assert await names.lookup("web", "hits") == owner
    assert await names.release("web", "hits", owner)
    assert await names.lookup("web", "hits") is None
    assert await names.claim("web", "hits", other)


async def test_actor_table_embedded():
    async with EmbeddedControlStore() as store:
        await check_actor_table(store)


async def test_name_registry_claims_exactly_once_embedded():
    async with EmbeddedControlStore() as store:
        await check_name_claims(store)


async def test_name_registry_namespaces_do_not_collide():
    async with EmbeddedControlStore() as store:
        names = NameRegistry(store)
        assert await names.claim("a/b", "c", b"first")
        assert await names.claim("a", "b/c", b"second")
        assert await names.claim("b", "c", b"third")
        assert await names.lookup("a/b", "c") == b"first"
        assert await names.lookup("a", "b/c") == b"second"
        assert await names.names("a") == {"b/c": b"second"}
        assert await names.names("a/b") == {"c": b"first"}


async def test_node_registry_follows_the_lease():
    async with EmbeddedControlStore() as store:
        nodes = NodeRegistry(store)
        lease = await store.grant_lease(60)
        node = b"\xab" * 8
        async with store.watch_prefix(nodes.prefix) as watch:
            await nodes.register(node, {"address": ["127.0.0.1", 7000], "cpus": 4}, lease=lease)
            assert await nodes.list() == {node: {"address": ["127.0.0.1", 7000], "cpus": 4}}
            assert await nodes.get(node) == {"address": ["127.0.0.1", 7000], "cpus": 4}
            await store.revoke_lease(lease)
            it = aiter(watch)
            put = await asyncio.wait_for(anext(it), 5)
            gone = await asyncio.wait_for(anext(it), 5)
        assert put.type is EventType.PUT and nodes.node_id(put.key) == node
        assert gone.type is EventType.DELETE and nodes.node_id(gone.key) == node
        assert await nodes.list() == {}
        with pytest.raises(LeaseExpiredError):
            await nodes.register(node, {}, lease=lease)


@pytest.mark.etcd
async def test_tables_on_etcd(etcd: EtcdProcess):
    async with EtcdControlStore(etcd.address) as store:
        await store.delete_prefix(b"")
        await check_actor_table(store)
        await check_name_claims(store)
        await store.delete_prefix(b"")
