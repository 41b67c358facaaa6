"""The worker's side of streaming generators: run the generator, send each item.

A streaming call's function returns a generator (sync or async). Each yielded
value is encoded like a task result (inline when small, through the store
when large) under a fresh object id and sent to the owner (GENERATOR_ITEM) on
the call's connection, before the call's reply, so the owner sees every item
before the end. The call's own result is the number of items. An exception
raised by the generator becomes the item at its position (an error), and the
stream ends there.

Items go out in batches: the first at once (time to first item), the next
ones queued and flushed by the worker's loop, one message per batch (a
producer faster than the wire fills batches instead of paying a frame and a
syscall per item). A batch is also flushed when it is full, before the
producer waits for acks, and at the end, before the reply. One small lock per
producer orders the flushes of the loop and of the producer's thread; nothing
is called under it but the connection's non-blocking ``send``.

A call retried on a new incarnation of its actor may come back to this worker
(the actor restarted here) under the same stream id: each message names its
attempt (the call's rid), the owner drops what an older attempt sends late,
and an actor dropped from this worker sends its items marked as nobody's
(:data:`~actorcore._protocol.DROPPED_ATTEMPT`; the owner frees them). Its call
answers that the actor is gone, so the owner retries it as the call's
``max_task_retries`` allows.

Back-pressure: with ``backpressure=N`` the producer waits before making item
``i`` while ``i - acked >= N`` (``acked`` is what the owner last said the
consumer took, ITEMS_ACK). A cancel wakes a waiting producer and stops it at
its next item; an async generator is also cancelled at its ``await``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._execution import encode_error, encode_results, encode_results_async
from ._ids import new_id
from ._vouch import Vouch
from .errors import TaskCancelledError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime
    from ._worker import Call

__all__ = ["Producer", "Producers"]

logger = logging.getLogger(__name__)

_BATCH = 256  # items per message at most
_RETRY_FLUSH_S = 0.001


class Producer:
    """One running streaming call on this worker."""

    __slots__ = (
        "acked",
        "actor_id",
        "backpressure",
        "call",
        "cancelled",
        "error",
        "event",
        "flushed",
        "lock",
        "pending",
        "scheduled",
        "waiter",
    )

    def __init__(self, call: Call, backpressure: int, actor_id: bytes | None) -> None:
        self.call = call
        self.backpressure = backpressure
        self.actor_id = actor_id
        self.acked = 0
        self.cancelled = False
        self.error: BaseException | None = None  # why it was stopped
        self.event = threading.Event()  # a sync producer waits on this
        self.waiter: asyncio.Future[None] | None = None  # an async producer on this
        self.pending: collections.deque[list[Any]] = collections.deque()  # [oid, result]
        self.flushed = 0  # items sent so far (the index of the first pending one)
        self.scheduled = False  # a flush by the loop is due
        self.lock = threading.Lock()

    def wake(self) -> None:
        """Something changed (an ack, a cancel); on the worker's loop."""
        self.event.set()
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class Producers:
    """The streaming calls running on this worker, by stream id and by task id."""

    def __init__(self, rt: CoreRuntime, vouch: Vouch | None = None) -> None:
        self.rt = rt
        self.vouch = vouch or Vouch()  # no item leaves past it (a node maybe declared dead)
        self.by_stream: dict[bytes, Producer] = {}

    def ack(self, stream_id: bytes, consumed: int) -> None:
        p = self.by_stream.get(stream_id)
        if p is not None and consumed > p.acked:
            p.acked = consumed
            p.wake()

    def cancel(self, task_id: bytes) -> bool:
        """Stop the streaming call ``task_id`` at its next item; False if none runs here."""
        for p in list(self.by_stream.values()):
            if p.call.task_id == task_id:
                p.cancelled = True
                p.wake()
                return True
        return False

    def actor_gone(self, actor_id: bytes, error: BaseException) -> None:
        """The actor was dropped from this worker: its streaming calls stop with ``error``."""
        for p in list(self.by_stream.values()):
            if p.actor_id == actor_id:
                p.error = error
                p.cancelled = True
                p.wake()

    def _open(self, call: Call, actor_id: bytes | None) -> Producer:
        p = Producer(call, call.stream - 1, actor_id)
        sid = call.return_ids[0]
        old = self.by_stream.get(sid)
        if old is not None:  # an earlier attempt of the same call: it stops
            old.cancelled = True
            old.wake()
        self.by_stream[sid] = p
        return p

    def _close(self, p: Producer) -> None:
        sid = p.call.return_ids[0]
        if self.by_stream.get(sid) is p:  # (not a later attempt's, under the same id)
            del self.by_stream[sid]

    # --- sync generators (on an executor thread) -------------------------------------------

    def drive_sync(self, call: Call, gen: Any, actor_id: bytes | None = None) -> int:
        """Run ``gen`` to its end, sending each item; returns how many were sent."""
        if not isinstance(gen, Iterator):
            raise TypeError(_not_a_generator(call, gen))
        p = self._open(call, actor_id)
        i = 0
        try:
            while True:
                self._wait_sync(p, i)
                try:
                    value = next(gen)
                except StopIteration:
                    return i
                except TaskCancelledError:
                    raise
                except Exception as e:
                    self._emit(p, [new_id(), encode_error(e, call.name)])
                    return i + 1
                self._emit(p, self._encode(call, value))
                i += 1
        finally:
            self._flush(p)
            self._close(p)
            _close_quietly(gen)

    def _wait_sync(self, p: Producer, i: int) -> None:
        n = p.backpressure
        if n and i - p.acked >= n:
            self._flush(p)  # the owner must see what we made before it can ack it
        while not p.cancelled and n and i - p.acked >= n:
            p.event.clear()
            if p.cancelled or i - p.acked < n:
                break
            p.event.wait()
        if p.cancelled:
            raise p.error or TaskCancelledError(f"streaming call {p.call.name} was cancelled")

    def _encode(self, call: Call, value: Any) -> list[Any]:
        oid = new_id()
        results, waits = encode_results(self.rt, value, [oid], call.owner, call.name)
        for ev in waits or ():  # nested refs of other owners: rare; the registration is quick
            ev.wait(30.0)
        return [oid, results[0]]

    def _emit(self, p: Producer, item: list[Any]) -> None:
        """Queue one ``[oid, result]``; the first goes at once, the rest in batches."""
        p.pending.append(item)
        if p.flushed == 0 or len(p.pending) >= _BATCH:
            self._flush(p)
        elif not p.scheduled:
            p.scheduled = True
            self.rt.call_soon(self._flush_soon, p)

    def _flush_soon(self, p: Producer) -> None:
        """The loop's flush; never waits for the producer's thread (which may be
        sending a batch to a slow reader): it looks again a little later."""
        if not p.lock.acquire(blocking=False):
            self.rt.loop.call_later(_RETRY_FLUSH_S, self._flush_soon, p)
            return
        p.scheduled = False  # before taking: an item queued from now on schedules again
        try:
            self._flush_locked(p)
        finally:
            p.lock.release()

    def _flush(self, p: Producer) -> None:
        """Send the queued items as one message (any thread)."""
        with p.lock:
            self._flush_locked(p)

    def _flush_locked(self, p: Producer) -> None:
        call = p.call
        pending = p.pending
        if not pending:
            return
        items = []
        while pending:
            items.append(pending.popleft())
        index = p.flushed
        p.flushed += len(items)
        conn = call.peer.conn
        try:
            if conn is None:
                raise ConnectionError("no connection")
            rid = call.rid if p.error is None else P.DROPPED_ATTEMPT  # (its actor was dropped)
            msg = P.GeneratorItemMsg(call.return_ids[0], index, items, self.rt.node.node_id, rid)
            if time.monotonic() >= self.vouch.until:  # (else the process ends there)
                self.vouch.wait_renewed(self.rt.config.node_ttl_s)
            conn.send(msg)
        except ConnectionError:
            p.cancelled = True  # the owner is gone: nobody reads the rest

    # --- async generators (on the loop) -----------------------------------------------------

    async def drive_async(self, call: Call, agen: Any, actor_id: bytes | None = None) -> int:
        """Run the async generator ``agen`` to its end, sending each item."""
        if not isinstance(agen, AsyncIterator):
            if isinstance(agen, Iterator):  # a sync generator from an async context
                return await asyncio.get_running_loop().run_in_executor(
                    None, self.drive_sync, call, agen, actor_id
                )
            raise TypeError(_not_a_generator(call, agen))
        p = self._open(call, actor_id)
        i = 0
        try:
            while True:
                await self._wait_async(p, i)
                try:
                    value = await agen.__anext__()
                except StopAsyncIteration:
                    return i
                except Exception as e:
                    self._emit(p, [new_id(), encode_error(e, call.name)])
                    return i + 1
                self._emit(p, await self._encode_async(call, value))
                i += 1
        finally:
            self._flush(p)
            self._close(p)
            await _aclose_quietly(agen)

    async def _encode_async(self, call: Call, value: Any) -> list[Any]:
        """:meth:`_encode` on the loop: large items go to the store without blocking it."""
        oid = new_id()
        results, waits = await encode_results_async(self.rt, value, [oid], call.owner, call.name)
        if waits:  # nested refs of other owners: wait off the loop
            await asyncio.get_running_loop().run_in_executor(None, _wait_events, waits)
        return [oid, results[0]]

    async def _wait_async(self, p: Producer, i: int) -> None:
        n = p.backpressure
        if n and i - p.acked >= n:
            self._flush(p)
        while not p.cancelled and n and i - p.acked >= n:
            p.waiter = asyncio.get_running_loop().create_future()
            await p.waiter
            p.waiter = None
        if p.cancelled:
            raise p.error or TaskCancelledError(f"streaming call {p.call.name} was cancelled")


def _not_a_generator(call: Call, value: Any) -> str:
    return (
        f"{call.name} was called with num_returns='streaming' but returned "
        f"{type(value).__name__}, not a generator; write it with `yield`"
    )


def _wait_events(events: list[Any]) -> None:
    for ev in events:
        ev.wait(30.0)


def _close_quietly(gen: Any) -> None:
    close = getattr(gen, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            logger.debug("closing a generator failed", exc_info=True)


async def _aclose_quietly(agen: Any) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            logger.debug("closing an async generator failed", exc_info=True)
