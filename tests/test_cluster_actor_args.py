"""Actor calls whose argument was lost with a dead node (issue 10, item 3).

Node A (index 0) hosts the driver and is never killed; B and C offer ``w``,
which the argument-making tasks ask for, and each a resource of its own
(``nb``, ``nc``) to place an actor on the node that does not hold the object.
A test makes a large object on one ``w`` node (its only copy), SIGKILLs that
node, and calls an actor with the object at once: the owner learns of the
death only after the TTL, so the actor's worker first fails to copy it, then
gets it back from the owner (rebuilt by lineage) while the call keeps its
place in the actor's mailbox. Waits are for states, with deadlines.
"""

from __future__ import annotations

import numpy as np
import pytest

import actorcore as ac
from actorcore.errors import ObjectLostError, ObjectReconstructionFailedError, OwnerDiedError
from actorcore.testing import Cluster
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

TTL = 2.0
N = 1 << 20


@pytest.fixture
def cluster():
    with Cluster(num_nodes=0, ttl_s=TTL) as c:
        c.add_node(num_cpus=2, resources={"na": 1}, wait=False)
        c.add_node(num_cpus=2, resources={"w": 2, "nb": 1}, wait=False)
        c.add_node(num_cpus=2, resources={"w": 2, "nc": 1}, wait=False)
        c.wait_registered()
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            yield c
        finally:
            ac.shutdown()


def _here() -> str:
    return ac.get_runtime_context().get_node_id()


@ac.remote(max_retries=2, num_returns=2)
def make(n: int, k: int):
    return np.full(n, k, dtype=np.uint8), _here()


@ac.remote(max_retries=0, num_returns=2)
def make_once(n: int):
    return np.ones(n, dtype=np.uint8), _here()


@ac.remote(num_returns=2)
def put_here(n: int):
    return [ac.put(np.ones(n, dtype=np.uint8))], _here()


@ac.remote
class Reader:
    def __init__(self) -> None:
        self.log: list[int] = []

    def where(self) -> str:
        return _here()

    def total(self, i: int, a) -> int:
        self.log.append(i)
        return -1 if a is None else int(a.sum())

    def total_nested(self, i: int, box: list) -> int:
        self.log.append(i)
        return int(ac.get(box[0], timeout=60).sum())

    def order(self) -> list[int]:
        return self.log


@ac.remote
class AsyncReader:
    def __init__(self) -> None:
        self.log: list[int] = []

    async def total(self, i: int, a) -> int:
        self.log.append(i)
        return -1 if a is None else int(a.sum())

    async def total_nested(self, i: int, box: list) -> int:
        self.log.append(i)
        return int((await box[0]).sum())

    async def order(self) -> list[int]:
        return self.log


@ac.remote(num_cpus=0)
class Maker:
    """A third process that owns the object the driver passes on."""

    def make(self, k: int) -> list:
        a, where = make.options(resources={"w": 0.5}).remote(N, k)
        return [a, ac.get(where, timeout=60)]


def _node(c: Cluster, node_id: str):
    return next(n for n in c.nodes if n.node_id == node_id)


def _other_res(c: Cluster, doomed) -> str:
    return "nc" if doomed is c.nodes[1] else "nb"


def _made_on_w(c: Cluster, k: int):
    a, where = make.options(resources={"w": 0.5}).remote(N, k)
    return a, _node(c, ac.get(where, timeout=60))


def _made_on(node, fn, *args):
    """``fn``'s first result, made on ``node`` (a rebuild goes wherever there is room)."""
    there = NodeAffinitySchedulingStrategy(node.node_id, soft=True)
    value, where = fn.options(resources={"w": 0.5}, scheduling_strategy=there).remote(*args)
    assert ac.get(where, timeout=60) == node.node_id
    return value


def test_an_actor_call_gets_its_argument_rebuilt_and_keeps_its_order(cluster):
    a, doomed = _made_on_w(cluster, 3)
    reader = Reader.options(resources={_other_res(cluster, doomed): 0.1}).remote()
    assert ac.get(reader.where.remote(), timeout=60) != doomed.node_id
    cluster.stop_node(doomed, kill=True)
    # sent at once, before anyone declared the node dead: the first copy fails
    refs = [
        reader.total.remote(0, None),
        reader.total.remote(1, a),
        reader.total.remote(2, None),
        reader.total.remote(3, a),
    ]
    assert ac.get(refs, timeout=90) == [-1, 3 * N, -1, 3 * N]
    assert ac.get(reader.order.remote(), timeout=60) == [0, 1, 2, 3]


def test_an_async_actor_and_the_drivers_node_get_the_argument_back(cluster):
    a, doomed = _made_on_w(cluster, 5)
    b = _made_on(doomed, make, N, 6)
    reader = AsyncReader.options(resources={"na": 0.1}).remote()
    ac.get(reader.order.remote(), timeout=60)
    cluster.stop_node(doomed, kill=True)
    refs = [reader.total.remote(0, a), reader.total.remote(1, None)]
    assert ac.get(refs, timeout=90) == [5 * N, -1]
    assert ac.get(reader.order.remote(), timeout=60) == [0, 1]
    # a borrowed ref awaited inside: its owner has rebuilt it by now, or soon will
    assert ac.get(reader.total_nested.remote(2, [b]), timeout=90) == 6 * N


def test_an_argument_owned_by_a_third_process_or_nested_is_rebuilt(cluster):
    maker = Maker.options(resources={"na": 0.1}).remote()
    inner, where = ac.get(maker.make.remote(7), timeout=60)
    doomed = _node(cluster, where)
    b = _made_on(doomed, make, N, 9)  # (both on the node that dies)
    reader = Reader.options(resources={_other_res(cluster, doomed): 0.1}).remote()
    ac.get(reader.where.remote(), timeout=60)
    cluster.stop_node(doomed, kill=True)
    refs = [reader.total_nested.remote(0, [b]), reader.total.remote(1, inner)]
    assert ac.get(refs, timeout=90) == [9 * N, 7 * N]
    assert ac.get(reader.order.remote(), timeout=60) == [0, 1]


def test_an_argument_that_cannot_be_rebuilt_fails_the_call_with_its_cause(cluster):
    once, where = make_once.options(resources={"w": 0.5}).remote(N)
    doomed = _node(cluster, ac.get(where, timeout=60))
    box = _made_on(doomed, put_here, N)  # (its owner dies with the node)
    owned_by_dead = ac.get(box, timeout=60)[0]
    ac.wait([owned_by_dead], timeout=60, fetch_local=False)  # located, not copied
    reader = Reader.options(resources={_other_res(cluster, doomed): 0.1}).remote()
    ac.get(reader.where.remote(), timeout=60)
    cluster.stop_node(doomed, kill=True)
    r_once = reader.total.remote(0, once)
    r_dead = reader.total.remote(1, owned_by_dead)
    r_after = reader.total.remote(2, None)
    with pytest.raises(ObjectLostError, match="no lineage") as info:
        ac.get(r_once, timeout=90)
    assert not isinstance(info.value, ObjectReconstructionFailedError | OwnerDiedError)
    with pytest.raises(OwnerDiedError):
        ac.get(r_dead, timeout=90)
    assert ac.get(r_after, timeout=60) == -1  # the actor goes on


@ac.remote(max_restarts=1, max_task_retries=1)
class Restartable:
    def where(self) -> str:
        return _here()

    def total(self, a) -> tuple[int, str]:
        return int(a.sum()), _here()


def test_an_actor_restarted_elsewhere_gets_the_argument_lost_with_its_node(cluster):
    actor = Restartable.options(resources={"w": 0.1}).remote()
    doomed = _node(cluster, ac.get(actor.where.remote(), timeout=60))
    a = _made_on(doomed, make, N, 4)  # the actor and the only copy die together
    cluster.stop_node(doomed, kill=True)
    # sent to the dead host first: lost there, sent again (its one retry) to the next
    # incarnation, whose worker gets the argument back
    total, where = ac.get(actor.total.remote(a), timeout=90)
    assert total == 4 * N and where != doomed.node_id


@ac.remote(max_restarts=1)
class Holder:
    def __init__(self, a) -> None:
        self.total = int(a.sum())

    def where(self) -> tuple[int, str]:
        return self.total, _here()


def test_an_actor_restarted_elsewhere_gets_its_lost_constructor_argument(cluster):
    b = _made_on(cluster.nodes[1], make, N, 2)
    there = NodeAffinitySchedulingStrategy(cluster.nodes[1].node_id, soft=True)
    actor = Holder.options(resources={"w": 0.1}, scheduling_strategy=there).remote(b)
    assert ac.get(actor.where.remote(), timeout=60) == (2 * N, cluster.nodes[1].node_id)
    cluster.stop_node(cluster.nodes[1], kill=True)
    # restarted on C, where __init__ runs again with its argument rebuilt
    total, where = ac.get(actor.where.remote(), timeout=90)
    assert total == 2 * N and where != cluster.nodes[1].node_id
