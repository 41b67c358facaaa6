"""The shell of the owner's stream core: carries its instructions out on the runtime loop.

Items arrive from workers (GENERATOR_ITEM) on the loop; consumers report
progress and drops from any thread through an :class:`Inbox`. Delivered items
become owned objects (events of the object core), like task results, and their
refs go into the consumer's :class:`StreamBuffer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _protocol as P
from .._generator import ObjectRefGenerator, StreamBuffer
from .._ref import ObjectRef
from .._refcount import FAILED
from . import _object_events as OE
from . import _streams as S
from ._inbox import Inbox, carry_out

if TYPE_CHECKING:
    from .._refcount import ObjectEntry
    from .._runtime import CoreRuntime

__all__ = ["GeneratorStreams"]

logger = logging.getLogger(__name__)


class GeneratorStreams:
    """Owner side of streaming calls: a :class:`StreamCore` fed on the runtime's loop."""

    def __init__(self, rt: CoreRuntime) -> None:
        self.rt = rt
        self.core = S.StreamCore()
        self.inbox = Inbox(rt, self._process)
        self.buffers: dict[bytes, StreamBuffer] = {}  # open streams (the loop pops ended ones)
        # opened, not yet claimed by ``generator()``: a fast stream may end (and leave
        # ``buffers``) before its caller's thread gets there; its buffer must not be lost
        self._unclaimed: dict[bytes, StreamBuffer] = {}
        self._run: dict[type, Callable[[Any], None]] = {
            S.DeliverItems: self._deliver,
            S.DropItems: self._drop,
            S.AckItems: self._ack,
            S.EndStream: self._end,
            S.CancelProducer: self._cancel,
        }

    def post(self, event: Any) -> None:
        self.inbox.post(event)

    def _process(self, events: list[Any]) -> None:
        carry_out(self.core.handle(events), self._run)

    # --- entry points ------------------------------------------------------------------------

    def open(self, stream_id: bytes, backpressure: int) -> None:
        """A streaming call is being submitted (before it is); any thread.

        Its end object must exist already: its completion ends the stream.
        """
        self.buffers[stream_id] = self._unclaimed[stream_id] = StreamBuffer()
        self.post(S.StreamOpened(stream_id, backpressure))
        rt = self.rt
        end = [(stream_id, rt.address)]
        if rt.on_loop_thread():
            rt.objects.watch(end, self._end_done)
        else:  # the end object is ours and pending: its completion wakes the loop
            rt.objects.watch_owned(end, self._end_done)

    def generator(self, end: ObjectRef, backpressure: int) -> ObjectRefGenerator:
        """The consumer's side of the stream ``end.id`` opened just before (same thread).

        The stream may have ended already (a direct send lets a short call finish
        before its caller's thread gets here): its buffer holds all it got.
        """
        buf = self._unclaimed.pop(end.id, None)
        if buf is None:  # not opened by this owner: cannot happen
            logger.error("stream %s was not opened", end.id.hex())
            buf = StreamBuffer()
            buf.end(True)
        return ObjectRefGenerator(self.rt, end, buf, backpressure)

    def _end_done(self, e: ObjectEntry) -> None:
        self.post(S.StreamEnded(e.oid, e.state == FAILED))

    def item(self, peer: Any, msg: P.GeneratorItemMsg) -> None:
        node_id = bytes(msg.node_id) if msg.node_id else None
        self.post(S.ItemsArrived(msg.stream_id, msg.start, msg.items, peer, node_id, msg.rid))

    def consumed(self, stream_id: bytes, n: int) -> None:
        self.post(S.ItemsConsumed(stream_id, n))

    def dropped(self, stream_id: bytes) -> None:
        self.post(S.StreamDropped(stream_id))

    # --- instructions -----------------------------------------------------------------------------

    def _deliver(self, ins: S.DeliverItems) -> None:
        rt = self.rt
        address = rt.address
        node_id = ins.node_id
        rt.objects.post_all(
            [
                OE.ResultArrived(oid, kind, data, nested, node_id, create=True)
                for oid, (kind, data, nested) in ins.items
            ]
        )
        refs = [ObjectRef(oid, address, _counted=True) for oid, _result in ins.items]
        buf = self.buffers.get(ins.stream_id)
        if buf is not None:  # else the refs die here, which frees their objects
            buf.push(refs)

    def _drop(self, ins: S.DropItems) -> None:
        self.rt.objects.post_all(  # no entry: freed at once
            [OE.ResultArrived(oid, kind, data, nested) for oid, (kind, data, nested) in ins.items]
        )

    def _ack(self, ins: S.AckItems) -> None:
        try:
            ins.peer.send(P.ItemsAckMsg(ins.stream_id, ins.consumed))
        except ConnectionError:
            pass  # that producer is gone; a retry is told when its first item comes

    def _end(self, ins: S.EndStream) -> None:
        buf = self.buffers.pop(ins.stream_id, None)
        if buf is not None:
            buf.end(ins.failed)

    def _cancel(self, ins: S.CancelProducer) -> None:
        self.buffers.pop(ins.stream_id, None)
        if not self.rt.closing:
            self.rt.submitter.cancel(ins.stream_id, False, False)
