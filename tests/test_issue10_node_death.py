"""Issue 10 item 1 probed as a new user would (review, rev10): node death.

Aimed at what test_cluster_failover.py does not: queued (not only running) work
on the killed node, the order of retried actor calls, the TTL as a tunable, a
bundle with an actor in it. Real etcd, real node daemons; waits are for states
with deadlines.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from cluster_helpers import alive_in, attached_cluster, dead_everywhere, here, node_of
from issue10_helpers import TTL, Log, slow

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.errors import ActorCoreError, ActorDiedError
from actorcore.testing import Cluster, wait_for
from actorcore.util import placement_group, placement_group_table, remove_placement_group
from actorcore.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(150)]


def test_p1_running_and_queued_tasks_of_a_killed_node_all_finish_elsewhere(abc, tmp_path):
    """Eight 1-`w` tasks on two 2-`w` nodes: four run, four wait. Kill one of the
    nodes running them: all eight finish on the survivor; a task with
    max_retries=0 that ran there fails with an error (not a hang)."""
    b, c = abc.nodes[1], abc.nodes[2]
    once = slow.options(
        max_retries=0,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(b.node_id, soft=False),
    ).remote(30.0, str(tmp_path), 99)
    refs = [
        slow.options(resources={"w": 1}, num_cpus=0).remote(1.0, str(tmp_path), i, b.node_id)
        for i in range(8)
    ]

    def started():
        names = [p.name for p in tmp_path.iterdir()]
        on_b = [n for n in names if b.node_id in n and not n.startswith("99.")]
        return len(names) >= 5 and on_b and any(n.startswith("99.") for n in names)

    wait_for(started, 60, what="four tasks and the no-retry task running")
    abc.stop_node(b, kill=True)
    got = ac.get(refs, timeout=90)
    assert sorted(i for i, _ in got) == list(range(8))
    assert all(node == c.node_id for _, node in got), got
    with pytest.raises(ActorCoreError) as e:
        ac.get(once, timeout=60)
    print("max_retries=0 task on the killed node:", type(e.value).__name__, e.value)
    # and new work asking for the dead node by hard affinity: a clear error, no hang
    wait_for(lambda: dead_everywhere(abc, b.node_id), 30, what="death seen")
    # every view agrees: the state API, the cluster's resources
    from actorcore.util import state

    rows = {r["node_id"]: r for r in state.list_nodes()}
    assert rows[b.node_id]["state"] == "DEAD", rows[b.node_id]
    assert ac.cluster_resources().get("w") == 2.0
    assert ac.available_resources().get("w", 0) <= 2.0
    late = slow.options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(b.node_id, soft=False)
    ).remote(0.0, str(tmp_path), 100)
    with pytest.raises(ActorCoreError) as e:
        ac.get(late, timeout=30)
    print("hard affinity to the dead node:", type(e.value).__name__, e.value)
    assert "is dead" in str(e.value)
    assert b.node_id not in str(e.value).split("alive nodes")[1], "the dead node listed alive"


def _actor_on(cls_opts, want: set[str], tries: int = 10):
    for _ in range(tries):
        a = Log.options(**cls_opts).remote()
        node = ac.get(a.add.remote(-1), timeout=60)[1]
        if node in want:
            return a, node
        ac.kill(a)
    pytest.skip("could not place the actor")


def _kill_node_under_a_call(abc, tmp_path, retries: int, hold_s: float, queue: int):
    """A `w` actor (max_restarts=1, max_task_retries=``retries``) on B or C runs a
    call of ``hold_s`` with ``queue`` calls queued behind it when its node is
    SIGKILLed: ``(actor, its first node, the running call, the queued calls)``."""
    a, node = _actor_on(
        dict(max_restarts=1, max_task_retries=retries, resources={"w": 1}),
        {abc.nodes[1].node_id, abc.nodes[2].node_id},
    )
    marker = str(tmp_path / "held")
    held = a.hold.remote(marker, hold_s)
    queued = [a.add.remote(i) for i in range(queue)]
    wait_for(lambda: os.path.exists(marker), 60, what="the call running")
    abc.stop_node(node_of(abc, node), kill=True)
    return a, node, held, queued


def test_p1_calls_queued_behind_the_lost_call_are_retried_in_order(abc, tmp_path):
    """max_restarts=1, max_task_retries=2: a call running and five queued behind it
    when the node dies all complete once each, in submission order, on the new
    instance (whose __init__ ran again)."""
    _a, node, held, queued = _kill_node_under_a_call(abc, tmp_path, 2, 3.0, 5)
    assert ac.get(held, timeout=60) != node
    got = ac.get(queued, timeout=60)
    assert got[-1][0] == [0, 1, 2, 3, 4], got  # each once, in order, on a fresh instance
    assert all(n != node for _, n in got)


def test_p1_no_call_retries_in_flight_and_queued_fail_with_actor_died(abc, tmp_path):
    """max_restarts=1, max_task_retries=0: the running call fails with
    ActorDiedError; queued ones fail the same way or run once on the new
    instance; later calls go to the restarted actor."""
    a, node, held, queued = _kill_node_under_a_call(abc, tmp_path, 0, 30.0, 3)
    with pytest.raises(ActorDiedError):
        ac.get(held, timeout=60)
    ran = []
    for r in queued:
        try:
            ran.append(ac.get(r, timeout=60))
        except ActorDiedError:
            pass
    seen, where = ac.get(a.add.remote(7), timeout=60)
    assert where != node
    assert seen == [x[0][-1] for x in ran] + [7], (seen, ran)  # none ran twice


@ac.remote
class AsyncLog:
    def __init__(self) -> None:
        self.calls = 0

    async def nap(self, marker: str, i: int) -> tuple[int, int, str]:
        self.calls += 1
        open(f"{marker}.{i}", "w").close()  # noqa: ASYNC230 (an empty marker file)
        await asyncio.sleep(3.0)
        return i, self.calls, here()


def test_p1_async_actor_concurrent_calls_in_flight_all_retried_once(abc, tmp_path):
    """An async actor (max_restarts=1, max_task_retries=1) with four calls awaiting at
    once when its node dies: each is retried on the new instance, once."""
    a = AsyncLog.options(max_restarts=1, max_task_retries=1, resources={"w": 1}).remote()
    refs = [a.nap.remote(str(tmp_path / "m"), i) for i in range(4)]
    wait_for(lambda: len(list(tmp_path.iterdir())) == 4, 60, what="four calls running")
    node = next(
        n
        for n in abc.nodes[1:]
        if any(
            r["actor_id"] == a.id.hex() and r["state"] == "ALIVE"
            for r in n.ask(P.ListStateMsg(next_rid(), "actors"))
        )
    )
    abc.stop_node(node, kill=True)
    got = ac.get(refs, timeout=60)
    assert sorted(i for i, _, _ in got) == [0, 1, 2, 3]
    assert all(where != node.node_id for _, _, where in got)
    assert max(calls for _, calls, _ in got) == 4, got  # the new instance ran each once


def test_p1_ttl_is_tunable_and_death_is_seen_after_it_not_before():
    """--node-ttl 5 (Cluster(ttl_s=5)): a SIGKILLed node is still listed alive 2 s
    after the kill (etcd keeps its lease for 0.75-1 TTL) and dead soon after the TTL."""
    ttl = 5.0
    with Cluster(num_nodes=2, ttl_s=ttl) as c:
        victim = c.nodes[1]
        c.stop_node(victim, kill=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:  # an observation window, not a synchronization
            assert alive_in(c.nodes[0].nodes(), victim.node_id) is True, (
                "declared dead before the TTL"
            )
            time.sleep(0.1)
        wait_for(
            lambda: alive_in(c.nodes[0].nodes(), victim.node_id) is False, ttl + 6, interval=0.05
        )
        seen = time.monotonic() - t0
        print(f"ttl {ttl}: death seen {seen:.2f} s after SIGKILL")
        assert seen >= 0.7 * ttl


def test_p1_an_actor_in_a_lost_bundle_restarts_in_the_bundle_placed_again():
    w1 = {"w": 1}
    with attached_cluster({}, w1, w1, w1, ttl_s=TTL, num_cpus=1) as c:
        pg = placement_group([{"w": 1}] * 2, strategy="STRICT_SPREAD")
        assert pg.wait(30)
        a = Log.options(
            max_restarts=1, num_cpus=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0),
        ).remote()  # fmt: skip
        first = ac.get(a.add.remote(1), timeout=60)[1]
        row = next(r for r in placement_group_table() if r["placement_group_id"] == pg.id.hex())
        assert row["bundles_to_node_id"][0] == first
        c.stop_node(node_of(c, first), kill=True)
        seen, node = ac.get(a.add.remote(2), timeout=60)
        assert seen == [2] and node != first
        row = next(r for r in placement_group_table() if r["placement_group_id"] == pg.id.hex())
        assert row["state"] == "CREATED" and row["bundles_to_node_id"][0] == node
        remove_placement_group(pg)
