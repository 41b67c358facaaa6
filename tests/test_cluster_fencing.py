"""Fencing with real processes and a real etcd (issue 10 item 2): a node daemon
frozen (SIGSTOP) past its lease TTL is declared dead; its workers stop serving
by themselves before that (their daemon no longer vouches for them), so its
actor never answers from a dead node; once thawed the daemon notices, fences
itself and rejoins as a new node that takes work."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.errors import ActorCoreError
from actorcore.testing import Cluster, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]

TTL = 2.0


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _alive_seen_by(node, node_id: str) -> bool | None:
    for r in node.nodes():
        if r["NodeID"] == node_id:
            return bool(r["Alive"])
    return None


@ac.remote(resources={"far": 1})
def where() -> str:
    return ac.get_runtime_context().get_node_id()


@ac.remote
class Pinned:
    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        return ac.get_runtime_context().get_node_id()


def test_frozen_daemon_past_ttl_fences_and_rejoins_as_a_new_node():
    with Cluster(num_nodes=1, ttl_s=TTL) as c:
        far = c.add_node(num_cpus=1, resources={"far": 2})
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            actor = Pinned.options(resources={"far": 1}).remote()
            assert ac.get(actor.node.remote(), timeout=60) == far.node_id
            worker = ac.get(actor.pid.remote(), timeout=30)
            old_id = far.node_id

            os.kill(far.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                wait_for(
                    lambda: _alive_seen_by(c.nodes[0], old_id) is False,
                    TTL * 5,
                    interval=0.02,
                    what="the frozen node seen dead",
                )
                seen_dead = time.monotonic() - stopped_at
                # its worker stopped serving by itself before the cluster declared the node dead
                # (a little slack: the process exit is reaped asynchronously)
                wait_for(lambda: _gone(worker), 1.0, what="the frozen node's worker gone")
                with pytest.raises(ActorCoreError):
                    ac.get(actor.pid.remote(), timeout=30)  # never answered by the old instance
            finally:
                os.kill(far.pid, signal.SIGCONT)
            assert seen_dead < TTL * 3

            c.wait_reborn(far, 30)  # the same daemon process under a new node id
            assert far.node_id != old_id
            # back as a new node, it registered only once it could start workers
            started = far.ask(P.ClusterInfoMsg(next_rid(), "startup"))
            assert started["workers_ready"] <= started["joining"], started
            assert "this daemon fenced itself as node " + old_id in c.daemon_log(far)
            assert _alive_seen_by(c.nodes[0], old_id) is False
            wait_for(lambda: _alive_seen_by(c.nodes[0], far.node_id), 10, what="new id seen")
            # it takes work again, under its new id
            assert ac.get(where.remote(), timeout=60) == far.node_id
        finally:
            ac.shutdown()
