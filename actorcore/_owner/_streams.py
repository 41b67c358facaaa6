"""The owner's side of streaming generators: a sans-IO core. No I/O, no clock.

A streaming call (``num_returns="streaming"``) has one return object, its *end*
(whose value is the number of items); its id names the stream. The worker
sends each yielded value as item ``index`` (an object of its own) before it
replies; the owner hands items to the consumer in order, once each.

Back-pressure: with ``backpressure=N`` the worker pauses while N items it
sent are not consumed; the owner acks consumption (``AckItems``) often enough
that a paused worker always hears of progress: when a quarter of N was
consumed since the last ack (so a producer faster than its consumer rarely
has to stop), or at once when the worker may be paused.

A retried attempt (its worker died, or an actor restarted) starts again from
item 0: the items already delivered are dropped (``DropItems``), and the new
producer is told at once how far the consumer got. Attempts are told apart by
the rid of the call's send (a retry is sent with a newer one), not by where
they run: an actor restarted in the same worker gets the retry on the same
connection, under the same stream id. Items of an older attempt that come
late, and those made after an actor was dropped, are dropped. A stream whose generator
was dropped by the consumer cancels its producer and drops what still comes.

:class:`StreamCore` is driven by ``handle(events) -> instructions``; the shell
(:mod:`._stream_shell`) feeds it on the runtime's loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AckItems",
    "CancelProducer",
    "DeliverItems",
    "DropItems",
    "EndStream",
    "ItemsArrived",
    "ItemsConsumed",
    "StreamCore",
    "StreamDropped",
    "StreamEnded",
    "StreamOpened",
    "StreamState",
]

logger = logging.getLogger(__name__)

# --- events --------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamOpened:
    """A streaming call was submitted; ``backpressure`` 0 means unbounded."""

    stream_id: bytes
    backpressure: int


@dataclass(slots=True)
class ItemsArrived:
    """The worker behind ``peer`` sent items ``index``... as ``[oid, [kind, data, nested]]``."""

    stream_id: bytes
    index: int
    items: list[Any]
    peer: Any
    node_id: bytes | None = None
    rid: int = 0  # the attempt (the rid its call was sent with); -1: nobody may read them


@dataclass(slots=True)
class ItemsConsumed:
    """The consumer has taken ``consumed`` items so far."""

    stream_id: bytes
    consumed: int


@dataclass(slots=True)
class StreamEnded:
    """The call's end object completed (``failed``: with an error)."""

    stream_id: bytes
    failed: bool


@dataclass(slots=True)
class StreamDropped:
    """The consumer let go of the generator."""

    stream_id: bytes


# --- instructions ------------------------------------------------------------------------


@dataclass(slots=True)
class DeliverItems:
    """Make each ``[oid, result]`` an owned object and queue its ref for the consumer."""

    stream_id: bytes
    items: list[Any]
    node_id: bytes | None = None  # where store items are


@dataclass(slots=True)
class DropItems:
    """Nobody will read these items (duplicates of a retry, or a dropped stream): free them."""

    items: list[Any]


@dataclass(slots=True)
class AckItems:
    """Tell the producer behind ``peer`` that ``consumed`` items were taken."""

    peer: Any
    stream_id: bytes
    consumed: int


@dataclass(slots=True)
class EndStream:
    """No item comes any more: wake the consumer (``failed``: the end object holds an error)."""

    stream_id: bytes
    failed: bool


@dataclass(slots=True)
class CancelProducer:
    """The generator was dropped while its call still runs: cancel the call."""

    stream_id: bytes


# --- the core ------------------------------------------------------------------------------


class StreamState:
    """One stream as its owner knows it."""

    __slots__ = (
        "acked",
        "backpressure",
        "consumed",
        "delivered",
        "dropped",
        "peer",
        "rid",
        "sent",
    )

    def __init__(self, backpressure: int) -> None:
        self.backpressure = backpressure
        self.delivered = 0  # items handed to the consumer (the next index wanted)
        self.consumed = 0  # items the consumer took
        self.acked = 0  # the last ``consumed`` told to the producer
        self.sent = 0  # items the current producer sent (it restarts at 0 on a retry)
        self.peer: Any = None  # the current producer
        self.rid = 0  # its attempt (the rid of the call's send)
        self.dropped = False


class StreamCore:
    """Streams of one owner as a state machine: ``handle(events)``."""

    def __init__(self) -> None:
        self.streams: dict[bytes, StreamState] = {}
        self._out: list[Any] = []
        self._handlers: dict[type, Callable[[Any], None]] = {
            StreamOpened: self._on_opened,
            ItemsArrived: self._on_items,
            ItemsConsumed: self._on_consumed,
            StreamEnded: self._on_ended,
            StreamDropped: self._on_dropped,
        }

    def handle(self, events: Iterable[Any]) -> list[Any]:
        """Apply ``events`` in order; returns the instructions to carry out."""
        out = self._out = []
        handlers = self._handlers
        for ev in events:
            handlers[type(ev)](ev)
        self._out = []
        return out

    def _on_opened(self, ev: StreamOpened) -> None:
        self.streams[ev.stream_id] = StreamState(max(0, ev.backpressure))

    def _on_items(self, ev: ItemsArrived) -> None:
        st = self.streams.get(ev.stream_id)
        items = ev.items
        if st is None or ev.rid < 0 or ev.rid < st.rid:  # (or of an earlier attempt)
            self._out.append(DropItems(items))
            return
        if ev.rid != st.rid or ev.peer is not st.peer:  # a new attempt: tell it how far we are
            st.peer = ev.peer
            st.rid = ev.rid
            st.sent = 0
            if st.backpressure and st.consumed:
                self._ack(st, ev.stream_id)
        st.sent = ev.index + len(items)
        seen = st.delivered - ev.index  # how many of these were delivered already
        if seen > 0:
            self._out.append(DropItems(items[:seen]))
            items = items[seen:]
        elif seen < 0:  # a gap cannot happen on one ordered connection
            logger.warning(
                "stream %s: item %d came before %d", ev.stream_id.hex(), ev.index, st.delivered
            )
            self._out.append(DropItems(items))
            return
        if items:
            st.delivered += len(items)
            self._out.append(DeliverItems(ev.stream_id, items, ev.node_id))

    def _on_consumed(self, ev: ItemsConsumed) -> None:
        st = self.streams.get(ev.stream_id)
        if st is None or ev.consumed <= st.consumed:
            return
        st.consumed = ev.consumed
        n = st.backpressure
        if not n or st.peer is None:
            return
        may_be_paused = st.sent - st.acked >= n
        if may_be_paused or st.consumed - st.acked >= max(1, n // 4):
            self._ack(st, ev.stream_id)

    def _ack(self, st: StreamState, stream_id: bytes) -> None:
        st.acked = st.consumed
        self._out.append(AckItems(st.peer, stream_id, st.consumed))

    def _on_ended(self, ev: StreamEnded) -> None:
        st = self.streams.pop(ev.stream_id, None)
        if st is not None:
            self._out.append(EndStream(ev.stream_id, ev.failed))

    def _on_dropped(self, ev: StreamDropped) -> None:
        st = self.streams.pop(ev.stream_id, None)
        if st is not None:  # still running: stop it; what it still sends is dropped
            st.dropped = True
            self._out.append(CancelProducer(ev.stream_id))

    def validate(self) -> None:
        """Check the invariants (tests switch this on)."""
        for sid, st in self.streams.items():
            assert 0 <= st.acked <= st.consumed <= st.delivered, (sid, st)
