"""The owner's stream core (issue 12) as a state machine: no sockets, no loop."""

from __future__ import annotations

from actorcore._owner import _streams as S

SID = b"s" * 16


def _core(bp: int = 0) -> S.StreamCore:
    core = S.StreamCore()
    assert core.handle([S.StreamOpened(SID, bp)]) == []
    return core


def _item(i: int, peer: object = "w1", n: int = 1) -> S.ItemsArrived:
    items = [[f"o{j}-{peer}".encode(), [0, b"x", None]] for j in range(i, i + n)]
    return S.ItemsArrived(SID, i, items, peer)


def _kinds(out: list) -> list[str]:
    return [type(x).__name__ for x in out]


def test_items_are_delivered_in_order_then_the_stream_ends():
    core = _core()
    out = core.handle([_item(0), _item(1), _item(2)])
    assert _kinds(out) == ["DeliverItems"] * 3
    assert [x.items[0][0] for x in out] == [b"o0-w1", b"o1-w1", b"o2-w1"]
    out = core.handle([S.StreamEnded(SID, False)])
    assert _kinds(out) == ["EndStream"] and not out[0].failed
    assert SID not in core.streams


def test_without_backpressure_no_acks_are_sent():
    core = _core(0)
    core.handle([_item(0), _item(1)])
    assert core.handle([S.ItemsConsumed(SID, 1), S.ItemsConsumed(SID, 2)]) == []


def test_acks_every_quarter_window_and_at_once_when_the_producer_may_wait():
    core = _core(8)
    core.handle([_item(0), _item(1)])
    assert core.handle([S.ItemsConsumed(SID, 1)]) == []  # 1 < 8 // 4, producer not full
    out = core.handle([S.ItemsConsumed(SID, 2)])
    assert _kinds(out) == ["AckItems"] and out[0].consumed == 2 and out[0].peer == "w1"
    core.handle([_item(2, n=8)])  # 10 sent, 2 acked: full
    out = core.handle([S.ItemsConsumed(SID, 3)])
    assert _kinds(out) == ["AckItems"] and out[0].consumed == 3
    core.validate()


def test_consumed_never_goes_back():
    core = _core(1)
    core.handle([_item(0), _item(1)])
    assert len(core.handle([S.ItemsConsumed(SID, 2)])) == 1
    assert core.handle([S.ItemsConsumed(SID, 1)]) == []
    core.validate()


def test_a_retry_skips_what_was_delivered_and_is_told_the_progress():
    core = _core(2)
    core.handle([_item(0), _item(1), _item(2)])
    core.handle([S.ItemsConsumed(SID, 1)])
    # the first worker died; the retry starts again from item 0 on another connection
    out = core.handle([_item(0, "w2")])
    assert _kinds(out) == ["AckItems", "DropItems"]
    assert out[0].peer == "w2" and out[0].consumed == 1
    out = core.handle([_item(1, "w2"), _item(2, "w2"), _item(3, "w2")])
    assert _kinds(out) == ["DropItems", "DropItems", "DeliverItems"]
    assert out[2].items[0][0] == b"o3-w2"
    core.validate()


def test_dropping_the_generator_cancels_the_producer_and_drops_late_items():
    core = _core(2)
    core.handle([_item(0)])
    out = core.handle([S.StreamDropped(SID)])
    assert _kinds(out) == ["CancelProducer"]
    assert _kinds(core.handle([_item(1)])) == ["DropItems"]
    assert core.handle([S.StreamEnded(SID, True)]) == []  # nobody to tell
    assert core.handle([S.StreamDropped(SID)]) == []


def test_dropping_after_the_end_cancels_nothing():
    core = _core()
    core.handle([_item(0), S.StreamEnded(SID, False)])
    assert core.handle([S.StreamDropped(SID)]) == []


def test_a_failed_end_is_reported_as_failed():
    core = _core()
    out = core.handle([_item(0), S.StreamEnded(SID, True)])
    assert _kinds(out) == ["DeliverItems", "EndStream"] and out[1].failed


def test_items_of_an_unknown_stream_are_dropped():
    core = S.StreamCore()
    assert _kinds(core.handle([_item(0)])) == ["DropItems"]


def test_a_gap_is_dropped_not_delivered_out_of_order():
    core = _core()
    out = core.handle([_item(1)])
    assert _kinds(out) == ["DropItems"]


def test_a_batch_overlapping_what_was_delivered_is_split():
    core = _core()
    core.handle([_item(0, n=3)])
    out = core.handle([_item(0, "w2", n=5)])  # a retry sends 0..4 in one batch
    assert _kinds(out) == ["DropItems", "DeliverItems"]
    assert [o for o, _r in out[0].items] == [b"o0-w2", b"o1-w2", b"o2-w2"]
    assert [o for o, _r in out[1].items] == [b"o3-w2", b"o4-w2"]
    assert core.streams[SID].delivered == 5


def _attempt(i: int, rid: int, peer: object = "w1", n: int = 1) -> S.ItemsArrived:
    ev = _item(i, peer, n)
    ev.rid = rid
    return ev


def test_a_retry_on_the_same_connection_is_told_the_progress_at_once():
    """An actor restarted in the same worker: the retry comes on the same connection
    (same peer) under the same stream id, with a newer rid."""
    core = _core(2)
    assert _kinds(core.handle([_attempt(0, 10, n=2)])) == ["DeliverItems"]
    core.handle([S.ItemsConsumed(SID, 2)])
    out = core.handle([_attempt(0, 11)])  # the retry's first item: a duplicate
    assert _kinds(out) == ["AckItems", "DropItems"] and out[0].consumed == 2
    out = core.handle([_attempt(1, 11), _attempt(2, 11)])
    assert _kinds(out) == ["DropItems", "DeliverItems"]
    core.validate()


def test_late_items_of_an_older_attempt_are_dropped():
    core = _core()
    core.handle([_attempt(0, 10)])
    core.handle([_attempt(0, 12, peer="w2")])  # the retry, elsewhere
    out = core.handle([_attempt(1, 10), _attempt(1, 12, peer="w2")])  # the old one, late
    assert _kinds(out) == ["DropItems", "DeliverItems"]
    assert out[1].items[0][0] == b"o1-w2"


def test_items_made_after_the_actor_was_dropped_are_dropped():
    core = _core()
    core.handle([_attempt(0, 10)])
    out = core.handle([_attempt(1, -1)])
    assert _kinds(out) == ["DropItems"]
    out = core.handle([_attempt(1, 11)])
    assert _kinds(out) == ["DeliverItems"]


def test_a_workers_producers_of_two_attempts_under_one_stream_id():
    """The worker's side: a retry of a call (its actor restarted in the same worker)
    registers under the same stream id while the first attempt may still run. The
    first attempt stops; its end does not unregister the retry (which would then
    never hear of acks); its items, once its actor was dropped, go out marked as
    nobody's, the retry's with the retry's rid."""
    import types

    from actorcore import _protocol as P
    from actorcore._streaming import Producers

    sent = []
    conn = types.SimpleNamespace(send=sent.append)
    rt = types.SimpleNamespace(
        node=types.SimpleNamespace(node_id=b"n" * 16),
        config=types.SimpleNamespace(node_ttl_s=1.0),
        call_soon=lambda *_a: None,
    )
    producers = Producers(rt)

    def call(rid: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            rid=rid,
            task_id=b"t",
            return_ids=[SID],
            stream=3,
            peer=types.SimpleNamespace(conn=conn),
            name="m",
        )

    first = producers._open(call(10), b"actor")
    producers.actor_gone(b"actor", RuntimeError("dropped"))
    retry = producers._open(call(11), b"actor")
    assert first.cancelled and not retry.cancelled
    producers._emit(first, [b"late", [0, b"x", None]])  # made after the drop
    producers._emit(retry, [b"new", [0, b"y", None]])
    assert [(m.rid, m.items[0][0]) for m in sent] == [(P.DROPPED_ATTEMPT, b"late"), (11, b"new")]
    producers._close(first)
    assert producers.by_stream[SID] is retry
    producers.ack(SID, 2)
    assert retry.acked == 2
    producers._close(retry)
    assert SID not in producers.by_stream
    a = producers._open(call(12), None)  # a retry while the first still runs: it stops
    b = producers._open(call(13), None)
    assert a.cancelled and not b.cancelled and producers.by_stream[SID] is b
