"""The embedded store's sans-IO core, driven directly: no event loop, no clock."""

from __future__ import annotations

import pytest

from actorcore.gcs import (
    Compare,
    DeleteOp,
    EmbeddedState,
    EventType,
    GetOp,
    KeyValue,
    LeaseExpiredError,
    PutOp,
    RevisionCompactedError,
)

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def state():
    s = EmbeddedState(history_size=50)
    yield s
    s.validate()


def test_revisions_versions_and_events(state: EmbeddedState):
    assert state.revision == 1
    rev, events = state.put(b"/a", b"1")
    assert rev == 2 == state.revision
    kv1 = KeyValue(b"/a", b"1", 2, 2, 1, 0)
    assert events == [events[0]] and events[0].kv == kv1 and events[0].prev_kv is None
    rev, events = state.put(b"/a", b"2")
    assert state.get(b"/a") == KeyValue(b"/a", b"2", 2, 3, 2, 0)
    assert events[0].prev_kv == kv1
    deleted, events = state.delete(b"/a")
    assert deleted == 1 and state.revision == 4
    assert (events[0].type, events[0].kv, events[0].prev_kv.value) == (EventType.DELETE, None, b"2")
    deleted, events = state.delete(b"/a")
    assert (deleted, events, state.revision) == (0, [], 4), "deleting nothing is no change"


def test_range_by_prefix_is_sorted(state: EmbeddedState):
    for key in [b"/p/b", b"/p/a", b"/pa", b"/p/c", b"/o"]:
        state.put(key, b"")
    assert [kv.key for kv in state.range(b"/p/", prefix=True)] == [b"/p/a", b"/p/b", b"/p/c"]
    assert [kv.key for kv in state.range(b"", prefix=True)] == sorted(
        [b"/p/b", b"/p/a", b"/pa", b"/p/c", b"/o"]
    )
    assert state.range(b"/p/a") == [state.get(b"/p/a")]


def test_txn_is_atomic_and_shares_one_revision(state: EmbeddedState):
    state.put(b"/x", b"old")
    result, events = state.txn(
        [Compare(b"/x", "value", "==", b"old")],
        [PutOp(b"/x", b"new"), PutOp(b"/y", b"y"), GetOp(b"/x"), DeleteOp(b"/z")],
    )
    assert result.succeeded and result.revision == 3
    assert result.responses[0] == result.responses[1] == 3
    assert result.responses[2] == [state.get(b"/x")], "a get sees the txn's own writes"
    assert result.responses[3] == 0
    assert [e.revision for e in events] == [3, 3]


def test_txn_failure_branch_and_compare_rules(state: EmbeddedState):
    state.put(b"/x", b"v")
    result, _ = state.txn([Compare(b"/x", "version", ">", 1)], [PutOp(b"/a", b"")], [GetOp(b"/x")])
    assert not result.succeeded and state.get(b"/a") is None
    assert result.responses == [[state.get(b"/x")]]
    assert not state.txn([Compare(b"/nope", "value", "!=", b"v")], [])[0].succeeded
    assert state.txn([Compare(b"/nope", "create", "==", 0)], [])[0].succeeded
    with pytest.raises(TypeError):
        state.txn([Compare(b"/x", "version", "==", b"1")], [])
    with pytest.raises(ValueError, match="128"):
        state.txn([], [GetOp(b"/x")] * 129)
    with pytest.raises(ValueError, match="duplicate"):
        state.txn([], [], [PutOp(b"/d", b""), DeleteOp(b"/", prefix=True)])
    with pytest.raises(ValueError, match="empty key"):
        state.put(b"", b"")


def test_put_under_unknown_lease_changes_nothing(state: EmbeddedState):
    with pytest.raises(LeaseExpiredError):
        state.txn([], [PutOp(b"/a", b"1"), PutOp(b"/b", b"2", lease=99)])
    assert state.revision == 1 and state.get(b"/a") is None


def test_lease_expiry_deletes_its_keys_in_one_revision(state: EmbeddedState):
    lease = state.grant(2.0, now=100.0)
    state.put(b"/n/b", b"B", lease)
    state.put(b"/n/a", b"A", lease)
    state.put(b"/n/a", b"A2", lease)
    state.put(b"/n/c", b"C")
    assert state.next_deadline() == 102.0
    assert state.expire(101.9) == []
    assert state.refresh(lease, now=101.0) == 2.0
    assert state.next_deadline() == 103.0
    events = state.expire(103.0)
    assert [(e.type, e.key, e.prev_kv.value) for e in events if e.prev_kv] == [
        (EventType.DELETE, b"/n/a", b"A2"),
        (EventType.DELETE, b"/n/b", b"B"),
    ]
    assert {e.revision for e in events} == {state.revision}
    assert [kv.key for kv in state.range(b"/n/", prefix=True)] == [b"/n/c"]
    assert state.events_since(b"/n/", state.revision) == events, "expiry is in the history"
    assert state.refresh(lease, now=103.0) == 0.0
    assert state.next_deadline() is None
    with pytest.raises(LeaseExpiredError):
        state.put(b"/n/a", b"", lease)


def test_overdue_lease_cannot_be_refreshed(state: EmbeddedState):
    lease = state.grant(1.0, now=0.0)
    assert state.refresh(lease, now=1.0) == 0.0
    assert state.lease_ids() == [lease], "reaped by the next expire(), not by refresh"
    assert state.expire(1.0) == []
    assert state.lease_ids() == []


def test_moving_a_key_between_leases(state: EmbeddedState):
    first, second = state.grant(5, now=0), state.grant(50, now=0)
    state.put(b"/k", b"", first)
    state.put(b"/k", b"", second)
    assert state.expire(10) == []
    assert state.get(b"/k") is not None
    state.put(b"/k", b"", 0)
    assert state.revoke(second) == []
    assert state.get(b"/k") is not None


def test_revoke_and_unknown_lease(state: EmbeddedState):
    lease = state.grant(5, now=0)
    state.put(b"/k", b"v", lease)
    assert [e.key for e in state.revoke(lease)] == [b"/k"]
    assert state.revoke(lease) == []
    with pytest.raises(ValueError):
        state.grant(0, now=0)


def test_history_replays_and_compacts(state: EmbeddedState):
    first, _ = state.put(b"/h/1", b"")
    state.put(b"/other", b"")
    second, _ = state.put(b"/h/2", b"")
    assert [e.revision for e in state.events_since(b"/h/", first)] == [first, second]
    assert [e.revision for e in state.events_since(b"/h/", first + 1)] == [second]
    state.compact(second)
    with pytest.raises(RevisionCompactedError):
        state.events_since(b"/h/", first)
    assert [e.revision for e in state.events_since(b"/h/", second)] == [second]


def test_bounded_history_counts_as_compaction():
    state = EmbeddedState(history_size=3)
    revisions = [state.put(b"/k%d" % i, b"")[0] for i in range(5)]
    assert state.compacted_revision == revisions[1]
    with pytest.raises(RevisionCompactedError):
        state.events_since(b"", revisions[1])
    assert [e.revision for e in state.events_since(b"", revisions[2])] == revisions[2:]
    state.validate()


def test_history_never_keeps_half_a_revision():
    state = EmbeddedState(history_size=3)
    state.txn([], [PutOp(b"/a", b""), PutOp(b"/b", b"")])  # revision 2: two events
    state.txn([], [PutOp(b"/c", b""), PutOp(b"/d", b"")])  # revision 3: drops one of rev 2
    assert state.compacted_revision == 2
    with pytest.raises(RevisionCompactedError):
        state.events_since(b"", 2)
    assert len(state.events_since(b"", 3)) == 2
