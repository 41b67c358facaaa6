"""Where work the local node cannot take goes (no sockets): affinity keys and node choice."""

from __future__ import annotations

from types import SimpleNamespace

from actorcore.scheduler import LocalView, SpillConfig, SpillPolicy
from actorcore.scheduler import _resources as R
from actorcore.scheduler import placer_msgs as M

from actorcore._cluster_route import AFFINITY, AFFINITY_SOFT, LOCAL, route, split_affinity
from actorcore._cluster_work import ClusterWork

A, B, C = b"a" * 8, b"b" * 8, b"c" * 8


def _work(total_a: dict[str, float], live: dict[bytes, dict], loads=None) -> ClusterWork:
    daemon = SimpleNamespace(node_id=A, total=total_a)
    table = SimpleNamespace(live={n: {"resources": r} for n, r in live.items()})
    membership = SimpleNamespace(table=table, loads=loads or {})
    return ClusterWork(daemon, membership)


def test_split_affinity():
    assert split_affinity({"CPU": 1.0}) == ({"CPU": 1.0}, None, False)
    assert split_affinity({"CPU": 1.0, AFFINITY + B.hex(): 1.0}) == ({"CPU": 1.0}, B, False)
    assert split_affinity({AFFINITY_SOFT + C.hex(): 1.0}) == ({}, C, True)


def _route(shape, avail=None, qlen=0, args=None, cfg=None):
    view = LocalView(A, {"CPU": 2.0, "memory": 1e9}, avail, qlen, 0.0)
    live = {A: {}, B: {}, C: {}}
    return route(shape, view, live, SpillPolicy(cfg), 1.0, args)


def test_route_local_first():
    assert _route({"CPU": 1.0}) == LOCAL  # free now: no round trip
    assert _route({"CPU": 1.0, "memory": 5.0}) == LOCAL  # (memory is not scheduled)
    assert _route({"CPU": 1.0}, avail={"CPU": 0.0}) == ({"CPU": 1.0}, M.DEFAULT)  # busy: spill
    assert _route({"CPU": 4.0}) == ({"CPU": 4.0}, M.DEFAULT)  # never here
    assert _route({"gpu_b": 1.0}) == ({"gpu_b": 1.0}, M.DEFAULT)
    # tunable: a short queue stays here
    cfg = SpillConfig(queue_per_cpu=2.0, max_wait_s=10.0)
    assert _route({"CPU": 1.0}, avail={"CPU": 0.0}, qlen=1, cfg=cfg) == LOCAL
    assert _route({"CPU": 1.0}, avail={"CPU": 0.0}, qlen=4, cfg=cfg) == ({"CPU": 1.0}, M.DEFAULT)


def test_route_placed_work_stays():
    assert _route({"CPU": 4.0, R.PLACED_KEY: 0.001}) == LOCAL


def test_route_strategies():
    assert _route({"CPU": 1.0, R.SPREAD_KEY: 0.001}) == ({"CPU": 1.0}, M.SPREAD)
    assert _route({AFFINITY + B.hex(): 1.0}) == B  # hard, live: straight there
    assert _route({AFFINITY + A.hex(): 1.0}) == LOCAL
    assert _route({AFFINITY + (b"d" * 8).hex(): 1.0}) == LOCAL  # dead: the node refuses it
    soft_b = {"CPU": 1.0, AFFINITY_SOFT + B.hex(): 0.001}
    assert _route(soft_b) == ({"CPU": 1.0}, M.NodeAffinity(B, True))
    soft_a = {"CPU": 1.0, AFFINITY_SOFT + A.hex(): 0.001}
    assert _route(soft_a) == LOCAL  # its node, with room now
    assert _route(soft_a, avail={"CPU": 0.0}) == ({"CPU": 1.0}, M.NodeAffinity(A, True))


def test_route_locality():
    big = 100 << 20
    assert _route({"CPU": 1.0}, args={B: big}) == ({"CPU": 1.0}, M.DEFAULT)
    assert _route({"CPU": 1.0}, args={A: big, B: big}) == LOCAL  # here as much
    assert _route({"CPU": 1.0}, args={B: 1000}) == LOCAL  # small: not worth a hop


def test_forwarded_actors_are_forgotten_when_killed():
    w = _work({"CPU": 2}, {A: {"CPU": 2}, B: {"x": 1}})
    w.forwarded = {b"owner": {b"act1": B, b"act2": B}}
    w._owner_of = {b"act1": b"owner", b"act2": b"owner"}
    w.forget(b"act1")
    assert w.forwarded == {b"owner": {b"act2": B}}
    w.forget(b"act2")
    w.forget(b"unknown")
    assert w.forwarded == {} and w._owner_of == {}


def test_work_queued_here_past_max_wait_is_withdrawn_and_spilled():
    from collections import deque

    from actorcore import _protocol as P
    from actorcore._node import _events as NE

    leases = deque()
    applied, spawned = [], []
    cfg = SimpleNamespace(spill_queue_per_cpu=2.0, spill_max_wait_s=0.5)
    daemon = SimpleNamespace(
        node_id=A,
        total={"CPU": 1.0},
        config=cfg,
        sched=SimpleNamespace(leases=leases, available={"CPU": 1.0}),
        apply=applied.append,
        spawn=lambda coro: spawned.append(coro) or coro.close(),
    )
    w = ClusterWork(daemon, SimpleNamespace(table=SimpleNamespace(live={}), loads={}))
    w.placer = object()
    peer = object()
    queued = P.RequestLeaseMsg(7, {"CPU": 1.0})
    leases.append(SimpleNamespace(key=(peer, 7)))
    w._track(peer, queued, [])
    placed = P.RequestLeaseMsg(8, {"CPU": 1.0, R.PLACED_KEY: 0.001})
    leases.append(SimpleNamespace(key=(peer, 8)))
    w._track(peer, placed, [])  # the placer sent it here: it stays
    granted = P.RequestLeaseMsg(9, {"CPU": 1.0})
    w._track(peer, granted, [])  # not queued (started at once): nothing to watch
    assert list(w._queued) == [(peer, 7)]
    since = w._queued[(peer, 7)][-1]
    w.requeue(since + 0.1)
    assert applied == [] and spawned == []  # not waited long enough
    w.requeue(since + 0.6)
    assert applied == [] and spawned == []  # its CPU is free: it waits for a worker to start
    daemon.sched.available = {"CPU": 0.0}
    w.requeue(since + 0.6)
    assert applied == [NE.LeaseWithdrawn((peer, 7))] and len(spawned) == 1
    assert w._queued == {}
