"""Reference counting in one process's object table (no runtime, no sockets)."""

from actorcore._refcount import (
    ACTOR,
    ERROR,
    FAILED,
    READY,
    STORE,
    ActorOutOfScope,
    FreeStore,
    ObjectTable,
    ReleaseBorrow,
)

ME = (b"me", "127.0.0.1", 1)
OTHER = (b"other", "127.0.0.1", 2)


def owned(t, oid, kind=STORE, local=1):
    e = t.create_owned(oid, ME)
    e.local = local
    t.complete(e, kind, 100)
    return e


def test_owned_store_object_is_freed_when_the_last_ref_goes():
    t = ObjectTable(b"me")
    owned(t, b"x", local=2)
    assert t.remove_local([b"x"]) == []
    assert t.remove_local([b"x"]) == [FreeStore(b"x")]
    assert b"x" not in t.entries
    t.validate()


def test_pending_tasks_and_borrowers_keep_an_object_alive():
    t = ObjectTable(b"me")
    owned(t, b"x")
    t.add_submitted([b"x"])
    assert t.add_borrower(b"x", b"peer")
    assert t.remove_local([b"x"]) == []
    assert t.remove_submitted([b"x"]) == []
    assert t.remove_borrower([b"x"], b"peer") == [FreeStore(b"x")]
    t.validate()


def test_a_dead_borrower_releases_what_it_held():
    t = ObjectTable(b"me")
    owned(t, b"x", local=0)
    owned(t, b"y", local=1)
    t.add_borrower(b"x", b"peer")
    t.add_borrower(b"y", b"peer")
    assert t.peer_gone(b"peer") == [FreeStore(b"x")]
    assert b"y" in t.entries
    t.validate()


def test_borrowed_entry_tells_the_owner_when_released():
    t = ObjectTable(b"me")
    e = t.add_local(b"b", OTHER)
    assert not e.owned and not e.registered
    e.registered = True
    assert t.remove_local([b"b"]) == [ReleaseBorrow(b"b", OTHER)]


def test_unregistered_borrow_is_dropped_silently():
    t = ObjectTable(b"me")
    t.add_local(b"b", OTHER)
    assert t.remove_local([b"b"]) == []


def test_nested_refs_live_as_long_as_their_container():
    t = ObjectTable(b"me")
    owned(t, b"inner")
    owned(t, b"outer")
    t.set_nested(b"outer", [(b"inner", ME), (b"foreign", OTHER)], registered=True)
    assert t.remove_local([b"inner"]) == []  # still held by outer
    assert t.entries[b"foreign"].contained == 1
    out = t.remove_local([b"outer"])
    assert FreeStore(b"outer") in out and FreeStore(b"inner") in out
    assert ReleaseBorrow(b"foreign", OTHER) in out
    assert not t.entries
    t.validate()


def test_ten_thousand_nested_refs_count_down_together():
    t = ObjectTable(b"me")
    inner = [(b"i%d" % i, OTHER) for i in range(10_000)]
    owned(t, b"outer", kind=0)
    t.set_nested(b"outer", inner, registered=True)
    for oid, owner in inner:
        t.add_local(oid, owner)
    assert t.remove_local([oid for oid, _ in inner]) == []
    out = t.remove_local([b"outer"])
    assert len([i for i in out if isinstance(i, ReleaseBorrow)]) == 10_000


def test_dropping_an_owned_actor_handle_puts_the_actor_out_of_scope():
    t = ObjectTable(b"me")
    e = t.create_owned(b"actor", ME)
    e.local = 1
    t.complete(e, ACTOR, None)
    assert t.remove_local([b"actor"]) == [ActorOutOfScope(b"actor")]


def test_waiters_run_once_and_only_while_pending():
    t = ObjectTable(b"me")
    e = t.create_owned(b"x", ME)
    e.local = 1
    seen = []
    assert t.add_waiter(e, seen.append)
    waiters = t.complete(e, ERROR, RuntimeError("x"))
    assert waiters == [seen.append] and e.state == FAILED
    assert not t.add_waiter(e, seen.append)
    assert t.complete(e, STORE, 1) == []  # a second result is ignored
    t.reset(e)
    assert t.add_waiter(e, seen.append)
    t.complete(e, STORE, 5)
    assert e.state == READY and e.data == 5
