"""A node joins the cluster only once it can start workers (issue 10, items 2
and 6): a fresh node (or one back after fencing, see test_cluster_fencing) is
listed alive, and so gets work, only after its fork server is up and its first
prestarted worker registered, so work pinned to it the moment it is listed runs
at once instead of waiting for a worker to boot."""

from __future__ import annotations

import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import Cluster
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


@ac.remote
def where() -> str:
    return ac.get_runtime_context().get_node_id()


@ac.remote
class Here:
    def node(self) -> str:
        return ac.get_runtime_context().get_node_id()


def test_a_new_node_is_listed_only_once_it_can_start_workers_and_runs_pinned_work_at_once():
    with Cluster(num_nodes=1, ttl_s=3.0) as c:
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            new = c.add_node(num_cpus=1, wait=False)  # back once it registered in etcd
            # registered only once a worker was there to take work
            workers = new.ask(P.ListStateMsg(next_rid(), "workers"))
            assert workers, "a node listed in etcd without a worker"
            started = new.ask(P.ClusterInfoMsg(next_rid(), "startup"))
            assert started["workers_ready"] <= started["joining"] <= started["joined"], started
            # work pinned to it as soon as the driver's node lists it
            c.wait_registered()
            pin = NodeAffinitySchedulingStrategy(node_id=new.node_id, soft=False)
            assert ac.get(where.options(scheduling_strategy=pin).remote(), timeout=60) == (
                new.node_id
            )
            actor = Here.options(scheduling_strategy=pin).remote()
            assert ac.get(actor.node.remote(), timeout=60) == new.node_id
        finally:
            ac.shutdown()


def test_a_node_without_prestarted_workers_joins_once_its_fork_server_is_up():
    with Cluster(num_nodes=1, ttl_s=3.0) as c:
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            new = c.add_node(num_cpus=1, prestart_workers=0)
            started = new.ask(P.ClusterInfoMsg(next_rid(), "startup"))
            assert started["workers_ready"] <= started["joining"], started
            pin = NodeAffinitySchedulingStrategy(node_id=new.node_id, soft=False)
            assert ac.get(where.options(scheduling_strategy=pin).remote(), timeout=60) == (
                new.node_id
            )
        finally:
            ac.shutdown()


@ac.remote(max_retries=0)
def use_node_then_exit(node_id: str) -> None:
    import os

    pin = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    assert ac.get(where.options(scheduling_strategy=pin).remote(), timeout=60) == node_id
    os._exit(0)  # its worker exits: its node tells the node it sent work to


def test_a_worker_registered_before_its_node_joined_is_one_of_its_processes():
    """The first worker registers before its node joins: when it exits, its node
    still tells the nodes it sent work to (``OWNER_GONE``)."""
    from actorcore.errors import ActorCoreError
    from actorcore.testing import wait_for

    with Cluster(num_nodes=1, ttl_s=3.0) as c:
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            new = c.add_node(num_cpus=1)
            assert len(new.ask(P.ListStateMsg(next_rid(), "workers"))) == 1  # the first
            home = c.nodes[0]
            pin = NodeAffinitySchedulingStrategy(node_id=new.node_id, soft=False)
            with pytest.raises(ActorCoreError):  # (its worker died: no retries)
                ac.get(
                    use_node_then_exit.options(scheduling_strategy=pin).remote(home.node_id),
                    timeout=60,
                )

            def told() -> int:
                return int(home.ask(P.ClusterInfoMsg(next_rid(), "owner_gone"))["received"])

            wait_for(told, 30, what="the node it sent work to told")
            assert told() == 1
        finally:
            ac.shutdown()
