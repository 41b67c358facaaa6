"""The node state as one sans-IO machine: events in, the daemon's instructions out.

No daemon, no sockets: each test drives ``NodeState.handle`` and checks that
only external instructions come out (what the scheduler and the actor
lifecycle ask of each other is routed inside), and that the state stays
consistent (``validate``).
"""

import pytest

from actorcore import _node as N
from actorcore import scheduler as S
from actorcore import store as ST

ME = b"\x0a" * 16
OTHER = b"\x0b" * 16
OWNER = b"owner-process"
W1, W2, W3 = b"w1", b"w2", b"w3"


def node(cpus=2.0, **kw):
    me = N.NodeInfo(ME, "127.0.0.1", 1, {"CPU": cpus, "GPU": 1.0})
    kw.setdefault("capacity", 1 << 20)
    return N.NodeState(me, **kw)


def of(instrs, kind):
    return [i for i in instrs if isinstance(i, kind)]


def run(st, *events):
    out = []
    for ev in events:
        out += st.handle(ev)
        st.validate()
    return out


def started(st, *wids):
    return run(st, *(N.WorkerStarted(w) for w in wids))


INTERNAL = (S.HostActor, S.PlacementGroupReady, S.Infeasible)


def assert_external(out):
    """Nothing the machines say to each other leaks to the daemon."""
    from actorcore._node import _lifecycle as L

    inner = (*INTERNAL, L.Place, L.Host, L.Unhost, L.Removed, L.Notify)
    assert not [i for i in out if isinstance(i, inner)], out


def actor(aid=b"A", shape=None, max_restarts=0, name=None):
    return N.ActorInfo(
        actor_id=aid,
        class_name="C",
        spec={"k": 1},
        owner=OWNER,
        shape=dict(shape or {}),
        name=name,
        max_restarts=max_restarts,
    )


# --- leases -------------------------------------------------------------------------------


def test_lease_granted_once_a_worker_starts_and_returned():
    st = node()
    out = run(st, N.NodeStarted(0.0))
    assert of(out, S.StartWorker) == [S.StartWorker(1)]
    assert st.nodes()[0].alive is True
    out = run(st, N.LeaseRequested("k1", {"CPU": 1}, OWNER))
    assert not of(out, S.GrantLease)
    out = started(st, W1)
    assert of(out, S.GrantLease) == [S.GrantLease("k1", W1)]
    assert st.sched.available["CPU"] == 1.0
    # only the holder may give it back
    assert run(st, N.LeaseReturned(W1, b"someone else")) == []
    assert st.sched.available["CPU"] == 1.0
    run(st, N.LeaseReturned(W1, OWNER))
    assert st.sched.available["CPU"] == 2.0


def test_a_grant_that_cannot_be_delivered_frees_the_worker_for_the_next():
    st = node(cpus=1)
    started(st, W1)
    run(st, N.LeaseRequested("gone", {"CPU": 1}, b"p1"))
    out = run(st, N.LeaseRequested("next", {"CPU": 1}, b"p2"))
    assert of(out, S.RevokeLease) == [S.RevokeLease(W1, b"p1")]
    out = run(st, N.GrantFailed(W1))
    assert of(out, S.GrantLease) == [S.GrantLease("next", W1)]


def test_lease_returned_with_kill_stops_the_worker_and_its_death_frees_it():
    st = node()
    started(st, W1)
    run(st, N.LeaseRequested("k", {"CPU": 2}, OWNER))
    assert run(st, N.LeaseReturned(W1, OWNER, kill=True)) == [S.StopWorker(W1)]
    out = run(st, N.WorkerDied(W1, "killed"))
    assert st.sched.available["CPU"] == 2.0
    assert of(out, S.StartWorker)  # a replacement is kept warm


def test_process_gone_drops_its_requests_leases_actors_and_objects():
    st = node(cpus=1)
    started(st, W1)
    run(st, N.LeaseRequested("held", {"CPU": 1}, OWNER))
    run(st, N.LeaseRequested("queued", {"CPU": 1}, OWNER))
    st.store.create(b"o1", 100, OWNER, OWNER)
    out = run(st, N.ProcessGone(OWNER))
    assert S.StopWorker(W1) in out
    assert not st.sched.leases
    assert b"o1" not in st.store.entries
    assert st.sched.available["CPU"] == 1.0


# --- actors ---------------------------------------------------------------------------------


def test_actor_is_placed_started_and_callers_answered():
    st = node()
    started(st, W1)
    out = run(st, N.ActorWaited(("peer", 1), b"A", 0))
    assert of(out, N.Later)  # unknown yet: waits, with a deadline
    out = run(st, N.ActorCreated(actor(shape={"CPU": 1})))
    assert_external(out)
    assert of(out, N.StartActor) == [N.StartActor(b"A", W1, {"k": 1})]
    assert of(out, ST.DeleteFile) == []
    out = run(st, N.ActorConstructed(b"A", W1, ["h", 9]))
    assert of(out, N.Reply) == [N.Reply(("peer", 1), ["ALIVE", ["h", 9], 0, None])]
    out = run(st, N.ActorWaited(("peer", 2), b"A", 0))
    assert out == [N.Reply(("peer", 2), ["ALIVE", ["h", 9], 0, None])]
    assert st.actor_record(b"A").state == "ALIVE"


def test_actor_restarts_on_worker_death_on_a_new_worker():
    st = node()
    started(st, W1, W2)
    run(st, N.ActorCreated(actor(shape={"CPU": 1}, max_restarts=1)))
    run(st, N.ActorConstructed(b"A", W1, ["h", 1]))
    out = run(st, N.WorkerDied(W1, "its worker process died"))
    assert_external(out)
    assert of(out, N.StartActor) == [N.StartActor(b"A", W2, {"k": 1}, 1)]
    assert st.actors.actors[b"A"].phase is N.ActorPhase.RESTARTING
    # a caller that saw epoch 0 waits for the restarted actor
    assert run(st, N.ActorWaited("c", b"A", 1)) == []
    out = run(st, N.ActorConstructed(b"A", W2, ["h", 2]))
    assert of(out, N.Reply) == [N.Reply("c", ["ALIVE", ["h", 2], 1, None])]
    # out of restarts: the next death ends it
    run(st, N.WorkerDied(W2, "died again"))
    assert st.actors.actors[b"A"].phase is N.ActorPhase.DEAD
    assert run(st, N.ActorWaited("d", b"A", 0))[0].value[0] == "DEAD"


def test_killing_an_actor_on_a_dedicated_worker_stops_that_worker():
    st = node()
    started(st, W1)
    run(st, N.ActorCreated(actor(shape={"CPU": 1})))
    run(st, N.ActorConstructed(b"A", W1, ["h", 1]))
    out = run(st, N.ActorKilled(b"A", True))
    assert S.StopWorker(W1) in out
    assert not of(out, N.DropActor)  # the worker goes: nothing to drop


def test_light_actor_on_a_shared_worker_is_dropped_not_stopped():
    st = node()
    started(st, W1)
    run(st, N.ActorCreated(actor()))
    run(st, N.ActorConstructed(b"A", W1, ["h", 1]))
    out = run(st, N.ActorKilled(b"A", True))
    assert of(out, N.DropActor) == [N.DropActor(b"A", W1, "killed")]
    assert not of(out, S.StopWorker)


def test_unknown_actor_wait_expires():
    st = node()
    run(st, N.ActorWaited("w", b"nope", 0))
    out = run(st, N.UnknownActorExpired(b"nope"))
    assert out == [N.Reply("w", ["DEAD", None, 0, "no such actor on this node"])]


def test_infeasible_actor_warns_the_drivers():
    st = node()
    started(st, W1)
    out = run(st, N.ActorCreated(actor(shape={"GPU": 4})))
    assert [w.text for w in of(out, N.Warn)] and "GPU" in of(out, N.Warn)[0].text


# --- placement groups ---------------------------------------------------------------------------


def test_placement_group_reserve_and_remove_change_resources():
    st = node(cpus=4)
    started(st, W1, W2)
    assert run(st, N.GroupWaited("unknown", b"\x01")) == [N.Reply("unknown", False)]
    out = run(st, N.GroupCreated(b"\x01", [{"CPU": 1}, {"CPU": 2}]))
    assert_external(out)
    assert st.sched.available["CPU"] == 1.0
    assert st.sched.total["CPU_group_01"] == 3.0
    assert run(st, N.GroupWaited("late", b"\x01")) == [N.Reply("late", True)]
    inside = S.bundle_shape({"CPU": 1}, "01", 1)
    grant = of(run(st, N.LeaseRequested("in", inside, OWNER)), S.GrantLease)[0]
    out = run(st, N.GroupRemoved(b"\x01"))
    assert S.StopWorker(grant.worker_id) in out
    assert st.sched.available["CPU"] == 4.0
    assert not any("group" in k for k in st.sched.total)
    assert run(st, N.GroupWaited("after", b"\x01")) == [N.Reply("after", False)]


def test_placement_groups_return_resource_changes_not_mutations():
    pgs = S.PlacementGroups()
    pgs.create(b"\x02", [{"CPU": 2}], "PACK", "")
    total, avail = {"CPU": 4.0}, {"CPU": 4.0}
    out = pgs.reserve(total, avail)
    assert total == {"CPU": 4.0} and avail == {"CPU": 4.0}, "inputs are never changed"
    change = of(out, S.ResourceChange)[0]
    assert change.reserve == {"CPU": 2.0}
    assert change.offer["CPU_group_02"] == 2.0 and not change.withdraws
    back = pgs.remove(b"\x02")
    assert back.reserve == {"CPU": -2.0} and back.withdraws


def test_group_waiters_hear_when_it_is_reserved_or_removed():
    st = node(cpus=1)
    run(st, N.GroupCreated(b"\x03", [{"CPU": 1}]))  # no worker needed: reserved at once
    run(st, N.GroupCreated(b"\x04", [{"CPU": 1}]))  # does not fit now
    assert run(st, N.GroupWaited("w", b"\x04")) == []
    assert run(st, N.GroupWaited("w2", b"\x04")) == []
    out = run(st, N.GroupRemoved(b"\x03"))  # \x04 fits now
    assert of(out, N.Reply) == [N.Reply("w", True), N.Reply("w2", True)]
    run(st, N.GroupCreated(b"\x05", [{"CPU": 1}]))
    assert run(st, N.GroupWaited("w3", b"\x05")) == []
    assert run(st, N.GroupRemoved(b"\x05")) == [N.Reply("w3", False)]


# --- sealed-object waits --------------------------------------------------------------------------


def test_reader_waiting_for_a_seal_is_woken_by_the_seal():
    st = node()
    st.store.create(b"o", 64, b"writer", OWNER)
    assert st.store.wait_sealed(b"o", "reader")
    out = run(st, ST.Seal(b"o", b"meta", b"writer"))
    assert out == [ST.WakeReaders(b"o", ("reader",), None)]
    assert not st.store.wait_sealed(b"o", "late reader")  # sealed: no wait


def test_reader_waiting_for_a_seal_gets_an_error_when_the_writer_dies():
    st = node()
    st.store.create(b"o", 64, b"writer", OWNER)
    st.store.wait_sealed(b"o", "reader")
    out = run(st, N.ProcessGone(b"writer"))
    wake = of(out, ST.WakeReaders)
    assert len(wake) == 1 and wake[0].waiters == ("reader",)
    assert "died before sealing" in wake[0].error
    assert b"o" not in st.store.entries


def test_only_the_writer_may_seal_or_abort_and_only_the_owner_may_free():
    st = node()
    st.store.create(b"o", 64, b"writer", OWNER)
    out = run(st, ST.Seal(b"o", b"m", b"intruder"))
    assert of(out, ST.Refused) and st.store.entries[b"o"].state is ST.ObjectState.CREATED
    assert of(run(st, ST.Abort(b"o", b"intruder")), ST.Refused)
    assert b"o" in st.store.entries
    run(st, ST.Seal(b"o", b"m", b"writer"))
    out = run(st, ST.Free([b"o"], b"writer"))
    assert of(out, ST.Refused) == [out[0]] and "owner" in out[0].message
    assert b"o" in st.store.entries, "a refused free frees nothing"
    assert run(st, ST.Free([b"o"], OWNER)) == []
    assert b"o" not in st.store.entries


# --- node affinity and the node table ------------------------------------------------------------


def test_hard_affinity_to_this_node_runs_here():
    st = node()
    started(st, W1)
    shape = S.node_affinity_shape({"CPU": 1}, ME.hex())
    assert of(run(st, N.LeaseRequested("k", shape, OWNER)), S.GrantLease)


def test_hard_affinity_to_an_unknown_node_is_refused():
    st = node()
    started(st, W1)
    shape = S.node_affinity_shape({"CPU": 1}, "ff" * 16)
    with pytest.raises(ValueError, match="not a node of this cluster"):
        st.handle(N.LeaseRequested("k", shape, OWNER))
    with pytest.raises(ValueError, match="soft=True"):
        st.handle(N.ActorCreated(actor(shape=shape)))
    assert not st.sched.leases and b"A" not in st.actors.actors
    with pytest.raises(ValueError, match="hex"):
        S.node_affinity_shape({}, "not hex")


def test_node_table_follows_the_daemon_and_the_registry():
    st = node()
    assert [n.alive for n in st.nodes()] == [False]  # not serving yet
    run(st, N.NodeStarted(0.0))
    other = N.NodeInfo(OTHER, "10.0.0.2", 7, {"CPU": 8.0}, alive=True)
    run(st, N.NodesChanged((other,)))
    rows = [n.row() for n in st.nodes()]
    assert [(r["NodeID"], r["Alive"]) for r in rows] == [(ME.hex(), True), (OTHER.hex(), True)]
    dead = N.NodeInfo(OTHER, "10.0.0.2", 7, {"CPU": 8.0}, alive=False)
    run(st, N.NodesChanged((dead,)))
    with pytest.raises(ValueError, match="is dead"):
        st.handle(N.LeaseRequested("k", S.node_affinity_shape({}, OTHER.hex()), OWNER))
    run(st, N.NodeStopping())
    assert st.nodes()[0].alive is False


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        N.LeaseRequested("k", {"CPU": -1}, OWNER),
        N.LeaseRequested("k", {"CPU": "two"}, OWNER),
        N.GroupCreated(b"\x05", [], "PACK"),
        N.GroupCreated(b"\x05", [{"CPU": 1}], "NOPE"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(event):
    st = node()
    started(st, W1)
    with pytest.raises((ValueError, TypeError)):
        st.handle(event)
    assert not st.sched.leases and not st.sched.placement.groups
    st.validate()


def test_an_actor_created_twice_is_refused():
    st = node()
    run(st, N.ActorCreated(actor()))
    with pytest.raises(ValueError, match="exists already"):
        st.handle(N.ActorCreated(actor()))


def test_an_unknown_event_is_refused():
    with pytest.raises(TypeError):
        node().handle(object())
