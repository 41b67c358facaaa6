"""Placement groups across nodes when nodes come and go (issue 9 item 5): a
STRICT_SPREAD group with more bundles than nodes waits with one warning and is
placed when a node joins; a node that stops answering in the middle of the
two-phase reservation makes the others release what they prepared; bundles of
a node that dies are placed again elsewhere. Real etcd, real node daemons."""

from __future__ import annotations

import os
import signal

import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import Cluster, wait_for
from actorcore.util import placement_group, placement_group_table, remove_placement_group

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(150)]


def _available(node) -> dict[str, float]:
    return dict(node.ask(P.ListStateMsg(next_rid(), "node"))["resources_available"])


def _row(pg) -> dict:
    return next(r for r in placement_group_table() if r["placement_group_id"] == pg.id.hex())


def _free(node) -> bool:
    avail = _available(node)
    return avail.get("CPU") == 1.0 and not any("_group_" in k for k in avail)


def _prepared_only(node) -> bool:
    """It holds the group's CPU, and offers nothing for it (phase one)."""
    avail = _available(node)
    return avail.get("CPU") == 0.0 and not any("_group_" in k for k in avail)


def _holder(c: Cluster) -> str:
    """The node holding the elected placer (it coordinates new groups)."""
    ask = P.ClusterInfoMsg
    return wait_for(lambda: c.nodes[0].ask(ask(next_rid(), "placer"))["node_id"], 30)


@pytest.fixture
def cluster():
    """Three nodes of 1 CPU; the driver attaches to one that does not hold the placer
    (the groups' coordinator), so tests may stop the coordinator."""
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        for _ in range(3):
            c.add_node(num_cpus=1, wait=False)
        c.wait_registered()
        holder = _holder(c)
        ac.init(
            address=c.address, attach_node=max(n.node_id for n in c.nodes if n.node_id != holder)
        )
        try:
            yield c
        finally:
            ac.shutdown()


def _three(cluster):
    """(the driver's node, the coordinator's, the third)"""
    holder = _holder(cluster)
    live = cluster.live()
    coordinator = next(n for n in live if n.node_id == holder)
    others = sorted((n for n in live if n is not coordinator), key=lambda n: n.node_id)
    return others[-1], coordinator, others[0]


def test_a_node_frozen_mid_reservation_releases_the_others_then_a_new_node_places_it(
    cluster, capsys
):
    a, b, c = _three(cluster)
    os.kill(c.pid, signal.SIGSTOP)  # its daemon answers nothing (and its lease runs out)
    try:
        pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
        # phase one on the live nodes: held, not usable
        wait_for(lambda: _prepared_only(a) and _prepared_only(b), 30, what="A and B prepared")
        assert not pg.wait(0.2)
        # C is declared dead: the attempt is aborted and A and B give back what they held
        wait_for(lambda: _free(a) and _free(b), 30, what="A and B released their bundles")
        assert _row(pg)["state"] == "PENDING"
    finally:
        cluster.stop_node(c, kill=True)
    # two nodes can never hold three STRICT_SPREAD bundles: one warning, naming it
    wait_for(lambda: "cannot be placed" in (err := capsys.readouterr().err) and err, 30)
    # a third node joins: the group is placed there and on A and B
    d = cluster.add_node(num_cpus=1)
    assert pg.wait(60)
    row = _row(pg)
    assert row["state"] == "CREATED"
    assert sorted(row["bundles_to_node_id"].values()) == sorted([a.node_id, b.node_id, d.node_id])
    assert "cannot be placed" not in capsys.readouterr().err  # warned once only
    remove_placement_group(pg)
    wait_for(lambda: all(_free(n) for n in (a, b, d)), 30, what="every node free again")


def test_bundles_of_a_dead_node_are_placed_again(cluster):
    _, b, c = _three(cluster)
    pg = placement_group([{"CPU": 1}] * 2, strategy="SPREAD")
    assert pg.wait(30)
    first = dict(_row(pg)["bundles_to_node_id"])
    victim = next(n for n in (b, c) if n.node_id in first.values())
    index = next(i for i, n in first.items() if n == victim.node_id)
    cluster.stop_node(victim, kill=True)

    def moved() -> bool:
        row = _row(pg)
        node = row["bundles_to_node_id"][index]
        return row["state"] == "CREATED" and node not in (None, victim.node_id)

    wait_for(moved, 60, interval=0.1, what="the lost bundle placed on a live node")
    row = _row(pg)
    for i, node in first.items():
        if i != index:
            assert row["bundles_to_node_id"][i] == node  # the others stay put
    remove_placement_group(pg)
    wait_for(lambda: all(_free(n) for n in cluster.live()), 30, what="every node free again")


def test_groups_of_a_dead_coordinator_are_taken_over(cluster):
    a, c, b = _three(cluster)  # C: the coordinator
    pg_id = os.urandom(16)
    # created through B (no driver: it outlives nobody), coordinated by C
    b.ask(P.CreatePlacementGroupMsg(next_rid(), pg_id, [{"CPU": 0.5}] * 2, "SPREAD", ""))
    pg = ac.util.PlacementGroup(pg_id, [{"CPU": 0.5}] * 2)
    assert pg.wait(30)
    assert _row(pg)["coordinator_node_id"] == c.node_id
    mine = placement_group([{"CPU": 0.25}], lifetime="detached")  # the driver's, forwarded to C
    assert mine.wait(30)
    cluster.stop_node(c, kill=True)

    def taken_over() -> bool:
        row = _row(pg)
        nodes = set(row["bundles_to_node_id"].values())
        return (
            row["coordinator_node_id"] in (a.node_id, b.node_id)
            and row["state"] == "CREATED"
            and nodes == {a.node_id, b.node_id}
        )

    wait_for(taken_over, 60, interval=0.1, what="a live node coordinates the group")
    # the driver's detached group was on C, or moved with the rest: it lives on
    wait_for(
        lambda: _row(mine)["state"] == "CREATED" and _row(mine)["coordinator_node_id"] != c.node_id,
        60,
    )
    remove_placement_group(mine)
    remove_placement_group(pg)
    wait_for(lambda: _free(a) and _free(b), 30, what="every node free again")
    assert pg_id.hex() not in {r["placement_group_id"] for r in placement_group_table()}
