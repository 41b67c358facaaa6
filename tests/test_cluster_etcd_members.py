"""A cluster on a three-member etcd (issue 10 item 5): killing any one member (the
one the nodes talk to first, then the leader) has no visible effect: no node is
fenced or seen dead, calls and tasks go on, control changes (a new named actor,
a named lookup) go through without waiting for the member to come back."""

from __future__ import annotations

import time

import pytest
from actorcore.gcs import EtcdCluster

import actorcore as ac
from actorcore.testing import Cluster, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

TTL = 2.0


@ac.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def _alive_everywhere(c: Cluster) -> set[str]:
    seen = [{r["NodeID"] for r in n.nodes() if r["Alive"]} for n in c.nodes]
    return set.intersection(*seen)


def test_killing_any_one_etcd_member_has_no_visible_effect():
    with EtcdCluster(members=3) as etcd:
        with Cluster(num_nodes=1, etcd=etcd, ttl_s=TTL) as c:
            c.add_node(num_cpus=1, resources={"far": 1})
            ids = {n.node_id for n in c.nodes}
            ac.init(address=c.address, attach_node=c.nodes[0].node_id)
            try:
                counter = Counter.options(resources={"far": 0.01}).remote()
                calls = ac.get(counter.incr.remote(), timeout=60)
                for k in range(2):  # the first endpoint (the nodes' first choice), the leader
                    victim = 0 if k == 0 else wait_for(etcd.leader, 20, what="a leader")
                    etcd.kill_member(victim)
                    killed = time.monotonic()
                    while time.monotonic() - killed < 2 * TTL:  # past a TTL without the member
                        calls += 1
                        assert ac.get(counter.incr.remote(), timeout=30) == calls
                    started = time.monotonic()
                    h = Counter.options(name=f"n{k}", namespace="m").remote()
                    assert ac.get(h.incr.remote(), timeout=30) == 1
                    found = ac.get_actor(f"n{k}", namespace="m")
                    assert ac.get(found.incr.remote(), timeout=30) == 2
                    assert time.monotonic() - started < 2 * TTL, "a control change waited"
                    assert _alive_everywhere(c) == ids, "a node fenced or was seen dead"
                    etcd.start_member(victim)
                wait_for(lambda: etcd.leader() is not None, 20, what="a leader")
                assert {n.node_id for n in c.nodes} == ids
            finally:
                ac.shutdown()
