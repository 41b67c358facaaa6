"""Refcounting across nodes, precisely (issue 8, item 5): when the last ref dies,
every copy on every node is freed, and no free goes to a node without a copy.

Three nodes: A (the driver's), B (resource ``onb``), C (resource ``onc``).
Each node counts the frees its peer daemons sent it.
"""

from __future__ import annotations

import numpy as np
import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import Cluster, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster():
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        c.add_node(num_cpus=1)
        c.add_node(num_cpus=1, resources={"onb": 4})
        c.add_node(num_cpus=1, resources={"onc": 4})
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            yield c
        finally:
            ac.shutdown()


def _objects_on(node) -> dict[str, dict]:
    return {o["object_id"]: o for o in node.ask(P.ListStateMsg(next_rid(), "objects"))}


def _frees_received(node) -> int:
    return int(node.ask(P.ClusterInfoMsg(next_rid(), "frees_received")))


@ac.remote
def total(a: np.ndarray) -> int:
    return int(a[::4096].sum())


@ac.remote
def make(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.uint8)


@ac.remote
class Maker:
    def make(self, n: int) -> np.ndarray:
        return np.ones(n, dtype=np.uint8)


def _gone_everywhere(nodes, oid: str) -> None:
    for node in nodes:
        wait_for(lambda n=node: oid not in _objects_on(n), 30, what=f"{oid} freed on a node")


def test_a_put_object_read_on_one_other_node(cluster):
    a, b, c = cluster.nodes
    before = (_frees_received(b), _frees_received(c))
    arr = np.ones(4 * MiB, dtype=np.uint8)
    ref = ac.put(arr)
    oid = ref.id.hex()
    assert ac.get(total.options(resources={"onb": 1}).remote(ref), timeout=60) == arr[::4096].sum()
    wait_for(lambda: oid in _objects_on(b), 30, what="the copy on B")
    assert oid not in _objects_on(c)
    del ref
    _gone_everywhere((a, b), oid)
    wait_for(lambda: _frees_received(b) > before[0], 30, what="B told to free its copy")
    assert _frees_received(c) == before[1]  # C never had a copy: never told


def test_an_actor_result_made_on_c_and_copied_to_a_and_b(cluster):
    a, b, c = cluster.nodes
    maker = Maker.options(resources={"onc": 1}).remote()
    ref = maker.make.remote(4 * MiB)
    oid = ref.id.hex()
    got = ac.get(ref, timeout=60)  # a copy on A (the actor's result stays on C)
    assert got.nbytes == 4 * MiB
    del got
    assert ac.get(total.options(resources={"onb": 1}).remote(ref), timeout=60) == 1024
    for node in (a, b, c):
        wait_for(lambda n=node: oid in _objects_on(n), 30, what="a copy on each node")
    owners = {_objects_on(n)[oid]["owner"] for n in (a, b, c)}
    assert len(owners) == 1 and not owners.pop().startswith("7472616e73666572")  # "transfer"
    before = (_frees_received(b), _frees_received(c))
    del ref
    _gone_everywhere((a, b, c), oid)
    assert _frees_received(b) > before[0] and _frees_received(c) > before[1]
    ac.kill(maker)


def test_a_task_result_on_b_read_on_a_only(cluster):
    a, b, c = cluster.nodes
    ref = make.options(resources={"onb": 1}).remote(3 * MiB)
    oid = ref.id.hex()
    assert ac.get(ref, timeout=60).nbytes == 3 * MiB
    before_c = _frees_received(c)
    del ref
    _gone_everywhere((a, b), oid)
    assert _frees_received(c) == before_c


_DYING_DRIVER = """
import os, sys
import numpy as np
import actorcore as ac

ac.init(address=sys.argv[1], attach_node=sys.argv[2])

@ac.remote(resources={"onb": 1})
def make(n):
    return np.ones(n, dtype=np.uint8)

ref = make.remote(2 << 20)
assert ac.get(ref, timeout=60).nbytes == 2 << 20  # the primary on B, a copy on A
print(ref.id.hex(), flush=True)
os._exit(0)  # dies without freeing anything
"""


def test_the_copies_of_a_dead_owners_objects_go_on_every_node(cluster):
    import subprocess
    import sys

    a, b, _c = cluster.nodes
    out = subprocess.run(
        [sys.executable, "-c", _DYING_DRIVER, cluster.address, a.node_id],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    oid = out.stdout.split()[-1]
    _gone_everywhere((a, b), oid)  # (its node frees A's copy; OWNER_GONE the one on B)


def test_a_big_argument_copied_to_the_tasks_node_is_freed_there(cluster):
    b = cluster.nodes[1]
    before_b = set(_objects_on(b))
    arr = np.ones(3 * MiB, dtype=np.uint8)  # not a ref: the arguments travel as one store blob
    assert ac.get(total.options(resources={"onb": 1}).remote(arr), timeout=60) == 768
    wait_for(lambda: set(_objects_on(b)) <= before_b, 30, what="the argument's copy on B freed")
