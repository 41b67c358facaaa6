"""Two-level scheduling across real nodes (issue 9): local first, spill to the elected
placer, locality, SPREAD, node affinity, infeasible work, placer failover.

One cluster for most of the module: nodes A, B, C with 1 CPU each; the driver
attaches to A (the first node started, so A holds the placer).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import Cluster, wait_for
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster():
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        for _ in range(3):
            c.add_node(num_cpus=1)
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            yield c
        finally:
            ac.shutdown()


def _ids(c: Cluster) -> list[str]:
    return [n.node_id for n in c.nodes]


def _placer(node) -> dict:
    return node.ask(P.ClusterInfoMsg(next_rid(), "placer"))


def _wait_idle(c: Cluster, node_id: str) -> None:
    """Until the placer's view shows ``node_id``'s CPU free (a lease lingers after use)."""
    holder = _placer(c.nodes[0])["node_id"]
    placer = next(n for n in c.nodes if n.node_id == holder)

    def idle() -> bool:
        return _placer(placer)["view"][node_id]["free"].get("CPU") == 1.0

    wait_for(idle, 30, what=f"node {node_id} idle in the placer's view")


@ac.remote
def where(t: float = 0.0) -> str:
    time.sleep(t)
    return ac.get_runtime_context().get_node_id()


@ac.remote
def make(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.uint8)


@ac.remote
def where_arg(a: np.ndarray) -> tuple[str, int]:
    return ac.get_runtime_context().get_node_id(), a.nbytes


@ac.remote
class Where:
    def node(self) -> str:
        return ac.get_runtime_context().get_node_id()


def test_one_placer_every_node_agrees(cluster):
    a = cluster.nodes[0]
    wait_for(lambda: _placer(a)["node_id"] is not None, 30, what="a placer elected")
    holder = _placer(a)["node_id"]
    assert holder in _ids(cluster)
    for n in cluster.nodes:
        wait_for(lambda n=n: _placer(n)["node_id"] == holder, 30, what="every node agrees")
    assert "view" in _placer(next(n for n in cluster.nodes if n.node_id == holder))


def test_local_first_then_a_burst_spills_to_the_idle_nodes(cluster):
    a = _ids(cluster)[0]
    assert ac.get(where.remote(), timeout=60) == a  # room here: no hop
    burst = ac.get([where.remote(0.5) for _ in range(6)], timeout=90)
    assert set(burst) == set(_ids(cluster)), Counter(burst)


def test_a_task_goes_to_the_node_holding_its_100_mib_argument(cluster):
    c = _ids(cluster)[2]
    ref = make.options(scheduling_strategy=Affinity(c)).remote(100 * MiB)
    ac.wait([ref], timeout=60, fetch_local=False)  # (fetch_local would copy it to A)
    for _ in range(3):  # A has room each time: locality beats local first
        _wait_idle(cluster, c)  # (the lease that made it lingers a moment on C)
        # (a shape of its own: a lease the owner holds for another shape is not reused)
        node, nbytes = ac.get(where_arg.options(num_cpus=0.5).remote(ref), timeout=60)
        assert (node, nbytes) == (c, 100 * MiB)


def test_spread_tasks_and_actors(cluster):
    actors = [Where.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert sorted(ac.get([h.node.remote() for h in actors], timeout=60)) == sorted(_ids(cluster))
    packed = [Where.remote() for _ in range(3)]  # default: packed on the local node
    assert set(ac.get([h.node.remote() for h in packed], timeout=60)) == {_ids(cluster)[0]}
    for h in actors + packed:
        ac.kill(h)
    spread = where.options(scheduling_strategy="SPREAD", num_cpus=0.1)
    nodes = ac.get([spread.remote(0.3) for _ in range(6)], timeout=60)
    assert set(nodes) == set(_ids(cluster)), Counter(nodes)  # room on A for all six


def test_hard_affinity_waits_for_its_busy_node_and_soft_runs_elsewhere(cluster):
    a, b, _c = _ids(cluster)
    hog = Where.options(num_cpus=1, scheduling_strategy=Affinity(b)).remote()
    assert ac.get(hog.node.remote(), timeout=60) == b  # B's CPU is taken
    soft = ac.get(where.options(scheduling_strategy=Affinity(b, soft=True)).remote(), timeout=60)
    assert soft != b
    hard = where.options(scheduling_strategy=Affinity(b)).remote()
    ready, _ = ac.wait([hard], timeout=1.0)
    assert ready == []  # waits for B
    ac.kill(hog)
    assert ac.get(hard, timeout=60) == b
    _wait_idle(cluster, b)
    soft_idle = where.options(scheduling_strategy=Affinity(b, soft=True)).remote()
    assert ac.get(soft_idle, timeout=60) == b  # room there now
    gone = Affinity("ee" * 16, soft=True)  # no such node: the default policy
    assert ac.get(where.options(scheduling_strategy=gone).remote(), timeout=60) == a
    with pytest.raises(Exception, match="not a node of this cluster"):
        ac.get(where.options(scheduling_strategy=Affinity("ee" * 16)).remote(), timeout=60)


def test_status_says_which_node_holds_the_placer(cluster, capsys):
    from actorcore import _cli

    node = cluster.nodes[1]
    holder = _placer(node)["node_id"]
    _cli._print_cluster({**node.ready, "token": node.token.hex(), "unix_name": None})
    out = capsys.readouterr().out
    assert "cluster: 3 node(s) alive, 0 dead" in out
    assert f"placer: node {holder}" in out
    assert "CPU:" in out and "/3 in use (cluster)" in out
