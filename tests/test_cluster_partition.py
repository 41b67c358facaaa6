"""A network partition (issue 10 items 2, 5 and 6): three nodes on three network
"hosts" (namespaces on a test bridge), the driver's node in the root namespace,
etcd on the bridge. Host 2's link is cut past the lease TTL: the rest of the
cluster sees it dead and goes on working; host 2, whose peers are silent, fences
itself (its worker ends before the node is declared dead); once the link is back
it rejoins as a new node (same daemon process, new id) and takes work.

The other side of the fencing rule (nobody reaches etcd: keep running) is
test_cluster_etcd_outage.py. Needs root and ``ip``; CI has both."""

from __future__ import annotations

import os
import time

import pytest
from cluster_helpers import alive_in, gone, netns_cluster

import actorcore as ac
from actorcore.testing import Cluster, NetnsHosts, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

TTL = 2.0


@ac.remote
def where() -> str:
    return ac.get_runtime_context().get_node_id()


@ac.remote
class Host:
    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        return ac.get_runtime_context().get_node_id()


def test_cut_node_fences_the_rest_go_on_and_it_rejoins_as_a_new_node():
    with netns_cluster(*({f"h{i}": 10} for i in range(3)), ttl_s=TTL) as (c, hosts):
        _partition(c, hosts)


def _partition(c: Cluster, hosts: NetnsHosts) -> None:
    cut, other = c.nodes[2], c.nodes[0]
    ac.init(address=c.address, num_cpus=0)  # the driver's own node: the bridge address
    try:
        far = Host.options(resources={"h2": 1}).remote()
        near = Host.options(resources={"h1": 1}).remote()
        assert ac.get(far.node.remote(), timeout=60) == cut.node_id
        worker = ac.get(far.pid.remote(), timeout=30)
        old_id = cut.node_id

        hosts.set_link(2, False)
        cut_at = time.monotonic()
        wait_for(
            lambda: alive_in(other.nodes(), old_id) is False,
            5 * TTL,
            0.05,
            "the cut node seen dead",
        )
        seen_dead = time.monotonic() - cut_at
        # the cut node fenced itself: its worker had ended by then (a little slack for the reap)
        wait_for(lambda: gone(worker), 1.0, what="the cut node's worker gone")
        # the rest go on
        assert ac.get(near.node.remote(), timeout=30) == c.nodes[1].node_id
        nodes = [where.options(resources={f"h{i}": 1}).remote() for i in (0, 1)]
        assert ac.get(nodes, timeout=60) == [c.nodes[0].node_id, c.nodes[1].node_id]
        assert seen_dead < 3 * TTL

        hosts.set_link(2, True)
        c.wait_reborn(cut, 60)  # the same daemon process under a new node id
        assert cut.node_id != old_id
        assert "peer(s) did not answer" in c.daemon_log(cut)  # the rule's silent-peer branch
        wait_for(lambda: alive_in(other.nodes(), cut.node_id), 20, 0.05, "the new node seen alive")
        assert alive_in(other.nodes(), old_id) is False
        got = ac.get(where.options(resources={"h2": 1}).remote(), timeout=60)
        assert got == cut.node_id, "the node back from the partition takes work"
    finally:
        ac.shutdown()
