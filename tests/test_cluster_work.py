"""Work and objects cross nodes (issue 8 items 4 and 5): one cluster for the module.

Node A (index 0) has 2 CPUs; node B (index 1) has 2 CPUs and the resource
``onb`` no other node has. The driver attaches to A.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from cluster_helpers import run_driver

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import Cluster, wait_for
from actorcore.util import ActorPool
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster():
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        c.add_node(num_cpus=2)
        c.add_node(num_cpus=2, resources={"onb": 4})
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            yield c
        finally:
            ac.shutdown()


def _a(c: Cluster) -> str:
    return c.nodes[0].node_id


def _b(c: Cluster) -> str:
    return c.nodes[1].node_id


def _objects_on(node) -> set[str]:
    return {o["object_id"] for o in node.ask(P.ListStateMsg(next_rid(), "objects"))}


@ac.remote
def where() -> str:
    return ac.get_runtime_context().get_node_id()


@ac.remote
def nbytes_and_sum(a: np.ndarray) -> tuple[int, int, str]:
    return a.nbytes, int(a[::4096].sum()), ac.get_runtime_context().get_node_id()


@ac.remote
def make(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8)


@ac.remote
class Where:
    def node(self) -> str:
        return ac.get_runtime_context().get_node_id()

    async def anode(self) -> str:
        await asyncio.sleep(0)
        return ac.get_runtime_context().get_node_id()

    def twice(self, x: int) -> int:
        return 2 * x


def test_a_task_needing_a_resource_only_b_has_runs_on_b(cluster):
    assert ac.get(where.remote(), timeout=60) == _a(cluster)
    assert ac.get(where.options(resources={"onb": 1}).remote(), timeout=60) == _b(cluster)
    many = [where.options(resources={"onb": 1}).remote() for _ in range(20)]
    assert set(ac.get(many, timeout=60)) == {_b(cluster)}


def test_hard_affinity_to_b(cluster):
    strategy = NodeAffinitySchedulingStrategy(_b(cluster), soft=False)
    assert ac.get(where.options(scheduling_strategy=strategy).remote(), timeout=60) == _b(cluster)
    here = NodeAffinitySchedulingStrategy(_a(cluster), soft=False)
    assert ac.get(where.options(scheduling_strategy=here).remote(), timeout=60) == _a(cluster)


def test_actor_created_on_b_called_from_a(cluster):
    h = Where.options(resources={"onb": 1}).remote()
    assert ac.get(h.node.remote(), timeout=60) == _b(cluster)
    assert ac.get([h.twice.remote(i) for i in range(100)], timeout=60) == [
        2 * i for i in range(100)
    ]

    async def calls() -> list[str]:
        return [await h.anode.remote() for _ in range(3)] + [await h.node.remote()]

    assert set(asyncio.run(calls())) == {_b(cluster)}
    ac.kill(h)


@ac.remote
def nested() -> tuple[str, str]:
    inner = where.options(resources={"onb": 1}).remote()
    return ac.get_runtime_context().get_node_id(), ac.get(inner)


def test_nested_tasks_cross_nodes(cluster):
    outer, inner = ac.get(nested.remote(), timeout=60)
    assert (outer, inner) == (_a(cluster), _b(cluster))
    strategy = NodeAffinitySchedulingStrategy(_b(cluster), soft=False)
    outer, inner = ac.get(nested.options(scheduling_strategy=strategy).remote(), timeout=60)
    assert (outer, inner) == (_b(cluster), _b(cluster))


def test_big_put_on_a_read_by_a_task_on_b(cluster):
    arr = np.random.default_rng(1).integers(0, 255, 50 * MiB, dtype=np.uint8)
    ref = ac.put(arr)
    n, s, node = ac.get(nbytes_and_sum.options(resources={"onb": 1}).remote(ref), timeout=60)
    assert (n, s, node) == (arr.nbytes, int(arr[::4096].sum()), _b(cluster))
    # a big argument passed by value travels the same way
    n, s, node = ac.get(nbytes_and_sum.options(resources={"onb": 1}).remote(arr), timeout=60)
    assert (n, s, node) == (arr.nbytes, int(arr[::4096].sum()), _b(cluster))


def test_big_result_on_b_read_on_a(cluster):
    ref = make.options(resources={"onb": 1}).remote(50 * MiB)
    got = ac.get(ref, timeout=60)
    assert got.nbytes == 50 * MiB
    assert np.array_equal(got, np.arange(50 * MiB, dtype=np.uint8))
    h = Where.options(resources={"onb": 1}).remote()
    ac.kill(h)


def test_wait_fetch_local(cluster):
    a = cluster.nodes[0]
    ref = make.options(resources={"onb": 1}).remote(2 * MiB)
    ready, _ = ac.wait([ref], timeout=60, fetch_local=False)
    assert ready == [ref]
    assert ref.id.hex() not in _objects_on(a)
    ready, _ = ac.wait([ref], timeout=60)
    assert ready == [ref]
    assert ref.id.hex() in _objects_on(a)


def test_freeing_frees_the_copies_on_every_node(cluster):
    b = cluster.nodes[1]
    arr = np.ones(8 * MiB, dtype=np.uint8)
    ref = ac.put(arr)
    oid = ref.id.hex()
    assert ac.get(nbytes_and_sum.options(resources={"onb": 1}).remote(ref), timeout=60)[0] == (
        arr.nbytes
    )
    wait_for(lambda: oid in _objects_on(b), 30, what="the copy on B")
    del ref
    wait_for(lambda: oid not in _objects_on(b), 30, what="the copy on B freed")
    wait_for(lambda: oid not in _objects_on(cluster.nodes[0]), 30, what="the primary freed")


def test_actor_pool_over_two_nodes(cluster):
    actors = [Where.remote(), Where.options(resources={"onb": 1}).remote()]
    pool = ActorPool(actors)
    nodes = list(pool.map(lambda a, v: a.node.remote(), range(8)))
    assert set(nodes) == {_a(cluster), _b(cluster)}
    assert list(pool.map(lambda a, v: a.twice.remote(v), range(10))) == [2 * i for i in range(10)]
    for h in actors:
        ac.kill(h)


def test_kill_an_actor_on_b(cluster):
    h = Where.options(resources={"onb": 1}).remote()
    assert ac.get(h.node.remote(), timeout=60) == _b(cluster)
    ac.kill(h)
    with pytest.raises(ac.errors.ActorDiedError):
        ac.get(h.node.remote(), timeout=60)


@ac.remote
def sleepy(path: str) -> int:
    time.sleep(60)
    return 1


def test_cancel_a_task_on_b(cluster):
    ref = sleepy.options(resources={"onb": 1}).remote("x")
    wait_for(lambda: ac.available_resources().get("onb", 4) < 4, 30, what="the task started on B")
    ac.cancel(ref, force=True)
    with pytest.raises((ac.errors.TaskCancelledError, ac.errors.WorkerCrashedError)):
        ac.get(ref, timeout=60)


@ac.remote
def total_of(refs: list) -> tuple[int, str]:
    return sum(int(ac.get(r).nbytes) for r in refs), ac.get_runtime_context().get_node_id()


def test_nested_refs_are_pulled_where_they_are_read(cluster):
    refs = [ac.put(np.zeros(MiB, dtype=np.uint8)) for _ in range(3)]
    assert ac.get(total_of.options(resources={"onb": 1}).remote(refs), timeout=60) == (
        3 * MiB,
        _b(cluster),
    )
    # a result made on B, passed on to another task on B and to one on A
    made = make.options(resources={"onb": 1}).remote(3 * MiB)
    for opts in ({"resources": {"onb": 1}}, {}):
        assert ac.get(nbytes_and_sum.options(**opts).remote(made), timeout=60)[0] == 3 * MiB


def test_named_actor_on_b_found_from_a(cluster):
    h = Where.options(name="on-b", resources={"onb": 1}).remote()
    assert ac.get(ac.get_actor("on-b").node.remote(), timeout=60) == _b(cluster)
    ac.kill(h)


def test_an_actor_on_b_ends_with_its_owner_on_a(cluster):
    code = f"""
        import actorcore as ac
        ac.init(address={cluster.address!r})

        @ac.remote
        class Held:
            def ping(self):
                return 1

        h = Held.options(resources={{"onb": 1}}).remote()
        assert ac.get(h.ping.remote(), timeout=60) == 1
        print(h.id.hex(), flush=True)
        import os
        os._exit(0)  # no goodbye: the node learns it from the closed connections
    """
    out = run_driver(code, _a(cluster), timeout=90)
    assert out.returncode == 0, out.stderr
    actor_id = out.stdout.strip().splitlines()[-1]
    b = cluster.nodes[1]

    def state() -> str | None:
        rows = b.ask(P.ListStateMsg(next_rid(), "actors"))
        return next((r["state"] for r in rows if r["actor_id"] == actor_id), None)

    wait_for(lambda: state() == "DEAD", 30, what="the actor on B ended with its owner")


@ac.remote
def produce(q, n: int) -> str:
    for i in range(n):
        q.put((i, np.full(256 * 1024, i, dtype=np.uint8)))
    return ac.get_runtime_context().get_node_id()


def test_queue_fed_from_b_and_as_completed(cluster):
    from actorcore.util import Queue

    q = Queue()
    ref = produce.options(resources={"onb": 1}).remote(q, 5)
    items = [q.get(timeout=60) for _ in range(5)]
    assert [i for i, _ in items] == list(range(5))
    assert all(int(a[0]) == i and a.nbytes == 256 * 1024 for i, a in items)
    assert ac.get(ref, timeout=60) == _b(cluster)

    refs = [make.options(resources={"onb": 1}).remote(MiB + i) for i in range(4)]

    async def drain() -> list[int]:
        return [len(await r) async for r in ac.as_completed(refs)]

    assert sorted(asyncio.run(drain())) == [MiB + i for i in range(4)]
    fresh = make.options(resources={"onb": 1}).remote(2 * MiB)
    assert len(fresh.future().result(timeout=60)) == 2 * MiB


@ac.remote(resources={"onb": 1})
def stream_on_b(n: int, big: int):
    node = ac.get_runtime_context().get_node_id()
    for i in range(n):
        yield (i, node, np.full(big, i % 251, dtype=np.uint8) if big else None)


@ac.remote(resources={"onb": 1})
class StreamerOnB:
    async def items(self, n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield i * i


def test_streaming_generators_cross_nodes(cluster):
    gen = stream_on_b.options(num_returns="streaming").remote(5, 0)
    got = [ac.get(ref, timeout=60) for ref in gen]
    assert [g[0] for g in got] == list(range(5))
    assert {g[1] for g in got} == {_b(cluster)}
    # items large enough for the store are pulled from B to the driver's node
    gen = stream_on_b.options(num_returns="streaming").remote(3, 4 * MiB)
    for i, ref in enumerate(gen):
        idx, node, arr = ac.get(ref, timeout=60)
        assert idx == i and node == _b(cluster)
        assert arr.nbytes == 4 * MiB and int(arr[0]) == i and int(arr[-1]) == i
    s = StreamerOnB.remote()
    vals = [ac.get(r, timeout=60) for r in s.items.options(num_returns="streaming").remote(6)]
    assert vals == [i * i for i in range(6)]
    ac.kill(s)
