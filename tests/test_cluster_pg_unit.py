"""Placement groups across nodes, without sockets: a node's bundle holds (the
participant of the two-phase reservation), its scheduler's accounting, the
group records and the choice of a bundle's node; and the placer's two-phase
group table driven over several simulated participants."""

import pytest
from actorcore.scheduler import LocalScheduler, StopWorker, bundle_shape
from actorcore.scheduler import placer_msgs as M
from actorcore.scheduler._bundles import BundleHolds, HoldState
from actorcore.scheduler._placer import Placer, PlacerConfig

from actorcore._pg_records import GroupRecord, RecordState, marker_of, node_for

pytestmark = pytest.mark.timeout(30)

G = b"\x07" * 16
GX = G.hex()


# --- the participant -----------------------------------------------------------------


def test_prepare_holds_nothing_usable_until_commit():
    s = LocalScheduler({"CPU": 4})
    ok, _ = s.prepare_bundles(G, 1, [(0, {"CPU": 1}), (2, {"CPU": 2})], "coord")
    assert ok and s.available == {"CPU": 1.0}
    assert not any("_group_" in k for k in s.total)
    s.validate()
    ok, _ = s.commit_bundles(G, 1)
    assert ok
    assert s.available[f"CPU_group_0_{GX}"] == 1.0
    assert s.available[f"CPU_group_2_{GX}"] == 2.0
    assert s.available[f"CPU_group_{GX}"] == 3.0
    assert f"CPU_group_1_{GX}" not in s.available  # bundle 1 lives on another node
    s.validate()
    s.release_bundles(G)
    assert s.available == {"CPU": 4.0} and s.total == {"CPU": 4.0}
    s.validate()


def test_prepare_refuses_what_does_not_fit_now_and_holds_nothing():
    s = LocalScheduler({"CPU": 2})
    assert s.prepare_bundles(G, 1, [(0, {"CPU": 1})], "c")[0]
    assert not s.prepare_bundles(b"h" * 16, 1, [(0, {"CPU": 1}), (1, {"CPU": 1})], "c")[0]
    assert s.available == {"CPU": 1.0}
    assert not s.bundles.holds.keys() - {(G, 0)}
    s.validate()


def test_prepare_is_idempotent_per_attempt_and_commit_checks_the_attempt():
    s = LocalScheduler({"CPU": 2})
    assert s.prepare_bundles(G, 1, [(0, {"CPU": 1})], "c")[0]
    assert s.prepare_bundles(G, 1, [(0, {"CPU": 1})], "c")[0]  # a retried message
    assert s.available == {"CPU": 1.0}
    assert not s.prepare_bundles(G, 2, [(0, {"CPU": 1})], "c")[0]  # held for attempt 1
    assert not s.commit_bundles(G, 2)[0]
    assert s.commit_bundles(G, 1)[0]
    s.validate()


def test_release_of_a_committed_bundle_stops_the_work_in_it():
    s = LocalScheduler({"CPU": 2})
    s.prepare_bundles(G, 1, [(0, {"CPU": 1})], "c")
    s.commit_bundles(G, 1)
    s.worker_started(b"w1")
    out = s.request_lease("k", bundle_shape({"CPU": 1}, GX, 0), "owner")
    assert any(type(i).__name__ == "GrantLease" for i in out)
    out = s.release_bundles(G, [0])
    assert StopWorker(b"w1") in out
    assert s.available == {"CPU": 2.0}
    s.validate()


def test_a_dead_coordinators_prepared_bundles_are_released_committed_ones_stay():
    h = BundleHolds()
    assert h.prepare(G, 1, [(0, {"CPU": 1})], {"CPU": 4}, "dead") is not None
    assert h.prepare(b"k" * 16, 1, [(0, {"CPU": 1})], {"CPU": 4}, "dead") is not None
    h.commit(b"k" * 16, 1)
    changes = h.coordinator_gone("dead")
    assert [c.pg_id for c in changes] == [G]
    assert changes[0].reserve == {"CPU": -1.0} and changes[0].offer == {}
    assert [x.state for x in h.holds.values()] == [HoldState.COMMITTED]


def test_bad_bundles_are_refused_with_a_clear_error():
    with pytest.raises(ValueError):
        BundleHolds().prepare(G, 1, [(0, {"CPU": -1})], {"CPU": 4}, "c")
    with pytest.raises(ValueError, match="bad bundle"):
        BundleHolds().prepare(G, 1, [(0, {})], {"CPU": 4}, "c")


# --- records and routing ---------------------------------------------------------------


def test_record_round_trips_and_rows_name_each_bundles_node():
    rec = GroupRecord(G, ({"CPU": 1.0}, {"GPU": 1.0}), "SPREAD", "n", coordinator=b"a")
    rec = rec.placed((b"a", None), RecordState.RESCHEDULING)
    assert GroupRecord.from_bytes(rec.to_bytes()) == rec
    row = rec.row()
    assert row["bundles_to_node_id"] == [b"a".hex(), None]
    assert row["state"] == "RESCHEDULING" and row["bundles"] == [{"CPU": 1.0}, {"GPU": 1.0}]


def test_marker_names_the_group_and_bundle():
    assert marker_of(bundle_shape({"CPU": 1}, GX, 2)) == (G, 2)
    assert marker_of(bundle_shape({"CPU": 1}, GX, -1)) == (G, -1)
    assert marker_of({"CPU": 1}) is None


def test_any_bundle_prefers_this_node_then_one_with_room():
    rec = GroupRecord(G, ({"CPU": 1},) * 3, "SPREAD", nodes=(b"a", b"b", b"c"))
    shape = bundle_shape({"CPU": 1}, GX, -1)
    room = {f"CPU_group_{GX}": 1.0, f"bundle_group_{GX}": 1000.0}
    assert node_for(rec, -1, shape, b"b", {b"b": room}) == b"b"
    assert node_for(rec, -1, shape, b"b", {b"b": {}, b"c": room}) == b"c"
    assert node_for(rec, -1, shape, b"x", {}) == b"a"
    assert node_for(rec, 1, shape, b"x", {}) == b"b"
    pending = GroupRecord(G, ({"CPU": 1},), "PACK")
    assert node_for(pending, 0, shape, b"x", {}) is None


# --- the two-phase coordinator over simulated participants -----------------------------


class Nodes:
    """Participants: each node's scheduler answers the placer's instructions."""

    def __init__(self, placer: Placer, **cpus: float) -> None:
        self.p = placer
        self.s = {n: LocalScheduler({"CPU": c}) for n, c in cpus.items()}
        self.ready: dict[bytes, tuple] = {}
        self.refuse: set[str] = set()
        self.seq = 0
        for n, c in cpus.items():
            placer.handle(M.NodeJoined(n, {"CPU": c}))
        placer.handle(M.Tick(placer.config.warmup_s))

    def report(self, node_id: str) -> list:
        """A reply carries the node's resources after it (as PG_* replies do)."""
        self.seq += 1
        avail = {k: v for k, v in self.s[node_id].available.items() if "_group_" not in k}
        return [M.LoadReport(node_id, avail, 0, 0.0, self.seq)]

    def run(self, instrs: list) -> list:
        """Carry out instructions (replies fed back at once) until none is left."""
        seen = []
        while instrs:
            ins, instrs = instrs[0], instrs[1:]
            seen.append(ins)
            n = getattr(ins, "node_id", None)
            s = self.s.get(n)
            if isinstance(ins, M.Prepare):
                ok = (
                    n not in self.refuse
                    and s.prepare_bundles(ins.pg_id, ins.attempt, list(ins.bundles), "p")[0]
                )
                reply = M.PrepareReplied(ins.pg_id, n, ins.attempt, ok)
                instrs += self.p.handle(*self.report(n), reply)
            elif isinstance(ins, M.Commit):
                ok = s.commit_bundles(ins.pg_id, ins.attempt)[0]
                reply = M.CommitReplied(ins.pg_id, n, ins.attempt, ok)
                instrs += self.p.handle(*self.report(n), reply)
            elif isinstance(ins, M.Release):
                s.release_bundles(ins.pg_id, list(ins.indexes))
                instrs += self.p.handle(*self.report(n))
            elif isinstance(ins, M.PlacementGroupReady):
                self.ready[ins.pg_id] = ins.placement
        for sched in self.s.values():
            sched.validate()
        self.p.validate()
        return seen

    def free(self) -> dict:
        return {n: s.available.get("CPU", 0.0) for n, s in self.s.items()}


def test_a_refusal_releases_every_prepared_bundle_and_the_retry_places_it():
    p = Placer(PlacerConfig(warmup_s=0.0, retry_s=0.2))
    nodes = Nodes(p, a=1, b=1, c=1)
    nodes.refuse = {"c"}
    seen = nodes.run(p.handle(M.PlacementGroupRequest(G, ({"CPU": 1},) * 3, "STRICT_SPREAD")))
    assert any(isinstance(i, M.Release) for i in seen)
    assert nodes.free() == {"a": 1.0, "b": 1.0, "c": 1.0}  # nothing held after the abort
    assert G not in nodes.ready
    nodes.refuse = set()
    nodes.run(p.handle(M.Tick(1.0)))
    assert sorted(nodes.ready[G]) == ["a", "b", "c"]
    assert nodes.free() == {"a": 0.0, "b": 0.0, "c": 0.0}
    nodes.run(p.handle(M.RemovePlacementGroup(G)))
    assert nodes.free() == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert all("_group_" not in k for s in nodes.s.values() for k in s.total)


def test_a_participant_dying_between_the_phases_aborts_and_releases():
    p = Placer(PlacerConfig(warmup_s=0.0, retry_s=0.2))
    nodes = Nodes(p, a=1, b=1, c=1)
    out = p.handle(M.PlacementGroupRequest(G, ({"CPU": 1},) * 2, "STRICT_SPREAD"))
    prepares = [i for i in out if isinstance(i, M.Prepare)]
    first, second = prepares
    s = nodes.s[first.node_id]
    assert s.prepare_bundles(G, first.attempt, list(first.bundles), "p")[0]
    p.handle(M.PrepareReplied(G, first.node_id, first.attempt, True))
    out = p.handle(M.NodeDied(second.node_id))  # before it answered
    seen = nodes.run(out)
    released = [i for i in seen if isinstance(i, M.Release)]
    assert [r.node_id for r in released] == [first.node_id]
    assert G in nodes.ready  # placed again on the two nodes left
    assert second.node_id not in nodes.ready[G]


def test_an_adopted_group_keeps_its_live_bundles_and_places_the_lost_ones():
    p = Placer(PlacerConfig(warmup_s=0.0))
    nodes = Nodes(p, a=1, b=1, c=1)
    nodes.s["a"].prepare_bundles(G, 1, [(0, {"CPU": 1})], "dead")
    nodes.s["a"].commit_bundles(G, 1)
    nodes.run(nodes.report("a"))
    # bundle 1 lived on a node that died with the group's first coordinator
    seen = nodes.run(p.groups.adopt(G, ({"CPU": 1},) * 2, "SPREAD", {0: "a", 1: "gone"}))
    assert not [i for i in seen if isinstance(i, M.Prepare) and i.node_id == "a"]
    assert nodes.ready[G][0] == "a" and nodes.ready[G][1] in ("b", "c")
    whole = p.groups.adopt(b"w" * 16, ({"CPU": 1},), "PACK", {0: "b"})
    assert whole == [M.PlacementGroupReady(b"w" * 16, ("b",))]
    assert p.groups.adopt(G, ({"CPU": 1},), "PACK", {}) == []  # known already


# --- the coordinator's async shell, over in-process participants -----------------------


def _coordinator_run(cpus: dict, script, **cfg):
    """Run ``script(coord, nodes, ready)`` with a GroupCoordinator whose calls go to
    in-process LocalSchedulers (``nodes[n].refuse``/``.hang`` to misbehave)."""
    import asyncio

    from actorcore import _protocol as P
    from actorcore._pg_coordinator import GroupCoordinator, Outcomes

    class Node:
        def __init__(self, c):
            self.s = LocalScheduler({"CPU": c})
            self.refuse = False
            self.hang = False

    nodes = {n: Node(c) for n, c in cpus.items()}
    ready: dict = {}

    async def call(node_id, msg):
        n = nodes[node_id]
        if n.hang:
            await asyncio.sleep(3600)
        await asyncio.sleep(0)
        if isinstance(msg, P.PgPrepareMsg):
            ok = not n.refuse and n.s.prepare_bundles(msg.pg_id, msg.attempt, msg.bundles, "c")[0]
        elif isinstance(msg, P.PgCommitMsg):
            ok = n.s.commit_bundles(msg.pg_id, msg.attempt)[0]
        else:
            n.s.release_bundles(msg.pg_id, list(msg.indexes))
            return dict(n.s.available)
        return [ok, dict(n.s.available)]

    async def main():
        coord = GroupCoordinator(
            b"me",
            lambda: {},
            call,
            Outcomes(lambda g, p: ready.__setitem__(g, p), lambda *a: None, lambda *a: None),
            PlacerConfig(warmup_s=0.0, **cfg),
        )
        for n, c in cpus.items():
            coord.node_joined(n, {"CPU": c})
        try:
            await asyncio.wait_for(script(coord, nodes, ready), 20)
        finally:
            await coord.aclose()

    asyncio.run(main())


async def _until(cond):
    import asyncio

    while not cond():  # noqa: ASYNC110 (states of in-process schedulers, no event to wait on)
        await asyncio.sleep(0.01)  # polling a state, bounded by the caller's wait_for


def test_coordinator_retries_after_a_refusal_and_times_out_a_silent_node():
    async def script(coord, nodes, ready):
        nodes[b"c"].refuse = True
        coord.request(G, [{"CPU": 1}] * 3, "STRICT_SPREAD")
        await _until(lambda: all(n.s.available["CPU"] == 1.0 for n in nodes.values()))
        assert G not in ready
        nodes[b"c"].refuse = False  # the retry (a timer the placer asked for) places it
        await _until(lambda: G in ready)
        assert sorted(ready[G]) == [b"a", b"b", b"c"]
        # a node that never answers: the attempt times out, the others release
        coord.remove(G)
        await _until(lambda: all(n.s.available["CPU"] == 1.0 for n in nodes.values()))
        nodes[b"c"].hang = True
        h = b"h" * 16
        coord.request(h, [{"CPU": 1}] * 3, "STRICT_SPREAD")
        await _until(lambda: nodes[b"a"].s.available["CPU"] == 0.0)
        await _until(lambda: nodes[b"a"].s.available["CPU"] == 1.0)  # released after timeout
        assert h not in ready

    _coordinator_run({b"a": 1, b"b": 1, b"c": 1}, script, prepare_timeout_s=0.3, retry_s=0.05)


def test_coordinator_keeps_charges_while_calls_are_in_flight():
    async def script(coord, nodes, ready):
        for i in range(6):  # six one-CPU groups on two 3-CPU nodes, all asked at once
            coord.request(bytes([i]) * 16, [{"CPU": 1}], "PACK")
        await _until(lambda: len(ready) == 6)
        assert sum(n.s.available["CPU"] for n in nodes.values()) == 0.0
        for n in nodes.values():
            n.s.validate()

    _coordinator_run({b"a": 3, b"b": 3}, script)
