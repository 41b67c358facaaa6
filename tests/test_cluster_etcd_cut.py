"""One node cut off from etcd while it still reaches its peers (issue 10 items 2 and
5, the other side of the rule): its peers answer that they reach etcd, so it is
the partitioned one: it fences itself at its deadline (its worker ends before
the cluster declares it dead) and, once it reaches etcd again, rejoins as a new
node. The node reaches etcd through a TCP proxy the test cuts (refuses)."""

from __future__ import annotations

import os
import time

import psutil
import pytest

import actorcore as ac
from actorcore.testing import Cluster, TcpProxy, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]

TTL = 2.0


@ac.remote
class Pinned:
    def pid(self) -> int:
        return os.getpid()


@ac.remote(resources={"cut": 1})
def where() -> str:
    return ac.get_runtime_context().get_node_id()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _alive(node, node_id: str) -> bool | None:
    for r in node.nodes():
        if r["NodeID"] == node_id:
            return bool(r["Alive"])
    return None


def test_node_cut_from_etcd_but_not_from_peers_fences_and_rejoins():
    with Cluster(num_nodes=1, ttl_s=TTL) as c:
        proxy = TcpProxy(("127.0.0.1", c.etcd.port))
        proxy.open()
        try:
            via = f"etcd://127.0.0.1:{proxy.port}/{c.namespace}"
            cut = c.add_node(num_cpus=1, resources={"cut": 2}, etcd_address=via)
            ac.init(address=c.address, attach_node=c.nodes[0].node_id)
            try:
                actor = Pinned.options(resources={"cut": 1}).remote()
                worker = ac.get(actor.pid.remote(), timeout=60)
                old_id = cut.node_id

                proxy.cut()  # etcd refuses it; its peer still answers it
                cut_at = time.monotonic()
                wait_for(lambda: _alive(c.nodes[0], old_id) is False, 5 * TTL, 0.05, "seen dead")
                assert time.monotonic() - cut_at < 3 * TTL
                wait_for(lambda: _gone(worker), 1.0, what="the cut node's worker gone")

                proxy.open()  # (same port) etcd reachable again: it rejoins as a new node
                c.wait_reborn(cut, 60)
                assert cut.node_id != old_id
                assert "peer(s) reach etcd while this node does not" in c.daemon_log(cut)
                assert ac.get(where.remote(), timeout=60) == cut.node_id
            finally:
                ac.shutdown()
        finally:
            proxy.cut()
