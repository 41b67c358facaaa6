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
