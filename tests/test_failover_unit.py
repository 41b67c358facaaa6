"""Who waits for whom when a node dies (actorcore._cluster_failover and WAIT_ACTOR's rule),
without sockets (issue 10 item 1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from actorcore.gcs import ActorRecord

from actorcore import _protocol as P
from actorcore._cluster_failover import NodeFailover
from actorcore._cluster_node import ClusterNode
from actorcore._peers import Joined, Left

pytestmark = pytest.mark.timeout(10)

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def _rec(**kw) -> ActorRecord:
    base = dict(
        actor_id=b"x" * 16,
        name=None,
        namespace="default",
        state="ALIVE",
        node_id=B,
        address=["w", "h", 1],
        epoch=0,
        owner=[b"o" * 16],
        detached=False,
        class_name="K",
        max_restarts=1,
        home=A,
    )
    base.update(kw)
    return ActorRecord(**base)


def _node_dead(rec: ActorRecord, live: set[bytes]):
    view = SimpleNamespace(
        membership=SimpleNamespace(table=SimpleNamespace(live=dict.fromkeys(live)))
    )
    return ClusterNode._node_dead(view, rec)  # type: ignore[arg-type]


def test_callers_wait_for_a_restart_only_while_someone_can_do_it():
    assert _node_dead(_rec(), {A, B, C}) is None  # its node lives
    assert _node_dead(_rec(), {A, C}) is None  # its home restarts it
    dead = _node_dead(_rec(), {C})  # home gone too, not detached: it went with its owner
    assert dead is not None and dead[0] == "DEAD" and B.hex() in dead[3]
    assert _node_dead(_rec(restarts=1), {A, C})[0] == "DEAD"  # out of restarts
    assert _node_dead(_rec(max_restarts=-1, restarts=9), {A, C}) is None  # unlimited
    orphan = _rec(detached=True, spec_saved=True, home=None)
    assert _node_dead(orphan, {C}) is None  # any node restarts it from its saved spec
    assert _node_dead(_rec(detached=True, home=None), {C})[0] == "DEAD"  # no spec kept
    assert _node_dead(_rec(state="DEAD"), {A, C})[0] == "DEAD"


class _Peer:
    def __init__(self, closed: bool = False) -> None:
        self.conn = SimpleNamespace(closed=closed)
        self.sent: list[object] = []

    def send(self, msg: object) -> None:
        self.sent.append(msg)


def test_node_death_is_told_to_drivers_and_workers_on_their_registered_connection():
    driver, worker, closed, store_conn = _Peer(), _Peer(), _Peer(closed=True), _Peer()
    daemon = SimpleNamespace(
        node_id=A,
        drivers={b"d": driver},
        workers=SimpleNamespace(
            values=lambda: [SimpleNamespace(peer=worker), SimpleNamespace(peer=closed)]
        ),
        conns={b"d": {driver, store_conn}},
        spawned=[],
    )
    daemon.spawn = daemon.spawned.append
    cluster = SimpleNamespace(
        membership=SimpleNamespace(table=SimpleNamespace(live={A: {}, C: {}})),
        work=SimpleNamespace(placed={}),
    )
    f = NodeFailover(daemon, cluster)
    f.on_change([Joined(C, {}), Left(A), Left(B)])  # its own Left is not a peer's death
    assert driver.sent == [P.NodeDiedMsg(B)] and worker.sent == [P.NodeDiedMsg(B)]
    assert store_conn.sent == [] and closed.sent == []
    assert f.deaths_seen == 1
    assert len(daemon.spawned) == 1  # A is the smallest live node: it looks for orphans
    daemon.spawned[0].close()
