"""Placement groups across the nodes of a cluster (issue 9 item 5): real etcd,
three node daemons of 2 CPUs each; the driver attaches to node A (index 0).

Every test leaves the cluster as it found it: its groups removed and every
node's resources free again (checked by ``_all_free``).
"""

from __future__ import annotations

import pytest
from cluster_helpers import attached_cluster

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import Cluster, wait_for
from actorcore.util import placement_group, placement_group_table, remove_placement_group
from actorcore.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster():
    with attached_cluster({}, {}, {}, ttl_s=3.0) as c:
        yield c


@pytest.fixture
def free_after(cluster):
    yield
    _all_free(cluster)


def _available(node) -> dict[str, float]:
    return dict(node.ask(P.ListStateMsg(next_rid(), "node"))["resources_available"])


def _all_free(cluster: Cluster, timeout: float = 30.0) -> None:
    """Every live node has its 2 CPUs back and offers no group resources."""

    def free() -> bool:
        for n in cluster.live():
            avail = _available(n)
            if avail.get("CPU") != 2.0 or any("_group_" in k for k in avail):
                return False
        return True

    wait_for(free, timeout, interval=0.05, what="every node's resources free again")


def _row(pg) -> dict:
    return next(r for r in placement_group_table() if r["placement_group_id"] == pg.id.hex())


def _nodes_of(pg) -> list[str]:
    row = _row(pg)
    return [row["bundles_to_node_id"][i] for i in range(len(row["bundles"]))]


@ac.remote
def where() -> str:
    return ac.get_runtime_context().get_node_id()


@ac.remote(num_cpus=1)
class InBundle:
    def node(self) -> str:
        return ac.get_runtime_context().get_node_id()


def in_bundle(pg, i: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, i)


def test_strict_spread_puts_each_bundle_on_its_own_node(cluster, free_after):
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert pg.wait(30)
    assert ac.get(pg.ready(), timeout=10) is True
    nodes = _nodes_of(pg)
    assert sorted(nodes) == sorted(n.node_id for n in cluster.nodes)
    assert _row(pg)["state"] == "CREATED"
    for i, node in enumerate(nodes):
        got = ac.get(where.options(scheduling_strategy=in_bundle(pg, i)).remote(), timeout=60)
        assert got == node
    remove_placement_group(pg)


def test_strict_pack_and_pack_keep_bundles_on_one_node(cluster, free_after):
    strict = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert strict.wait(30)
    assert len(set(_nodes_of(strict))) == 1
    pack = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    assert pack.wait(30)
    assert len(set(_nodes_of(pack))) == 1
    assert set(_nodes_of(pack)) != set(_nodes_of(strict))  # that node is full
    # PACK spills over nodes when no single node fits the whole group
    big = placement_group([{"CPU": 1}] * 2, strategy="PACK")
    assert big.wait(30)
    assert len(set(_nodes_of(big))) == 1
    for pg in (strict, pack, big):
        remove_placement_group(pg)
    _all_free(cluster)
    over = placement_group([{"CPU": 2}, {"CPU": 2}, {"CPU": 1}], strategy="PACK")
    assert over.wait(30)
    assert len(set(_nodes_of(over))) == 3
    remove_placement_group(over)


def test_spread_uses_distinct_nodes_when_it_can(cluster, free_after):
    pg = placement_group([{"CPU": 0.5}] * 3, strategy="SPREAD")
    assert pg.wait(30)
    assert len(set(_nodes_of(pg))) == 3
    remove_placement_group(pg)


def test_actor_in_a_bundle_on_another_node_dies_with_the_group(cluster, free_after):
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert pg.wait(30)
    nodes = _nodes_of(pg)
    i = next(i for i, n in enumerate(nodes) if n != cluster.nodes[0].node_id)
    a = InBundle.options(scheduling_strategy=in_bundle(pg, i)).remote()
    assert ac.get(a.node.remote(), timeout=60) == nodes[i]
    remove_placement_group(pg)

    def died() -> bool:
        try:
            ac.get(a.node.remote(), timeout=30)
        except ac.errors.ActorDiedError:
            return True
        return False  # a call may still be answered right after the removal

    wait_for(died, 60, what="the actor in the removed group died")


@ac.remote
def submit_into(pg, i: int) -> tuple[str, str]:
    here = ac.get_runtime_context().get_node_id()
    assert ac.get(pg.ready(), timeout=30) is True  # asked of this node's daemon
    return here, ac.get(where.options(scheduling_strategy=in_bundle(pg, i)).remote())


def test_work_into_a_bundle_from_another_node(cluster, free_after):
    b = cluster.nodes[1].node_id
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert pg.wait(30)
    nodes = _nodes_of(pg)
    on_b = NodeAffinitySchedulingStrategy(b, soft=False)
    for i, node in enumerate(nodes):
        got = ac.get(submit_into.options(scheduling_strategy=on_b).remote(pg, i), timeout=60)
        assert got == (b, node)
    anyb = ac.get(where.options(scheduling_strategy=in_bundle(pg, -1)).remote(), timeout=60)
    assert anyb in nodes
    remove_placement_group(pg)


def test_table_and_named_lookup(cluster, free_after):
    pg = placement_group([{"CPU": 1}, {"CPU": 0.5}], strategy="SPREAD", name="tbl")
    assert pg.wait(30)
    row = _row(pg)
    assert row["strategy"] == "SPREAD" and row["name"] == "tbl" and row["state"] == "CREATED"
    assert row["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 0.5}}
    assert set(row["bundles_to_node_id"].values()) <= {n.node_id for n in cluster.nodes}
    assert ac.util.get_placement_group("tbl") == pg
    assert placement_group_table(pg) == row
    with pytest.raises(ValueError, match="exists"):
        placement_group([{"CPU": 0.1}], name="tbl")
    listed = ac.util.state.list_placement_groups()
    assert any(r["placement_group_id"] == pg.id.hex() for r in listed)
    # every node sees the same record
    for n in cluster.nodes:
        rows = n.ask(P.ListStateMsg(next_rid(), "placement_groups"))
        assert any(r["placement_group_id"] == pg.id.hex() for r in rows)
    remove_placement_group(pg)
    wait_for(lambda: pg.id.hex() not in {r["placement_group_id"] for r in placement_group_table()})
    assert ac.get(pg.ready(), timeout=10) is False


def test_prepare_holds_without_offering_commit_offers_release_frees(cluster, free_after):
    node = cluster.nodes[1]
    pg_id, coord = b"\x01" * 16, bytes.fromhex(cluster.nodes[0].node_id)
    bundles = [[0, {"CPU": 1}], [1, {"CPU": 0.5}]]
    ok, avail = node.ask(P.PgPrepareMsg(next_rid(), pg_id, 1, bundles, coord))
    assert ok is True and avail["CPU"] == 0.5
    avail = _available(node)
    assert avail["CPU"] == 0.5 and not any("_group_" in k for k in avail)
    # what does not fit now is refused, and holds nothing
    other = P.PgPrepareMsg(next_rid(), b"\x02" * 16, 1, [[0, {"CPU": 1}]], coord)
    assert node.ask(other)[0] is False
    assert node.ask(P.PgCommitMsg(next_rid(), pg_id, 2))[0] is False  # not that attempt
    assert node.ask(P.PgCommitMsg(next_rid(), pg_id, 1))[0] is True
    avail = _available(node)
    assert avail[f"CPU_group_0_{pg_id.hex()}"] == 1.0
    assert avail[f"CPU_group_{pg_id.hex()}"] == 1.5
    assert node.ask(P.PgReleaseMsg(next_rid(), pg_id, []))["CPU"] == 2.0
    # a bad request gets an error and leaves the daemon serving
    with pytest.raises(Exception, match="must be"):
        node.ask(P.PgPrepareMsg(next_rid(), pg_id, 3, [[0, {"CPU": -1}]], coord))
    assert _available(node)["CPU"] == 2.0


DRIVER = """
import actorcore as ac
from actorcore.util import placement_group
ac.init(address=ADDRESS, attach_node=NODE)
mine = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
kept = placement_group([{"CPU": 0.5}], lifetime="detached")
assert mine.wait(60) and kept.wait(60)
print(mine.id.hex(), kept.id.hex())
"""


def test_a_drivers_groups_end_with_it_detached_ones_stay(cluster, free_after):
    import subprocess
    import sys

    code = DRIVER.replace("ADDRESS", repr(cluster.address)).replace(
        "NODE", repr(cluster.nodes[1].node_id)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    mine, kept = out.stdout.split()[-2:]
    wait_for(
        lambda: mine not in {r["placement_group_id"] for r in placement_group_table()},
        30,
        what="the exited driver's group removed",
    )
    (row,) = [r for r in placement_group_table() if r["placement_group_id"] == kept]
    assert row["state"] == "CREATED" and row["detached"]
    remove_placement_group(ac.util.PlacementGroup(bytes.fromhex(kept), [{"CPU": 0.5}]))


def test_every_node_hands_new_groups_to_the_placers_node(cluster, free_after):
    import os

    info = P.ClusterInfoMsg
    coordinator = wait_for(lambda: cluster.nodes[0].ask(info(next_rid(), "placer"))["node_id"], 30)
    pgs = []
    for node in cluster.nodes:
        pg_id = os.urandom(16)
        node.ask(P.CreatePlacementGroupMsg(next_rid(), pg_id, [{"CPU": 0.5}] * 3, "SPREAD", ""))
        pgs.append(ac.util.PlacementGroup(pg_id, [{"CPU": 0.5}] * 3))
    for pg in pgs:
        assert pg.wait(30)
        assert _row(pg)["coordinator_node_id"] == coordinator
    # removed through a node that did not create them
    for i, pg in enumerate(pgs):
        other = cluster.nodes[(i + 1) % 3]
        other.ask(P.RemovePlacementGroupMsg(next_rid(), pg.id))
    # created and removed at once through a node that is not the coordinator
    node = next(n for n in cluster.nodes if n.node_id != coordinator)
    quick = os.urandom(16)
    node.ask(P.CreatePlacementGroupMsg(next_rid(), quick, [{"CPU": 1}], "PACK", ""))
    node.ask(P.RemovePlacementGroupMsg(next_rid(), quick))
