"""Where ``OWNER_GONE`` goes when a process ends (issue 10, item 4): only to the
nodes that may hold something for it, never to every node, and still to every
node holding a copy of its objects (passed on along the pulls).

Three nodes: A (the driver's), B (resource ``onb``), C (resource ``onc``). Each
node counts the notices it sent and received (``CLUSTER_INFO "owner_gone"``,
also the ``actorcore_owner_gone_*`` Prometheus counters).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request

import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._cluster_reach import OwnerReach
from actorcore._rpc import next_rid
from actorcore.errors import ActorDiedError
from actorcore.testing import Cluster, wait_for
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.timeout(180)]

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16
P1 = b"p" * 16


# --- the bookkeeping, without sockets -----------------------------------------------------


def test_a_process_that_stayed_on_its_node_tells_nobody():
    r = OwnerReach(A)
    r.registered(P1)
    r.sent_to(P1, A)  # (its own node is no target)
    assert r.ended(P1) == ([], {A})


def test_its_node_tells_the_nodes_it_was_sent_to_and_those_that_pulled_its_copies():
    r = OwnerReach(A)
    r.registered(P1)
    r.sent_to(P1, B)
    r.served(P1, C)  # C pulled one of its objects from A
    assert r.ended(P1) == ([B, C], {A})
    assert not r.sent and not r.pulled and not r.home


def test_a_told_node_passes_it_on_to_the_nodes_that_pulled_from_it_not_told_yet():
    r = OwnerReach(B)
    r.served(P1, A)  # the owner's node pulled its result back
    r.served(P1, C)
    assert r.told(P1, {A, B}) == [C]
    assert r.told(P1, {A, B}) == []  # once


def test_a_process_of_another_node_ending_here_is_told_by_its_node():
    r = OwnerReach(B)
    r.served(P1, C)
    assert r.ended(P1) == ([], set())  # (its direct link here closed: its node tells)
    assert r.pulled == {P1: {C}}  # kept for the OWNER_GONE that comes


def test_told_while_still_connected_it_is_passed_on_when_it_ends():
    r = OwnerReach(B)
    r.served(P1, C)
    r.deferred[P1] = {A, B}
    assert r.ended(P1) == ([C], {A, B})


def test_records_of_owners_never_told_are_bounded():
    r = OwnerReach(A)
    r.MAX_OWNERS = 3
    for i in range(10):
        r.served(bytes([i]) * 16, B)
    assert len(r.pulled) == 3


# --- on a real cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        c.add_node(num_cpus=2)
        c.add_node(num_cpus=1, resources={"onb": 4})
        c.add_node(num_cpus=1, resources={"onc": 4})
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            yield c
        finally:
            ac.shutdown()


def _counts(node) -> dict[str, int]:
    return dict(node.ask(P.ClusterInfoMsg(next_rid(), "owner_gone")))


def _all_counts(cluster) -> list[dict[str, int]]:
    return [_counts(n) for n in cluster.nodes]


def _objects_on(node) -> set[str]:
    return {o["object_id"] for o in node.ask(P.ListStateMsg(next_rid(), "objects"))}


def _workers_on(node) -> set[int]:
    return {int(w["pid"]) for w in node.ask(P.ListStateMsg(next_rid(), "workers"))}


@ac.remote
class Local:
    def work(self) -> int:
        import numpy as np

        ref = ac.put(np.ones(1 << 20, dtype=np.uint8))  # its own object, on its node
        return int(ac.get(ref).sum()) + ac.get(double.remote(21))

    def pid(self) -> int:
        import os

        return os.getpid()

    def die(self) -> None:
        import os

        os._exit(0)  # its worker process exits (actors share workers: a kill keeps it)


@ac.remote
def double(x: int) -> int:
    return 2 * x


@pytest.mark.etcd
def test_a_worker_that_used_only_its_node_tells_no_node_when_it_exits(cluster):
    a = cluster.nodes[0]
    here = NodeAffinitySchedulingStrategy(node_id=a.node_id, soft=False)
    actor = Local.options(scheduling_strategy=here).remote()
    assert ac.get(actor.work.remote(), timeout=60) == (1 << 20) + 42
    pid = ac.get(actor.pid.remote(), timeout=60)
    assert pid in _workers_on(a)
    before = _all_counts(cluster)
    with pytest.raises(ActorDiedError):
        ac.get(actor.die.remote(), timeout=60)
    wait_for(lambda: pid not in _workers_on(a), 30, what="the actor's worker gone on A")
    assert _all_counts(cluster) == before


_DRIVER = """
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


def _run(cluster, code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), cluster.address, cluster.nodes[0].node_id],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()[-1]


@pytest.mark.etcd
def test_a_driver_that_used_node_b_tells_b_only(cluster):
    a, b, _c = cluster.nodes
    before = _all_counts(cluster)
    oid = _run(cluster, _DRIVER)
    wait_for(lambda: _counts(b)["received"] > before[1]["received"], 30, what="B told")
    for node in (a, b):
        wait_for(lambda n=node: oid not in _objects_on(n), 30, what="its objects freed")
    after = _all_counts(cluster)
    assert after[0]["sent"] - before[0]["sent"] == 1  # A -> B
    assert after[1]["received"] - before[1]["received"] == 1
    assert after[1]["sent"] == before[1]["sent"]  # B passes it on to no one (A pulled, A told)
    assert after[2] == before[2]  # C: nothing
    # the same number on A's /metrics (Prometheus)
    entry = next(n for n in ac.nodes() if n["NodeID"] == a.node_id)
    url = f"http://{entry['NodeManagerAddress']}:{entry['MetricsExportPort']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    line = next(s for s in text.splitlines() if s.startswith("actorcore_owner_gone_sent_total"))
    assert float(line.split()[-1]) == after[0]["sent"]


_RELAY = """
import os, sys
import numpy as np
import actorcore as ac

ac.init(address=sys.argv[1], attach_node=sys.argv[2])

@ac.remote(resources={"onc": 1})
def total(a):
    return int(a.sum())

@ac.remote(resources={"onb": 1})
class Relay:
    def make(self, n):
        return np.ones(n, dtype=np.uint8)

    def pass_on(self, refs):
        return ac.get(total.remote(refs[0]), timeout=60)  # C pulls the driver's object

r = Relay.remote()
ref = r.make.remote(2 << 20)  # the driver's object, made on B
ac.wait([ref], timeout=60, fetch_local=False)  # no copy on A: C pulls it from B
assert ac.get(r.pass_on.remote([ref]), timeout=60) == 2 << 20
print(ref.id.hex(), flush=True)
os._exit(0)
"""


@pytest.mark.etcd
def test_a_copy_pulled_by_a_borrower_on_a_third_node_is_freed_too(cluster):
    """The driver never sent anything to C: C learns it from B, which served C the copy."""
    _a, b, c = cluster.nodes
    before = _all_counts(cluster)
    oid = _run(cluster, _RELAY)
    for node in (b, c):
        wait_for(lambda n=node: oid not in _objects_on(n), 30, what="its copies freed")
    after = _all_counts(cluster)
    # A tells B only (the actor it forwarded there); B passes it on to C, which
    # pulled the copy from B. (The relay actor's worker on B exits with its actor
    # and tells C too: it had a lease there.)
    assert after[0]["sent"] - before[0]["sent"] == 1
    assert after[2]["received"] > before[2]["received"]
    assert after[1]["sent"] - before[1]["sent"] <= 2


@ac.remote(resources={"onb": 1})
class Borrower:
    def read(self, refs) -> int:
        self.refs = refs  # still borrowed when its process exits
        return int(ac.get(refs[0], timeout=60).sum())

    def pid(self) -> int:
        import os

        return os.getpid()

    def die(self) -> None:
        import os

        os._exit(0)


@pytest.mark.etcd
def test_a_worker_that_borrowed_refs_exits_without_freeing_them(cluster):
    import numpy as np

    a, b, _c = cluster.nodes
    ref = ac.put(np.ones(2 << 20, dtype=np.uint8))  # the driver's, on A
    borrower = Borrower.remote()
    assert ac.get(borrower.read.remote([ref]), timeout=60) == 2 << 20  # a copy on B
    pid = ac.get(borrower.pid.remote(), timeout=60)
    oid = ref.id.hex()
    assert oid in _objects_on(a) and oid in _objects_on(b)
    before = _counts(b)
    with pytest.raises(ActorDiedError):
        ac.get(borrower.die.remote(), timeout=60)
    wait_for(lambda: pid not in _workers_on(b), 30, what="the borrower's worker gone on B")
    assert _counts(b)["sent"] == before["sent"]  # it sent nothing anywhere: no one to tell
    assert oid in _objects_on(a) and oid in _objects_on(b)  # the owner's, not the borrower's
    assert int(ac.get(ref, timeout=60).sum()) == 2 << 20
