"""The pull state machine (receiver) and the serve budget (sender), without sockets."""

from __future__ import annotations

import pytest
from actorcore.store._pull import (
    Allocate,
    AllocatedEvent,
    AllocationFailedEvent,
    ChunkDoneEvent,
    Complete,
    Disconnect,
    Fail,
    FetchChunk,
    HoldersAddedEvent,
    NodeFailedEvent,
    OpenAt,
    OpenedEvent,
    OpenFailedEvent,
    PullConfig,
    PullEvent,
    PullState,
    ReleaseAt,
    TickEvent,
)
from actorcore.store._serve import (
    PeerGoneEvent,
    ReadAskedEvent,
    ReadSentEvent,
    RefuseRead,
    SendChunk,
    ServeConfig,
    ServeState,
)

MiB = 1 << 20
OID = b"o" * 16
A, B, C = ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)


class Machine:
    """A PullState that checks its invariants after every event."""

    def __init__(self, **cfg) -> None:
        cfg.setdefault("chunk_bytes", 1 * MiB)
        cfg.setdefault("pull_window", 4 * MiB)
        cfg.setdefault("holder_window", cfg["pull_window"])
        cfg.setdefault("node_window", 8 * MiB)
        cfg.setdefault("stall_timeout_s", 5.0)
        self.s = PullState(PullConfig(**cfg))

    def __call__(self, ev):
        out = self.s.handle(ev)
        self.s.validate()
        return out

    def start(self, oid=OID, holders=(A,), size=10 * MiB, waiter="w", now=0.0):
        """Pull ``oid``; every holder asked answers, then the range is made; returns fetches."""
        out = self(PullEvent(oid, tuple(holders), waiter, b"owner", now))
        opens = [i for i in out if isinstance(i, OpenAt)]
        assert opens, out
        fetches = []
        for o in opens:
            got = self(OpenedEvent(oid, o.holder, size, b"meta", now))
            assert got in ([Allocate(oid, size, b"owner")], []), got
        fetches += self(AllocatedEvent(oid, now))
        return [f for f in fetches if isinstance(f, FetchChunk)]


def fetches(out):
    return [i for i in out if isinstance(i, FetchChunk)]


def drain(m, pending, now=0.0, fail_holder=None):
    """Answer fetches (breadth first) until nothing is pending; returns the other instructions."""
    rest = []
    pending = list(pending)
    while pending:
        f = pending.pop(0)
        assert f.holder != fail_holder
        for ins in m(ChunkDoneEvent(f.oid, f.holder, f.index, now)):
            (pending if isinstance(ins, FetchChunk) else rest).append(ins)
    return rest


# --- chunking ------------------------------------------------------------------------


def test_chunks_cover_the_object_once_and_the_last_is_short():
    m = Machine(chunk_bytes=3 * MiB, pull_window=12 * MiB, node_window=12 * MiB)
    first = m.start(size=10 * MiB + 5)
    seen = list(first)
    pending = list(first)
    rest = []
    while pending:
        f = pending.pop(0)
        out = m(ChunkDoneEvent(OID, f.holder, f.index, 0.0))
        seen += fetches(out)
        pending += fetches(out)
        rest += [i for i in out if not isinstance(i, FetchChunk)]
    spans = sorted((f.offset, f.length) for f in seen)
    assert spans == [(0, 3 * MiB), (3 * MiB, 3 * MiB), (6 * MiB, 3 * MiB), (9 * MiB, MiB + 5)]
    assert rest[0] == Complete(OID, 10 * MiB + 5, b"meta", ("w",))
    assert rest[1:] == [ReleaseAt(OID, A)]
    assert not m.s.pulls and m.s.inflight_bytes == 0


def test_empty_object_completes_without_chunks():
    m = Machine()
    m(PullEvent(OID, (A,), "w", b"owner", 0.0))
    assert m(OpenedEvent(OID, A, 0, b"meta", 0.0)) == [Allocate(OID, 0, b"owner")]
    assert m(AllocatedEvent(OID, 0.0)) == [
        Complete(OID, 0, b"meta", ("w",)),
        ReleaseAt(OID, A),
    ]


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        PullConfig(chunk_bytes=8 * MiB, pull_window=4 * MiB)
    with pytest.raises(ValueError):
        PullConfig(pull_window=512 * MiB, node_window=256 * MiB)
    with pytest.raises(ValueError):
        PullConfig(holder_window=128 * MiB, pull_window=64 * MiB)
    with pytest.raises(ValueError):
        ServeConfig(window_bytes=MiB, peer_window_bytes=MiB, max_read_bytes=2 * MiB)


# --- budgets -------------------------------------------------------------------------


def test_pull_window_caps_bytes_in_flight():
    m = Machine(chunk_bytes=MiB, pull_window=3 * MiB, node_window=8 * MiB)
    first = m.start(size=10 * MiB)
    assert [f.index for f in first] == [0, 1, 2]
    assert m.s.inflight_bytes == 3 * MiB
    out = m(ChunkDoneEvent(OID, A, 1, 0.0))  # out of order is fine
    assert [f.index for f in fetches(out)] == [3]
    assert m.s.pulls[OID].inflight_bytes == 3 * MiB


def test_node_window_is_shared_by_all_pulls_round_robin():
    m = Machine(chunk_bytes=MiB, pull_window=4 * MiB, node_window=5 * MiB)
    o1, o2 = b"1" * 16, b"2" * 16
    f1 = m.start(o1, size=10 * MiB)
    assert len(f1) == 4
    f2 = m.start(o2, holders=(B,), size=10 * MiB)
    assert len(f2) == 1  # only one MiB of the node's window was left
    assert m.s.inflight_bytes == 5 * MiB
    # as chunks of o1 land, the freed budget alternates between the pulls
    got = []
    for f in f1[:4]:
        got += [x.oid for x in fetches(m(ChunkDoneEvent(o1, f.holder, f.index, 0.0)))]
    assert got.count(o2) >= 2 and got.count(o1) >= 1
    assert m.s.inflight_bytes == 5 * MiB


def test_serve_budget_caps_bytes_being_sent_and_takes_turns():
    s = ServeState(
        ServeConfig(window_bytes=4 * MiB, peer_window_bytes=4 * MiB, max_read_bytes=2 * MiB)
    )
    out = []
    for rid in range(4):
        out += s.handle(ReadAskedEvent("p1", rid, OID, rid * 2 * MiB, 2 * MiB))
    out += s.handle(ReadAskedEvent("p2", 9, OID, 0, 2 * MiB))
    s.validate()
    assert [(c.peer, c.rid) for c in out] == [("p1", 0), ("p1", 1)]
    assert s.sending_bytes == 4 * MiB
    # p2 waits its turn, then gets the next free slot before p1's third read
    out = s.handle(ReadSentEvent("p1", 0))
    assert out == [SendChunk("p2", 9, OID, 0, 2 * MiB)]
    out = s.handle(ReadSentEvent("p1", 1))
    assert out == [SendChunk("p1", 2, OID, 4 * MiB, 2 * MiB)]
    s.validate()


def test_a_peer_that_stops_reading_holds_only_its_peer_window():
    cfg = ServeConfig(window_bytes=8 * MiB, peer_window_bytes=4 * MiB, max_read_bytes=2 * MiB)
    s = ServeState(cfg)
    out = []
    for rid in range(6):
        out += s.handle(ReadAskedEvent("stuck", rid, OID, 0, 2 * MiB))
    assert [c.rid for c in out] == [0, 1]  # its window is full; the rest wait
    # another peer still gets the other half of the budget, again and again
    for rid in range(10):
        got = s.handle(ReadAskedEvent("p2", rid, OID, 0, 2 * MiB))
        got += s.handle(ReadSentEvent("p2", rid - 1)) if rid else []
        s.validate()
        assert any(c.peer == "p2" for c in got)
        assert s.peer_bytes["stuck"] == 4 * MiB
    # once the stuck peer's chunks go out, its queue moves again
    assert [c.peer for c in s.handle(ReadSentEvent("stuck", 0))] == ["stuck"]
    s.validate()


def test_serve_refuses_oversized_reads_and_forgets_gone_peers():
    s = ServeState(
        ServeConfig(window_bytes=4 * MiB, peer_window_bytes=4 * MiB, max_read_bytes=2 * MiB)
    )
    assert isinstance(s.handle(ReadAskedEvent("p1", 1, OID, 0, 3 * MiB))[0], RefuseRead)
    assert isinstance(s.handle(ReadAskedEvent("p1", 2, OID, 0, 0))[0], RefuseRead)
    s.handle(ReadAskedEvent("p1", 3, OID, 0, 2 * MiB))
    s.handle(ReadAskedEvent("p1", 4, OID, 0, 2 * MiB))
    s.handle(ReadAskedEvent("p1", 5, OID, 0, 2 * MiB))
    assert s.handle(ReadAskedEvent("p2", 1, OID, 0, 2 * MiB)) == []
    out = s.handle(PeerGoneEvent("p1"))
    assert out == [SendChunk("p2", 1, OID, 0, 2 * MiB)]
    assert s.handle(ReadSentEvent("p1", 3)) == []  # a late report of a gone peer
    s.validate()
    assert s.sending_bytes == 2 * MiB


# --- several holders --------------------------------------------------------------------


def test_several_holders_are_used_at_once():
    m = Machine(chunk_bytes=MiB, pull_window=4 * MiB)
    out = m(PullEvent(OID, (A, B), "w", b"owner", 0.0))
    assert out == [OpenAt(OID, A), OpenAt(OID, B)]
    m(OpenedEvent(OID, A, 10 * MiB, b"meta", 0.0))
    first = fetches(m(AllocatedEvent(OID, 0.0)))
    assert {f.holder for f in first} == {A}  # B has not answered yet
    more = m(OpenedEvent(OID, B, 10 * MiB, b"meta", 0.0))
    assert fetches(more) == []  # window full
    out = m(ChunkDoneEvent(OID, A, first[0].index, 0.0))
    assert [f.holder for f in fetches(out)] == [B]  # the least loaded holder
    rest = drain(m, first[1:] + fetches(out))
    assert isinstance(rest[0], Complete)
    assert set(rest[1:]) == {ReleaseAt(OID, A), ReleaseAt(OID, B)}


def test_holder_window_leaves_work_for_a_holder_that_answers_later():
    m = Machine(chunk_bytes=MiB, holder_window=2 * MiB, pull_window=8 * MiB)
    m(PullEvent(OID, (A, B), "w", b"owner", 0.0))
    m(OpenedEvent(OID, A, 16 * MiB, b"meta", 0.0))
    first = fetches(m(AllocatedEvent(OID, 0.0)))
    assert [f.holder for f in first] == [A, A]  # A's window is full, the pull's is not
    later = fetches(m(OpenedEvent(OID, B, 16 * MiB, b"meta", 0.0)))
    assert [f.holder for f in later] == [B, B]
    rest = drain(m, first + later)
    assert isinstance(rest[0], Complete)


def test_open_fanout_limits_holders_asked():
    m = Machine(open_fanout=2)
    out = m(PullEvent(OID, (A, B, C), "w", b"owner", 0.0))
    assert out == [OpenAt(OID, A), OpenAt(OID, B)]
    out = m(OpenFailedEvent(OID, A, "not here", 0.0))
    assert out == [OpenAt(OID, C)]


def test_mismatched_copy_is_dropped():
    m = Machine()
    m(PullEvent(OID, (A, B), "w", b"owner", 0.0))
    m(OpenedEvent(OID, A, 4 * MiB, b"meta", 0.0))
    out = m(OpenedEvent(OID, B, 5 * MiB, b"meta", 0.0))
    assert out == [ReleaseAt(OID, B)]
    assert B in m.s.pulls[OID].dropped


# --- merged requests ----------------------------------------------------------------------


def test_concurrent_requests_merge_into_one_pull():
    m = Machine()
    out = m(PullEvent(OID, (A,), "w1", b"owner", 0.0))
    assert out == [OpenAt(OID, A)]
    assert m(PullEvent(OID, (A,), "w2", b"owner", 0.0)) == []  # no second open
    m(OpenedEvent(OID, A, 2 * MiB, b"meta", 0.0))
    first = fetches(m(AllocatedEvent(OID, 0.0)))
    assert m(PullEvent(OID, (A, B), "w3", b"owner", 0.0)) == [OpenAt(OID, B)]
    m(OpenFailedEvent(OID, B, "gone", 0.0))
    rest = drain(m, first)
    assert rest[0] == Complete(OID, 2 * MiB, b"meta", ("w1", "w2", "w3"))


def test_holders_added_later_are_used():
    m = Machine(open_fanout=1)
    m(PullEvent(OID, (A,), "w", b"owner", 0.0))
    assert m(HoldersAddedEvent(OID, (B,), 0.0)) == []  # fanout reached
    assert m(OpenFailedEvent(OID, A, "no copy", 0.0)) == [OpenAt(OID, B)]
    assert m(HoldersAddedEvent(b"x" * 16, (C,), 0.0)) == []  # unknown pull


# --- failures ----------------------------------------------------------------------------


def test_holder_death_mid_pull_resumes_from_another_holder():
    m = Machine(chunk_bytes=MiB, pull_window=4 * MiB)
    first = m.start(holders=(A, B), size=8 * MiB)
    at_a = [f for f in first if f.holder == A]
    at_b = [f for f in first if f.holder == B]
    assert at_a and at_b
    # one chunk from A landed, then A died
    m(ChunkDoneEvent(OID, A, at_a[0].index, 0.0))
    out = m(NodeFailedEvent(A, "connection reset", 1.0))
    assert not any(isinstance(i, Fail) for i in out)
    refetch = fetches(out)
    assert {f.holder for f in refetch} == {B}
    lost = {f.index for f in at_a[1:]}
    assert lost <= {f.index for f in refetch}
    pending = [f for f in at_b] + refetch
    # a late answer from the dead holder is ignored
    assert m(ChunkDoneEvent(OID, A, at_a[1].index, 1.0)) == []
    rest = drain(m, pending, fail_holder=A)
    assert rest == [Complete(OID, 8 * MiB, b"meta", ("w",)), ReleaseAt(OID, B)]


def test_all_holders_dead_fails_with_reasons():
    m = Machine()
    first = m.start(holders=(A, B), size=8 * MiB)
    assert first
    assert not any(isinstance(i, Fail) for i in m(NodeFailedEvent(A, "connection reset", 1.0)))
    out = m(NodeFailedEvent(B, "connection refused", 1.0))
    fail = [i for i in out if isinstance(i, Fail)]
    assert len(fail) == 1 and fail[0].allocated and fail[0].waiters == ("w",)
    assert "connection reset" in fail[0].reason and "connection refused" in fail[0].reason
    assert not m.s.pulls and m.s.inflight_bytes == 0 and not m.s._chunks


def test_no_holder_at_all_fails_at_once():
    m = Machine()
    out = m(PullEvent(OID, (), "w", b"owner", 0.0))
    assert len(out) == 1 and isinstance(out[0], Fail) and not out[0].allocated
    assert "no node holds a copy" in out[0].reason


def test_every_holder_without_a_copy_fails():
    m = Machine()
    m(PullEvent(OID, (A,), "w", b"owner", 0.0))
    out = m(OpenFailedEvent(OID, A, "object is not here", 0.0))
    assert isinstance(out[0], Fail) and "object is not here" in out[0].reason


def test_holder_death_while_allocating_fails_after_the_allocation():
    m = Machine()
    m(PullEvent(OID, (A,), "w", b"owner", 0.0))
    m(OpenedEvent(OID, A, 2 * MiB, b"meta", 0.0))
    assert m(NodeFailedEvent(A, "gone", 0.0)) == []
    out = m(AllocatedEvent(OID, 0.0))
    assert len(out) == 1 and isinstance(out[0], Fail) and out[0].allocated


def test_allocation_failure_fails_and_unpins():
    m = Machine()
    m(PullEvent(OID, (A,), "w", b"owner", 0.0))
    m(OpenedEvent(OID, A, 2 * MiB, b"meta", 0.0))
    out = m(AllocationFailedEvent(OID, "store full", 0.0))
    assert isinstance(out[0], Fail) and not out[0].allocated and "store full" in out[0].reason
    assert out[0].no_room
    assert out[1:] == [ReleaseAt(OID, A)]


def test_late_open_answer_after_the_end_is_released():
    m = Machine()
    first = m.start(holders=(A,), size=MiB)
    m(HoldersAddedEvent(OID, (B,), 0.0))
    drain(m, first)
    assert m(OpenedEvent(OID, B, MiB, b"meta", 0.0)) == [ReleaseAt(OID, B)]


# --- timeouts ---------------------------------------------------------------------------


def test_stalled_holder_is_disconnected_and_its_chunks_move():
    m = Machine(chunk_bytes=MiB, pull_window=4 * MiB, stall_timeout_s=5.0)
    first = m.start(holders=(A, B), size=8 * MiB, now=0.0)
    at_b = [f for f in first if f.holder == B]
    # B keeps answering; A never does
    pending = []
    for i, f in enumerate(at_b):
        pending += fetches(m(ChunkDoneEvent(OID, B, f.index, 1.0 + i)))
    assert m(TickEvent(4.9)) == []
    out = m(TickEvent(5.1))
    assert out[0] == Disconnect(A, out[0].reason) and "no answer for 5.1 s" in out[0].reason
    assert A not in m.s.nodes and A in m.s.pulls[OID].dropped
    pending = [f for f in pending if f.holder == B] + fetches(out)
    rest = drain(m, pending, now=6.0, fail_holder=A)
    assert rest[0] == Complete(OID, 8 * MiB, b"meta", ("w",))


def test_a_holder_that_keeps_answering_never_times_out():
    m = Machine(chunk_bytes=MiB, pull_window=2 * MiB, stall_timeout_s=5.0)
    pending = m.start(holders=(A,), size=20 * MiB)
    now = 0.0
    while pending:
        now += 3.0  # each chunk takes 3 s: slow, but progress
        assert m(TickEvent(now - 0.1)) == []
        f = pending.pop(0)
        out = m(ChunkDoneEvent(OID, A, f.index, now))
        pending += fetches(out)
    assert isinstance(out[0], Complete)


def test_an_idle_holder_never_times_out():
    m = Machine(stall_timeout_s=1.0)
    drain(m, m.start(holders=(A,), size=MiB))
    assert m(TickEvent(100.0)) == []


def test_a_stalled_open_times_out_and_the_next_holder_is_asked():
    m = Machine(open_fanout=1, stall_timeout_s=2.0)
    assert m(PullEvent(OID, (A, B), "w", b"owner", 0.0)) == [OpenAt(OID, A)]
    out = m(TickEvent(3.0))
    assert out == [Disconnect(A, out[0].reason), OpenAt(OID, B)]


# --- random schedules -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_random_schedules_keep_the_invariants_and_end_every_pull(seed):
    """Pulls of random objects from random holders; answers, failures and ticks in
    random order. Every pull ends exactly once: complete, or failed with no holder left."""
    import random

    rnd = random.Random(seed)
    m = Machine(chunk_bytes=MiB, holder_window=2 * MiB, pull_window=4 * MiB, node_window=6 * MiB)
    holders = [("h", i) for i in range(4)]
    dead: set = set()
    pending: list = []  # instructions the "shell" has not answered yet
    ended: dict = {}
    now = 0.0
    oids = [bytes([i]) * 16 for i in range(6)]
    for i, oid in enumerate(oids):
        hs = tuple(rnd.sample(holders, rnd.randint(1, 3)))
        pending += m(PullEvent(oid, hs, f"w{i}", b"owner", now))
    sizes = {oid: rnd.randint(0, 9 * MiB) for oid in oids}
    steps = 0
    while pending and steps < 5000:
        steps += 1
        now += rnd.random() * 0.5
        ins = pending.pop(rnd.randrange(len(pending)))
        out: list = []
        if isinstance(ins, OpenAt):
            if ins.holder in dead:
                continue  # its link broke: NodeFailedEvent was given already
            if rnd.random() < 0.15:
                out = m(OpenFailedEvent(ins.oid, ins.holder, "no copy", now))
            else:
                out = m(OpenedEvent(ins.oid, ins.holder, sizes[ins.oid], b"meta", now))
        elif isinstance(ins, Allocate):
            out = m(AllocatedEvent(ins.oid, now))
        elif isinstance(ins, FetchChunk):
            if ins.holder not in dead:
                out = m(ChunkDoneEvent(ins.oid, ins.holder, ins.index, now))
        elif isinstance(ins, (Complete, Fail)):
            assert ins.oid not in ended
            ended[ins.oid] = ins
        if rnd.random() < 0.03:
            victim = rnd.choice(holders)
            if victim not in dead:
                dead.add(victim)
                out += m(NodeFailedEvent(victim, "killed", now))
        if rnd.random() < 0.05:
            out += m(TickEvent(now))
        pending += out
    # answer what is left: stalled holders time out
    for _ in range(100):
        if not m.s.pulls:
            break
        now += 100.0
        for ins in m(TickEvent(now)):
            if isinstance(ins, (Complete, Fail)):
                ended[ins.oid] = ins
    for ins in pending:
        if isinstance(ins, (Complete, Fail)):
            ended[ins.oid] = ins
    assert set(ended) == set(oids) and not m.s.pulls
    for oid, ins in ended.items():
        if isinstance(ins, Complete):
            assert ins.size == sizes[oid]
    assert m.s.inflight_bytes == 0
