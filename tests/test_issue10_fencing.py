"""Issue 10 items 2 and 6 probed as a new user would (review, rev10): fencing and
partitions.

A whole node (daemon and workers) frozen past the TTL then thawed: its old
actor instance never answers, its objects are rebuilt or lost, the moved actor
is found by new callers. A netns partition (long: ACTORCORE_TEST_LONG=1): the
cut host's actor and task move, and the actor's name still finds the moved
instance once the host rejoins. Real etcd, real node daemons; waits are for
states with deadlines.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from cluster_helpers import alive_in, attached_cluster, gone, long_test, netns_cluster, node_of
from issue10_helpers import MB, TTL, Log, make, make_once, slow

import actorcore as ac
from actorcore.errors import ObjectLostError
from actorcore.testing import Cluster, wait_for
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(150)]


def _record(c: Cluster, handle) -> dict:
    """An actor's record in etcd (state, node, epoch, address), as a failing test shows it."""
    import msgpack
    from actorcore.gcs import EtcdControlStore

    async def read():
        async with EtcdControlStore(c.address, call_timeout=5.0) as store:
            kv = await store.get(b"/actors/" + handle.id.hex().encode())
            names, _ = await store.get_prefix(b"/names/")
            return kv, {n.key.decode(): n.value.hex() for n in names}

    kv, names = asyncio.run(read())
    rec = msgpack.unpackb(kv.value, raw=False) if kv else {}
    return {k: rec.get(k) for k in ("state", "epoch", "name", "namespace")} | {
        "node_id": bytes(rec.get("node_id") or b"").hex(),
        "has_handle": rec.get("handle") is not None,
        "names in etcd": names,
    }


# the frozen node tests' cluster: the driver's node, two of 1 `w` (one CPU each)
THREE = ({}, {"w": 1}, {"w": 1})


def _frozen_past_ttl_then_thawed(c: Cluster):
    """A named actor (max_restarts=1) on a node whose daemon *and* workers are frozen
    (SIGSTOP of the group: a paused machine) until the cluster declares it dead and
    the actor answered from another node; then thawed (``c``: :data:`THREE`)."""
    a = Log.options(
        max_restarts=1, max_task_retries=1, resources={"w": 1}, name="f", namespace="p2"
    ).remote()
    first = ac.get(a.add.remote(0), timeout=60)[1]
    old_pid = ac.get(a.pid.remote(), timeout=30)
    frozen = node_of(c, first)
    # and objects in its store: a retryable task's result, and a max_retries=0 one
    on_it = NodeAffinitySchedulingStrategy(first, soft=True)
    obj, w1 = make.options(scheduling_strategy=on_it, num_cpus=0).remote(MB, 4)
    once, w2 = make_once.options(scheduling_strategy=on_it, num_cpus=0).remote(MB)
    assert ac.get([w1, w2], timeout=60) == [first] * 2
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: alive_in(c.nodes[0].nodes(), first) is False, TTL * 6, interval=0.05)
        seen, node = ac.get(a.add.remote(1), timeout=60)
        assert node != first and seen == [1]
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    return a, node, first, old_pid, frozen, (obj, once)


def test_p2_whole_node_frozen_then_thawed_old_instance_never_answers():
    """After the thaw the old worker exits without serving, the new instance's state
    is never interleaved with the old one's, and the node rejoins under a new id;
    objects of its store are rebuilt (retryable) or lost, never read from it."""
    with attached_cluster(*THREE, ttl_s=TTL, num_cpus=1) as c:
        a, node, first, old_pid, frozen, objects = _frozen_past_ttl_then_thawed(c)
        want = [1]
        for i in range(2, 8):
            want.append(i)
            seen, node2 = ac.get(a.add.remote(i), timeout=30)
            assert node2 == node and seen == want, seen
        wait_for(lambda: gone(old_pid), 30, what="the thawed old worker gone")
        c.wait_reborn(frozen, 60)
        assert frozen.node_id != first
        assert ac.get(a.add.remote(9), timeout=30) == ([*want, 9], node)
        # its objects, read only now (same daemon and address, new id, empty store):
        # the retryable one is rebuilt, the other lost; neither hangs
        obj, once = objects
        got = ac.get(obj, timeout=60)
        assert int(got[0]) == 4 and got.shape == (MB,)
        with pytest.raises(ObjectLostError):
            ac.get(once, timeout=60)


@ac.remote
def call_add(h, i: int):
    return ac.get(h.add.remote(i), timeout=40)


def test_p2_moved_actor_reachable_by_new_callers_after_its_frozen_node_rejoined():
    with attached_cluster(*THREE, ttl_s=TTL, num_cpus=1) as c:
        _a, node, _first, _old_pid, frozen, _objects = _frozen_past_ttl_then_thawed(c)
        c.wait_reborn(frozen, 60)
        # a new caller (a task given the handle) and a lookup by name both find it
        assert ac.get(call_add.remote(_a, 2), timeout=60) == ([1, 2], node)
        h = ac.get_actor("f", namespace="p2")
        assert ac.get(h.add.remote(3), timeout=30) == ([1, 2, 3], node)


@long_test
def test_p6_cut_link_actor_and_task_move_name_still_found_after_rejoin(tmp_path):
    """Three netns hosts (host 0: no `w`; hosts 1 and 2: `w: 2`), the driver in the
    root namespace. The link of the host running a named actor (max_restarts=1)
    and a retryable task is cut past the TTL: the task finishes on the other `w`
    host, the actor answers from there (__init__ ran again); the link comes back,
    the cut host rejoins as a new node, and the actor's name still finds the
    moved instance."""
    with netns_cluster({}, {"w": 2}, {"w": 2}, ttl_s=TTL) as (c, hosts):
        ac.init(address=c.address, num_cpus=0)
        try:
            a = Log.options(
                max_restarts=1,
                max_task_retries=1,
                resources={"w": 1},
                name="p",
                namespace="p6",
            ).remote()
            first = ac.get(a.add.remote(1), timeout=60)[1]
            cut_i = next(i for i, n in enumerate(c.nodes) if n.node_id == first)
            cut, other = c.nodes[cut_i], c.nodes[3 - cut_i]
            ref = slow.options(
                resources={"w": 1},
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(first, soft=True),
            ).remote(0.0, str(tmp_path), 1, first)
            wait_for(lambda: any(tmp_path.iterdir()), 60, what="the task running")
            hosts.set_link(cut_i, False)
            wait_for(lambda: alive_in(c.nodes[0].nodes(), first) is False, 5 * TTL, 0.05)
            assert ac.get(ref, timeout=60) == (1, other.node_id)
            assert ac.get(a.add.remote(2), timeout=60) == ([2], other.node_id)
            hosts.set_link(cut_i, True)
            c.wait_reborn(cut, 60)
            assert cut.node_id != first
            try:
                h = ac.get_actor("p", namespace="p6")
            except ValueError as e:
                raise AssertionError(f"{e}; its etcd record: {_record(c, a)}") from e
            assert ac.get(h.add.remote(3), timeout=30) == ([2, 3], other.node_id)
            rows = {r["NodeID"]: r["Alive"] for r in ac.nodes()}
            assert rows[first] is False and rows[cut.node_id] is True
        finally:
            ac.shutdown()
