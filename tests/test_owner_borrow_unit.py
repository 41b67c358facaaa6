"""Borrowing between processes, played with one object table per process (no sockets).

Each process is an ObjectTable; what one table asks for (ReleaseBorrow) is
delivered to the owner's table by hand, as REMOVE_BORROWERS would be, and
ADD_BORROWER is the owner's ``add_borrower``.
"""

import pytest

from actorcore._refcount import INLINE, STORE, FreeStore, ObjectTable, ReleaseBorrow

pytestmark = pytest.mark.timeout(10)

A = (b"A", "h", 1)
B = (b"B", "h", 2)
C = (b"C", "h", 3)


class Cluster:
    def __init__(self):
        self.tables = {p[0]: ObjectTable(p[0]) for p in (A, B, C)}
        self.freed: list[bytes] = []

    def t(self, p):
        return self.tables[p[0]]

    def deliver(self, sender, instrs):
        """Carry out what ``sender``'s table asked for; frees are recorded."""
        for ins in instrs:
            if isinstance(ins, FreeStore):
                self.freed.append(ins.oid)
            elif isinstance(ins, ReleaseBorrow):
                owner = self.tables[ins.owner[0]]
                self.deliver(ins.owner, owner.remove_borrower([ins.oid], sender[0]))
        for t in self.tables.values():
            t.validate()

    def own(self, p, oid):
        e = self.t(p).create_owned(oid, p)
        e.local = 1
        self.t(p).complete(e, STORE, 10)

    def borrow(self, borrower, oid, owner):
        """``borrower`` unpickles a ref to ``oid`` and registers with its owner."""
        e = self.t(borrower).add_local(oid, owner)
        assert self.t(owner).add_borrower(oid, borrower[0])
        e.registered = True


def test_an_object_lent_to_a_task_outlives_the_owners_last_ref():
    w = Cluster()
    w.own(A, b"x")
    w.borrow(B, b"x", A)
    w.deliver(A, w.t(A).remove_local([b"x"]))
    assert w.freed == []  # B still holds it
    w.deliver(B, w.t(B).remove_local([b"x"]))
    assert w.freed == [b"x"]
    assert all(not t.entries for t in w.tables.values())


def test_a_borrower_that_passes_the_ref_on_keeps_the_object_for_the_next():
    w = Cluster()
    w.own(A, b"x")
    w.borrow(B, b"x", A)
    w.borrow(C, b"x", A)  # B passed it to C, who registered with the owner
    w.deliver(A, w.t(A).remove_local([b"x"]))
    w.deliver(B, w.t(B).remove_local([b"x"]))
    assert w.freed == []
    w.deliver(C, w.t(C).remove_local([b"x"]))
    assert w.freed == [b"x"]


def test_a_result_holding_the_workers_own_ref_is_lent_to_the_caller():
    w = Cluster()
    w.own(B, b"inner")  # the worker B made it, and returns it inside a result
    assert w.t(B).add_borrower(b"inner", A[0])  # lend_to: a local note at the owner
    w.deliver(B, w.t(B).remove_local([b"inner"]))  # the task ended; its local ref went
    assert w.freed == []
    # the caller A adopts the result, which holds the ref (registered by the producer)
    res = w.t(A).create_owned(b"result", A)
    res.local = 1
    w.t(A).complete(res, INLINE, b"")
    w.t(A).set_nested(b"result", [(b"inner", B)], registered=True)
    assert w.t(A).entries[b"inner"].contained == 1
    w.deliver(A, w.t(A).remove_local([b"result"]))
    assert w.freed == [b"inner"]
    assert all(not t.entries for t in w.tables.values())


def test_a_dead_borrower_lets_go_of_everything_it_borrowed():
    w = Cluster()
    w.own(A, b"x")
    w.own(A, b"y")
    w.borrow(B, b"x", A)
    w.borrow(B, b"y", A)
    w.deliver(A, w.t(A).remove_local([b"x", b"y"]))
    assert w.freed == []
    w.deliver(A, w.t(A).peer_gone(B[0]))
    assert sorted(w.freed) == [b"x", b"y"]


def test_a_borrow_that_arrives_after_the_free_is_refused():
    w = Cluster()
    w.own(A, b"x")
    w.deliver(A, w.t(A).remove_local([b"x"]))
    assert w.freed == [b"x"]
    assert not w.t(A).add_borrower(b"x", B[0])  # ADD_BORROWER answers ObjectLostError


def test_nested_borrowed_refs_are_released_with_their_container():
    w = Cluster()
    w.own(A, b"inner")
    w.borrow(B, b"inner", A)
    # B puts a list holding the ref: B owns the container, the inner ref is contained
    outer = w.t(B).create_owned(b"outer", B)
    outer.local = 1
    w.t(B).complete(outer, INLINE, b"")
    w.t(B).set_nested(b"outer", [(b"inner", A)], registered=True)
    w.deliver(B, w.t(B).remove_local([b"inner"]))  # B's own ref to inner goes
    w.deliver(A, w.t(A).remove_local([b"inner"]))
    assert w.freed == []  # still inside B's container
    w.deliver(B, w.t(B).remove_local([b"outer"]))
    assert w.freed == [b"inner"]


# --- the object core: handle(events) -> instructions, several processes by hand -------------

import threading  # noqa: E402

from actorcore._owner import _object_events as OE  # noqa: E402
from actorcore._owner._objects import ObjectCore  # noqa: E402
from actorcore._refcount import ERROR, FAILED, PENDING, READY  # noqa: E402
from actorcore.errors import ObjectLostError  # noqa: E402


class Procs:
    """One ObjectCore per process; the shells' messages are delivered by hand.

    ``run`` carries an instruction list out the way the shell and the owner's
    RPC handlers would, except that sends are queued in ``self.wire`` until
    ``deliver()`` (so tests can look at what is in flight).
    """

    def __init__(self):
        self.cores = {p[0]: ObjectCore(p[0], p) for p in (A, B, C)}
        self.freed: list[tuple[bytes, bytes]] = []
        self.wire: list[tuple] = []
        self.woken: list[tuple] = []
        self.gone: list[bytes] = []

    def c(self, p):
        return self.cores[p[0]]

    def feed(self, p, *events):
        out = self.c(p).handle(list(events), 0.0)
        self.run(p, out)
        for core in self.cores.values():
            core.validate()
        return out

    def run(self, p, out):
        for ins in out:
            t = type(ins)
            if t is OE.FreeStore:
                self.freed.append((p[0], ins.oid))
            elif t is OE.ActorOutOfScope:
                self.gone.append(ins.actor_id)
            elif t is OE.Wake:
                for cb in ins.waiters:
                    cb(ins.entry)
            elif t is OE.Answer:
                ins.fn(ins.value)
            elif t is OE.SetEvent:
                ins.event.set()
            else:  # SendAddBorrower, ReleaseBorrow, FetchValue: messages
                self.wire.append((p, ins))

    def deliver(self):
        """Deliver every message in flight, and the answers they cause, until quiet."""
        while self.wire:
            sender, ins = self.wire.pop(0)
            t = type(ins)
            if t is OE.ReleaseBorrow:
                self.feed(ins.owner, OE.BorrowersRemoved([ins.oid], sender[0]))
            elif t is OE.SendAddBorrower:
                self.feed(
                    ins.owner,
                    OE.BorrowerAdded(
                        ins.oid,
                        ins.borrower[0],
                        lambda _ok, s=sender, tok=ins.token: self.feed(s, OE.BorrowAcked(tok)),
                    ),
                )
            elif t is OE.FetchValue:

                def answer(e, s=sender, oid=ins.oid):
                    if e is None:
                        reply = ObjectLostError("gone")
                    else:
                        reply = [e.kind, e.data, None, sorted(e.locations or ())]
                    self.feed(s, OE.Fetched(oid, reply))

                self.feed(ins.owner, OE.ValueRequested(ins.oid, answer))

    def put(self, p, oid, kind=STORE, data=10, node=b"n1"):
        self.feed(p, OE.ValueOwned(oid, kind, data, node_id=node if kind == STORE else None))

    def unpickle(self, p, oid, owner, container=None):
        """``p`` unpickles a ref to ``oid``: a RefAdded, then the borrow registration."""
        done = threading.Event()
        self.feed(p, OE.RefAdded(oid, owner), OE.RegisterBorrows([(oid, owner)], container, done))
        return done


def test_core_a_borrow_registration_pins_the_container_until_the_owner_acknowledged():
    w = Procs()
    w.put(A, b"x")
    w.put(B, b"box", INLINE, b"")  # B's own object whose value held a ref to x
    done = w.unpickle(B, b"x", A, container=b"box")
    assert not done.is_set()
    assert [type(i) for _p, i in w.wire] == [OE.SendAddBorrower]
    assert w.c(B).table.entries[b"box"].submitted == 1  # pinned while in flight
    w.feed(B, OE.RefsDropped([b"box"]))
    assert b"box" in w.c(B).table.entries
    w.deliver()
    assert done.is_set()
    assert b"box" not in w.c(B).table.entries  # unpinned, and nobody holds it
    assert w.c(A).table.entries[b"x"].borrowers == {B[0]}


def test_core_a_ref_registered_already_needs_no_message():
    w = Procs()
    w.put(A, b"x")
    w.unpickle(B, b"x", A)
    w.deliver()
    again = w.unpickle(B, b"x", A)
    assert again.is_set() and w.wire == []
    assert w.c(B).table.entries[b"x"].local == 2


def test_core_the_owner_frees_only_after_the_last_borrower_let_go():
    w = Procs()
    w.put(A, b"x")
    w.unpickle(B, b"x", A)
    w.unpickle(C, b"x", A)
    w.deliver()
    w.feed(A, OE.RefsDropped([b"x"]))
    w.feed(B, OE.RefsDropped([b"x"]))
    w.deliver()
    assert w.freed == []
    w.feed(C, OE.RefsDropped([b"x"]))
    w.deliver()
    assert w.freed == [(A[0], b"x")]
    assert all(not core.table.entries for core in w.cores.values())


def test_core_a_borrow_that_comes_after_the_free_is_refused_and_still_acknowledged():
    w = Procs()
    w.put(A, b"x")
    done = w.unpickle(B, b"x", A)
    w.feed(A, OE.RefsDropped([b"x"]))  # the owner's last ref goes while the ADD is in flight
    answers = []
    w.feed(A, OE.BorrowerAdded(b"x", C[0], answers.append))
    assert answers == [False]
    w.deliver()
    assert done.is_set()  # a refused registration does not leave the borrower waiting


def test_core_a_dead_borrower_releases_everything():
    w = Procs()
    w.put(A, b"x")
    w.put(A, b"y")
    w.unpickle(B, b"x", A)
    w.unpickle(B, b"y", A)
    w.deliver()
    w.feed(A, OE.RefsDropped([b"x", b"y"]))
    assert w.freed == []
    w.feed(A, OE.BorrowerGone(B[0]))
    assert sorted(o for _p, o in w.freed) == [b"x", b"y"]


def test_core_watching_a_borrowed_value_fetches_it_once_and_wakes_every_waiter():
    w = Procs()
    w.feed(A, OE.ObjectsCreated([b"r"], []))  # a task's result, pending at its owner
    w.unpickle(B, b"r", A)
    w.deliver()
    seen = []
    w.feed(B, OE.Watch([(b"r", A)], lambda e: seen.append(("1", e.state))))
    w.feed(B, OE.Watch([(b"r", A)], lambda e: seen.append(("2", e.state))))
    assert [type(i) for _p, i in w.wire] == [OE.FetchValue]  # one fetch for both
    w.deliver()
    assert seen == []  # the owner answers once the value is there
    w.feed(A, OE.ResultArrived(b"r", STORE, 5, None, b"n1"))
    w.deliver()
    assert seen == [("1", READY), ("2", READY)]
    e = w.c(B).table.entries[b"r"]
    assert (e.kind, e.data, e.locations) == (STORE, 5, {b"n1"})


def test_core_a_value_the_owner_cannot_give_fails_with_object_lost():
    w = Procs()
    w.feed(B, OE.RefAdded(b"z", A))  # a ref to an object A never had
    seen = []
    w.feed(B, OE.Watch([(b"z", A)], seen.append))
    w.deliver()
    assert len(seen) == 1 and seen[0].state == FAILED
    assert isinstance(seen[0].data, ObjectLostError)


def test_core_waiters_come_out_as_instructions_never_run_inside_handle():
    core = ObjectCore(A[0], A)
    core.handle([OE.ObjectsCreated([b"r"], [])])
    ran = []
    out = core.handle([OE.Watch([(b"r", A)], ran.append)])
    assert out == [] and ran == []
    out = core.handle([OE.ResultArrived(b"r", INLINE, b"v", None)])
    assert ran == []  # only described
    (wake,) = out
    assert type(wake) is OE.Wake and wake.entry.state == READY
    # a value already there: the waiter is an instruction at once
    out = core.handle([OE.Watch([(b"r", A)], ran.append)])
    assert [type(i) for i in out] == [OE.Wake]


def test_core_unwatch_forgets_the_waiter():
    core = ObjectCore(A[0], A)
    ran = []
    core.handle([OE.ObjectsCreated([b"r"], []), OE.Watch([(b"r", A)], ran.append)])
    core.handle([OE.Unwatch([b"r"], ran.append)])
    assert core.handle([OE.ObjectsFailed([b"r"], ValueError("x"))]) == []


def test_core_an_unknown_object_of_our_own_fails_at_once_without_an_entry():
    core = ObjectCore(A[0], A)
    (wake,) = core.handle([OE.Watch([(b"old", A)], lambda e: None)])
    assert wake.entry.state == FAILED and isinstance(wake.entry.data, ObjectLostError)
    assert core.table.entries == {}


def test_core_a_put_sealed_after_every_ref_died_frees_its_copy():
    core = ObjectCore(A[0], A)
    out = core.handle(
        [
            OE.ValueOwned(b"p", None, None, node_id=b"n1"),  # a background put: pending
            OE.RefsDropped([b"p"]),
            OE.ValueSet(b"p", STORE, 100),
        ]
    )
    assert out == [OE.FreeStore(b"p")]


def test_core_lending_own_refs_is_a_local_note_and_foreign_ones_ask_their_owner():
    w = Procs()
    w.put(A, b"foreign")
    w.unpickle(B, b"foreign", A)
    w.put(B, b"mine")
    w.deliver()
    done = threading.Event()
    w.feed(B, OE.LendRefs([(b"mine", B), (b"foreign", A)], C, done))
    assert w.c(B).table.entries[b"mine"].borrowers == {C[0]}
    assert [(i.owner, i.borrower) for _p, i in w.wire] == [(A, C)]
    assert not done.is_set()
    w.deliver()
    assert done.is_set()
    assert w.c(A).table.entries[b"foreign"].borrowers == {B[0], C[0]}


def test_core_a_result_holding_the_callers_own_ref_drops_the_extra_registration():
    w = Procs()
    w.put(A, b"inner")
    w.feed(A, OE.ObjectsCreated([b"res"], []))
    # the worker B lent A's own ref back to A: A's table notes A as a borrower of itself
    w.feed(A, OE.BorrowerAdded(b"inner", A[0]))
    w.feed(A, OE.ResultArrived(b"res", INLINE, b"", [[b"inner", list(A)]]))
    inner = w.c(A).table.entries[b"inner"]
    assert inner.borrowers == set() and inner.contained == 1
    w.feed(A, OE.RefsDropped([b"inner"]))
    assert w.freed == []  # the result still holds it
    w.feed(A, OE.RefsDropped([b"res"]))
    assert w.freed == [(A[0], b"inner")]


def test_core_a_result_nobody_wants_is_freed_and_releases_what_it_holds():
    w = Procs()
    w.put(A, b"x")
    w.unpickle(B, b"x", A)
    w.deliver()
    # B gets a result for an object it dropped already, holding a ref to x registered for it
    w.feed(B, OE.ResultArrived(b"late", STORE, 7, [[b"x", list(A)]], b"n1"))
    assert (B[0], b"late") in w.freed
    w.feed(B, OE.RefsDropped([b"x"]))
    w.feed(A, OE.RefsDropped([b"x"]))
    w.deliver()
    assert (A[0], b"x") in w.freed


def test_core_discarded_results_let_go_of_their_nested_refs():
    w = Procs()
    w.put(A, b"x")
    w.unpickle(C, b"x", A)
    w.deliver()
    w.feed(C, OE.ResultsDiscarded([[[b"x", list(A)]]]))  # a retried attempt's result held x
    assert w.c(C).table.entries[b"x"].contained == 0
    w.feed(A, OE.RefsDropped([b"x"]))
    w.feed(C, OE.RefsDropped([b"x"]))
    w.deliver()
    assert w.freed == [(A[0], b"x")] and not w.c(C).table.entries


def test_core_failed_objects_wake_with_the_error_and_release_held_args():
    w = Procs()
    w.put(A, b"arg")
    w.feed(A, OE.ObjectsCreated([b"r"], [b"arg"]))
    seen = []
    w.feed(A, OE.Watch([(b"r", A)], seen.append))
    w.feed(A, OE.RefsDropped([b"arg"]))
    assert w.freed == []  # the pending task holds its argument
    w.feed(A, OE.ObjectsFailed([b"r"], ValueError("boom")), OE.HeldReleased([b"arg"]))
    assert seen[0].state == FAILED and seen[0].kind == ERROR
    assert w.freed == [(A[0], b"arg")]


def test_core_a_value_requested_before_it_exists_is_answered_when_it_does():
    core = ObjectCore(A[0], A)
    got = []
    core.handle([OE.ObjectsCreated([b"r"], [])])
    assert core.handle([OE.ValueRequested(b"r", got.append)]) == []
    (wake,) = core.handle([OE.ResultArrived(b"r", INLINE, b"v", None)])
    wake.waiters[0](wake.entry)
    assert got[0].data == b"v"
    (ans,) = core.handle([OE.ValueRequested(b"nope", got.append)])
    assert type(ans) is OE.Answer and ans.value is None


def test_core_locations_and_node_death():
    core = ObjectCore(A[0], A)
    core.handle([OE.ValueOwned(b"s", STORE, 3, node_id=b"n1")])
    core.handle([OE.LocationAdded(b"s", b"n2")])
    (ans,) = core.handle([OE.NodeGone(b"n1", lambda v: None)])
    assert ans.value == []
    (ans,) = core.handle([OE.NodeGone(b"n2", lambda v: None)])
    assert ans.value == [b"s"]
    # a borrowed entry learns of a copy pulled here only with any_entry
    core.handle([OE.RefAdded(b"b", B), OE.LocationAdded(b"b", b"n3")])
    assert core.table.entries[b"b"].locations is None
    core.handle([OE.LocationAdded(b"b", b"n3", any_entry=True)])
    assert core.table.entries[b"b"].locations == {b"n3"}


def test_core_an_actor_entry_counts_handles_and_goes_out_of_scope():
    w = Procs()
    from actorcore._refcount import ACTOR

    w.feed(A, OE.ValueOwned(b"act", ACTOR, None, held=[], local=0))
    w.feed(A, OE.RefAdded(b"act", A))
    w.unpickle(B, b"act", A)  # a handle passed to B
    w.deliver()
    w.feed(A, OE.RefsDropped([b"act"]))
    assert w.gone == []
    w.feed(B, OE.RefsDropped([b"act"]))
    w.deliver()
    assert w.gone == [b"act"]


def test_core_values_are_published_kind_and_data_before_state():
    core = ObjectCore(A[0], A)
    core.handle([OE.ObjectsCreated([b"r"], [])])
    e = core.table.entries[b"r"]
    assert e.state == PENDING
    order = []

    class Spy(type(e)):
        __slots__ = ()

        def __setattr__(self, name, value):
            order.append(name)
            super().__setattr__(name, value)

    e.__class__ = Spy
    core.handle([OE.ResultArrived(b"r", INLINE, b"v", None)])
    assert order.index("state") > max(order.index("kind"), order.index("data"))


def test_core_bare_count_events_mean_the_same_as_the_classes():
    core = ObjectCore(A[0], A)
    core.handle([OE.ValueOwned(b"x", INLINE, b"v")])
    core.handle([(b"x", A), OE.RefsAdded([(b"x", A), (b"y", B)])])  # one bare RefAdded
    assert core.table.entries[b"x"].local == 3 and core.table.entries[b"y"].local == 1
    assert core.handle([b"x", b"x"]) == []  # two bare drops
    assert core.handle([b"x"]) == [] and b"x" not in core.table.entries  # inline: no free
    core.handle([b"y"])
    assert core.table.entries == {}
