"""Where work the local node cannot take goes (no sockets): affinity keys and node choice."""

from __future__ import annotations

from types import SimpleNamespace

from actorcore._cluster_work import AFFINITY, AFFINITY_SOFT, ClusterWork, pick_node, split_affinity

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


def test_pick_node_prefers_a_node_with_room():
    live = {A: {"resources": {"CPU": 2}}, B: {"resources": {"x": 1}}, C: {"resources": {"x": 2}}}
    assert pick_node({"x": 1}, live, {}, A) == B
    assert pick_node({"x": 1}, live, {B: {"x": 0}, C: {"x": 2}}, A) == C
    assert pick_node({"x": 3}, live, {}, A) is None
    assert pick_node({"CPU": 1}, live, {}, A) is None  # only the excluded node has it


def test_target_for():
    live = {A: {"CPU": 2}, B: {"CPU": 1, "gpu_b": 1}, C: {"CPU": 1}}
    w = _work({"CPU": 2}, live)
    assert w.target_for({"CPU": 1}) is None
    assert w.target_for({"CPU": 1, "gpu_b": 1}) == B
    assert w.target_for({"CPU": 1, AFFINITY + C.hex(): 1}) == C
    assert w.target_for({"CPU": 1, AFFINITY + A.hex(): 1}) is None
    # soft: to the node if it fits, else anywhere that fits
    assert w.target_for({"CPU": 1, AFFINITY_SOFT + C.hex(): 1}) == C
    assert w.target_for({"gpu_b": 1, AFFINITY_SOFT + C.hex(): 1}) == B
    assert w.target_for({"CPU": 1, AFFINITY_SOFT + (b"d" * 8).hex(): 1}) is None
    # hard, to a node that is not alive: left to the local node, which refuses it
    assert w.target_for({"CPU": 1, AFFINITY + (b"d" * 8).hex(): 1}) is None
    assert w.target_for({"nowhere": 1}) is None  # infeasible everywhere: waits here, warned


def test_forwarded_actors_are_forgotten_when_killed():
    w = _work({"CPU": 2}, {A: {"CPU": 2}, B: {"x": 1}})
    w.forwarded = {b"owner": {b"act1": B, b"act2": B}}
    w._owner_of = {b"act1": b"owner", b"act2": b"owner"}
    w.forget(b"act1")
    assert w.forwarded == {b"owner": {b"act2": B}}
    w.forget(b"act2")
    w.forget(b"unknown")
    assert w.forwarded == {} and w._owner_of == {}
