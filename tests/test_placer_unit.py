"""The global placer as a state machine: events in, instructions out, no I/O."""

import pytest
from actorcore.scheduler import _placer_msgs as M
from actorcore.scheduler._placer import Placer, PlacerConfig

pytestmark = pytest.mark.timeout(30)


def of(instrs, kind):
    return [i for i in instrs if isinstance(i, kind)]


def placed(instrs):
    return {i.work_id: i.node_id for i in of(instrs, M.PlaceOn)}


def placer(*nodes, warm=True, **cfg):
    """nodes: (node_id, totals[, labels])."""
    p = Placer(PlacerConfig(**cfg))
    for n in nodes:
        p.handle(M.NodeJoined(*n))
    if warm:
        p.handle(M.Tick(p.config.warmup_s))
    return p


def report(p, node_id, seq, queue_len=0, **avail):
    return p.handle(M.LoadReport(node_id, avail, queue_len, 0.0, seq))


def spill(p, work_id, strategy=M.DEFAULT, args=None, **shape):
    out = p.handle(M.SpillRequest(work_id, shape or {"CPU": 1}, strategy, args or {}))
    p.validate()
    return out


def test_feasible_first():
    p = placer(("small", {"CPU": 4}), ("gpu", {"CPU": 4, "GPU": 2}))
    assert placed(spill(p, "w", CPU=1, GPU=1)) == {"w": "gpu"}
    assert placed(spill(p, "big", CPU=4, GPU=2)) == {"big": "gpu"}


def test_locality_by_bytes():
    p = placer(("a", {"CPU": 8}), ("b", {"CPU": 8}), ("c", {"CPU": 8}))
    out = spill(p, "w", args={"a": 10, "c": 100 << 20, "b": 5})
    assert placed(out) == {"w": "c"}


def test_locality_skipped_when_that_node_is_full():
    p = placer(("a", {"CPU": 2}), ("b", {"CPU": 2}))
    report(p, "a", 1, CPU=0)
    report(p, "b", 1, CPU=2)
    assert placed(spill(p, "w", args={"a": 100 << 20})) == {"w": "b"}


def test_least_loaded_follows_reports():
    p = placer(("a", {"CPU": 8}), ("b", {"CPU": 8}))
    report(p, "a", 1, CPU=1)
    report(p, "b", 1, CPU=6)
    assert placed(spill(p, "w")) == {"w": "b"}


def test_burst_is_spread_before_the_next_report():
    p = placer(("a", {"CPU": 4}), ("b", {"CPU": 4}), ("c", {"CPU": 4}))
    for n in "abc":
        report(p, n, 1, CPU=4)
    out = []
    for i in range(12):
        out += spill(p, i)
    counts = {}
    for nid in placed(out).values():
        counts[nid] = counts.get(nid, 0) + 1
    assert counts == {"a": 4, "b": 4, "c": 4}
    # the next report resets the placer's own accounting
    report(p, "a", 2, CPU=4)
    assert placed(spill(p, "next")) == {"next": "a"}


def test_when_all_are_full_the_shortest_queue_wins():
    p = placer(("a", {"CPU": 4}), ("b", {"CPU": 4}))
    report(p, "a", 1, queue_len=9, CPU=0)
    report(p, "b", 1, queue_len=2, CPU=0)
    assert placed(spill(p, "w")) == {"w": "b"}


def test_spread_round_robins_over_feasible_nodes():
    p = placer(("a", {"CPU": 8}), ("b", {"CPU": 8}), ("g", {"CPU": 8, "GPU": 1}), ("c", {"CPU": 8}))
    out = []
    for i in range(8):
        out += spill(p, i, strategy=M.SPREAD)
    assert list(placed(out).values()) == ["a", "b", "g", "c"] * 2
    out = spill(p, "gpu", strategy=M.SPREAD, CPU=1, GPU=1)
    assert placed(out) == {"gpu": "g"}


def test_hard_affinity_queues_on_a_busy_node_and_fails_on_a_dead_one():
    p = placer(("a", {"CPU": 1}), ("b", {"CPU": 8}))
    report(p, "a", 1, queue_len=5, CPU=0)
    assert placed(spill(p, "w", strategy=M.NodeAffinity("a"))) == {"w": "a"}
    p.handle(M.NodeDied("a"))
    out = spill(p, "x", strategy=M.NodeAffinity("a"))
    assert [f.work_id for f in of(out, M.WorkFailed)] == ["x"]
    assert "dead or unknown" in of(out, M.WorkFailed)[0].reason
    out = spill(p, "y", strategy=M.NodeAffinity("nope"))
    assert of(out, M.WorkFailed) and not of(out, M.PlaceOn)


def test_soft_affinity_runs_there_if_room_else_default():
    p = placer(("a", {"CPU": 2}), ("b", {"CPU": 8}))
    report(p, "a", 1, CPU=2)
    report(p, "b", 1, CPU=1)
    assert placed(spill(p, "w", strategy=M.NodeAffinity("a", soft=True))) == {"w": "a"}
    report(p, "a", 2, CPU=0)
    assert placed(spill(p, "x", strategy=M.NodeAffinity("a", soft=True))) == {"x": "b"}
    p.handle(M.NodeDied("a"))
    assert placed(spill(p, "y", strategy=M.NodeAffinity("a", soft=True))) == {"y": "b"}


def test_infeasible_waits_warns_once_and_runs_when_a_fitting_node_joins():
    p = placer(("a", {"CPU": 4}), ("b", {"CPU": 16}))
    out = spill(p, "w1", CPU=1, GPU=1)
    (warn,) = of(out, M.Infeasible)
    assert warn.missing == {"GPU": 1} and warn.largest_offer == {"CPU": 16.0}
    out = spill(p, "w2", CPU=2, GPU=1) + p.handle(M.Tick(10.0))
    assert not of(out, M.Infeasible) and not of(out, M.PlaceOn)
    assert sorted(p.held()) == ["w1", "w2"]
    out = p.handle(M.NodeJoined("g", {"CPU": 4, "GPU": 2}))
    assert placed(out) == {"w1": "g", "w2": "g"}
    assert p.held() == []
    p.validate()


def test_node_death_replaces_unacknowledged_work():
    p = placer(("a", {"CPU": 4}), ("b", {"CPU": 4}))
    out = spill(p, "w1") + spill(p, "w2")
    where = placed(out)
    assert sorted(where.values()) == ["a", "b"]
    p.handle(M.WorkAccepted("w1"))
    dead = where["w2"]
    out = p.handle(M.NodeDied(dead))
    alive = "a" if dead == "b" else "b"
    assert placed(out) == {"w2": alive}
    assert p.inflight() == {"w2": alive}
    p.validate()


def test_failover_placer_holds_requests_until_reports_arrive():
    p = Placer(PlacerConfig(warmup_s=1.0), now=100.0)  # a new placer: knows nothing
    assert spill(p, "w1") == [] and spill(p, "w2", CPU=2) == []
    assert sorted(p.held()) == ["w1", "w2"]
    assert p.handle(M.Tick(100.5)) == []  # no infeasible warning while warming up
    out = p.handle(M.LoadReport("a", {"CPU": 4}, 0, 0.0, 7, totals={"CPU": 4}))
    assert placed(out) == {"w1": "a", "w2": "a"}
    assert p.held() == []


def test_late_report_does_not_revive_a_dead_node():
    p = placer(("a", {"CPU": 4}), ("b", {"CPU": 4}))
    p.handle(M.NodeDied("a"))
    p.handle(M.LoadReport("a", {"CPU": 4}, 0, 0.0, 99, totals={"CPU": 4}))
    assert "a" not in p.view.nodes
    p.handle(M.NodeJoined("a", {"CPU": 4}))  # it came back for real
    assert "a" in p.view.nodes


def test_report_from_unknown_node_without_totals_is_ignored():
    p = Placer()
    assert p.handle(M.LoadReport("a", {"CPU": 4}, 0, 0.0, 1)) == []
    assert len(p.view) == 0


def test_stale_reports_are_ignored():
    p = placer(("a", {"CPU": 8}), ("b", {"CPU": 8}))
    report(p, "a", 5, CPU=8)
    report(p, "b", 5, CPU=4)
    report(p, "a", 4, CPU=0)  # older than what we have: ignored
    report(p, "a", 5, CPU=0)  # duplicate: ignored
    assert p.view.nodes["a"].free("CPU") == 8
    assert placed(spill(p, "w")) == {"w": "a"}


def test_rejected_work_is_placed_again():
    p = placer(("a", {"CPU": 4}))
    spill(p, "w")
    out = p.handle(M.WorkRejected("w"))
    assert placed(out) == {"w": "a"}


# --- placement groups -------------------------------------------------------------


def run_pg(p, pg_id, bundles, strategy, fail_node=None):
    """Request a group and answer every Prepare/Commit (fail_node refuses to prepare)."""
    out = p.handle(M.PlacementGroupRequest(pg_id, tuple(bundles), strategy))
    prepares = of(out, M.Prepare)
    replies = []
    for pr in prepares:
        ok = pr.node_id != fail_node
        replies += p.handle(M.PrepareReplied(pg_id, pr.node_id, pr.attempt, ok))
    for c in of(replies, M.Commit):
        replies += p.handle(M.CommitReplied(pg_id, c.node_id, c.attempt, True))
    p.validate()
    return out, prepares, replies


def four_nodes():
    p = placer(*[(n, {"CPU": 4}) for n in "abcd"])
    for n in "abcd":
        report(p, n, 1, CPU=4)
    return p


def ready(replies):
    (r,) = of(replies, M.PlacementGroupReady)
    return r.placement


def test_pg_pack_on_one_node_when_it_fits():
    p = four_nodes()
    _, prepares, replies = run_pg(p, b"g", [{"CPU": 2}, {"CPU": 2}], "PACK")
    assert len(prepares) == 1
    assert len(set(ready(replies))) == 1


def test_pg_pack_overflows_to_few_nodes():
    p = four_nodes()
    _, _, replies = run_pg(p, b"g", [{"CPU": 3}, {"CPU": 3}, {"CPU": 1}], "PACK")
    assert len(set(ready(replies))) == 2


def test_pg_strict_pack_needs_one_node():
    p = four_nodes()
    _, _, replies = run_pg(p, b"g", [{"CPU": 2}, {"CPU": 2}], "STRICT_PACK")
    assert len(set(ready(replies))) == 1
    out, prepares, _ = run_pg(p, b"h", [{"CPU": 3}, {"CPU": 3}], "STRICT_PACK")
    assert not prepares
    (w,) = of(out, M.Infeasible)
    assert w.missing == {"CPU": 6.0} and w.largest_offer == {"CPU": 4.0}


def test_pg_spread_uses_distinct_nodes_when_it_can():
    p = four_nodes()
    _, _, replies = run_pg(p, b"g", [{"CPU": 1}] * 4, "SPREAD")
    assert sorted(ready(replies)) == ["a", "b", "c", "d"]
    _, _, replies = run_pg(p, b"h", [{"CPU": 1}] * 6, "SPREAD")  # more bundles than nodes
    assert len(ready(replies)) == 6


def test_pg_strict_spread_and_infeasible_strict_spread():
    p = four_nodes()
    _, _, replies = run_pg(p, b"g", [{"CPU": 1}] * 3, "STRICT_SPREAD")
    assert len(set(ready(replies))) == 3
    out, prepares, _ = run_pg(p, b"h", [{"CPU": 1}] * 5, "STRICT_SPREAD")
    assert not prepares
    (w,) = of(out, M.Infeasible)
    assert w.work_id == b"h" and w.missing == {"nodes": 1.0}
    # a fifth node joins: the group is prepared there and on four others
    out = p.handle(M.NodeJoined("e", {"CPU": 4}))
    prepares = of(out, M.Prepare)
    assert sorted(pr.node_id for pr in prepares) == ["a", "b", "c", "d", "e"]


def test_pg_prepare_failure_releases_prepared_bundles_then_retries():
    p = four_nodes()
    out, prepares, replies = run_pg(p, b"g", [{"CPU": 1}] * 3, "STRICT_SPREAD", fail_node="b")
    asked = sorted(pr.node_id for pr in prepares)
    assert "b" in asked
    releases = of(replies, M.Release)
    assert sorted(r.node_id for r in releases) == sorted(n for n in asked if n != "b")
    assert all(r.pg_id == b"g" and len(r.indexes) == 1 for r in releases)
    assert not of(replies, M.Commit) and not of(replies, M.PlacementGroupReady)
    (retry,) = of(replies, M.RetryAt)
    out = p.handle(M.Tick(retry.when))
    assert len(of(out, M.Prepare)) == 3


def test_pg_prepare_timeout_releases():
    p = four_nodes()
    out = p.handle(M.PlacementGroupRequest(b"g", ({"CPU": 1}, {"CPU": 1}), "SPREAD"))
    first = of(out, M.Prepare)[0]
    p.handle(M.PrepareReplied(b"g", first.node_id, first.attempt, True))
    (deadline,) = of(out, M.RetryAt)
    out = p.handle(M.Tick(deadline.when))
    assert len(of(out, M.Release)) == 2  # a late prepare may still land: release both
    late = p.handle(M.PrepareReplied(b"g", first.node_id, first.attempt, True))
    assert late == []


def test_pg_remove_releases_everything_and_fails_waiting_work():
    p = four_nodes()
    _, _, replies = run_pg(p, b"g", [{"CPU": 1}] * 2, "STRICT_SPREAD")
    where = ready(replies)
    out = spill(p, "w", strategy=M.PlacementGroupTarget(b"g", 1))
    assert placed(out) == {"w": where[1]}
    out = p.handle(M.RemovePlacementGroup(b"g"))
    assert sorted(r.node_id for r in of(out, M.Release)) == sorted(where)
    assert not of(out, M.PlacementGroupFailed)
    out = spill(p, "x", strategy=M.PlacementGroupTarget(b"g", 0))
    assert of(out, M.WorkFailed)


def test_pg_work_waits_for_the_group_to_be_ready():
    p = four_nodes()
    out = p.handle(M.PlacementGroupRequest(b"g", ({"CPU": 1},), "PACK"))
    (pr,) = of(out, M.Prepare)
    assert spill(p, "w", strategy=M.PlacementGroupTarget(b"g", 0)) == []
    p.handle(M.PrepareReplied(b"g", pr.node_id, pr.attempt, True))
    out = p.handle(M.CommitReplied(b"g", pr.node_id, pr.attempt, True))
    assert of(out, M.PlacementGroupReady)
    assert placed(out) == {"w": pr.node_id}


def test_pg_bundles_on_a_dead_node_are_reported_and_placed_again():
    p = four_nodes()
    _, _, replies = run_pg(p, b"g", [{"CPU": 1}] * 3, "STRICT_SPREAD")
    where = ready(replies)
    out = p.handle(M.NodeDied(where[1]))
    (lost,) = of(out, M.BundlesLost)
    assert lost.indexes == (1,) and lost.node_id == where[1]
    (pr,) = of(out, M.Prepare)
    assert pr.node_id not in where and [i for i, _ in pr.bundles] == [1]
    p.handle(M.PrepareReplied(b"g", pr.node_id, pr.attempt, True))
    out = p.handle(M.CommitReplied(b"g", pr.node_id, pr.attempt, True))
    placement = ready(out)
    assert placement[0] == where[0] and placement[2] == where[2] and placement[1] == pr.node_id
    p.validate()


def test_pg_removed_before_ready_fails_its_waiters():
    p = placer(("a", {"CPU": 1}))
    run_pg(p, b"g", [{"GPU": 1}], "PACK")
    out = p.handle(M.RemovePlacementGroup(b"g"))
    assert of(out, M.PlacementGroupFailed)


def test_pg_bad_requests_fail():
    p = four_nodes()
    out = p.handle(M.PlacementGroupRequest(b"g", ({"CPU": 1},), "NOPE"))
    assert of(out, M.PlacementGroupFailed)
    out = p.handle(M.PlacementGroupRequest(b"h", (), "PACK"))
    assert of(out, M.PlacementGroupFailed)


def test_hold_when_full_waits_for_a_node_with_room_instead_of_a_busy_queue():
    p = placer(("a", {"CPU": 1}), ("b", {"CPU": 1}), hold_when_full=True)
    report(p, "a", 1, CPU=0)
    report(p, "b", 1, CPU=0)
    assert spill(p, "w") == []  # every node busy: held here, not queued behind one
    assert p.held() == ["w"]
    assert placed(report(p, "b", 2, CPU=1)) == {"w": "b"}  # the first with room gets it
    p.validate()
    # without it (the simulator's placer), work queues on the least loaded node
    q = placer(("a", {"CPU": 1}), ("b", {"CPU": 1}))
    report(q, "a", 1, CPU=0)
    report(q, "b", 1, CPU=0, queue_len=3)
    assert placed(spill(q, "w")) == {"w": "a"}
