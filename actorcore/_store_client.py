"""The object store as seen from one process (driver or worker).

Writing: ask the node daemon for a range (one round trip), copy the pickle
stream and its buffers into the shared arena, seal (one-way). Reading: open
the object (one round trip, which pins it for this process), then unpickle
with buffers that are read-only views of the arena: numpy arrays come back
without a copy. The pin is dropped when the last view of the object dies.

Two routes to the daemon. Threads that may block (a driver's main thread, a
worker's executor threads) use the blocking connection: the caller does the
socket I/O itself. A thread running an event loop must never wait on the
daemon, which may be spilling for seconds: it uses the runtime's async daemon
connection (:meth:`StoreClient.open_then`, :meth:`StoreClient.put_then` and
the coroutine :meth:`StoreClient.open_async`); replies arrive on the runtime
loop and are handed to the waiting loop.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actorcore.store import Arena, decode_meta, encode_meta, layout

from . import _protocol as P
from ._mailbox import CANCEL_SIGNAL
from ._rpc import error_from_reply, next_rid
from ._serialization import Serialized, deserialize
from .errors import ObjectLostError

if TYPE_CHECKING:
    import numpy as np

    from ._rpc import RpcPeer
    from ._sync_client import SyncClient

__all__ = ["StoreClient", "allow_interrupts", "defer_interrupts", "settle_on"]

# Writes up to this size are copied on the runtime loop; larger ones on a thread.
WRITE_ON_LOOP_MAX = 1 << 20

Holders = list[Any]  # numpy arrays over the arena (store._arena.Arena.holder)


_CANCEL = {CANCEL_SIGNAL}


class _Held:
    """What :func:`defer_interrupts` changed, for :func:`allow_interrupts` to undo."""

    __slots__ = ("caught", "handler", "mask")

    def __init__(self) -> None:
        self.handler: Any = None  # the program's SIGINT handler while ours records
        self.mask: Any = None
        self.caught: list[Any] = []  # frames of the Ctrl-Cs held meanwhile

    def record(self, _signum: int, frame: Any) -> None:
        self.caught.append(frame)


def defer_interrupts() -> _Held | None:
    """Hold a task's cancel (a signal to the main thread) and Ctrl-C from now on;
    returns what :func:`allow_interrupts` takes (None off the main thread: nothing held).

    A store call on the blocking connection pins or allocates on the daemon's
    side: an interrupt raised while it waits for the reply would lose the reply
    (and with it the pin's release, or the new range's abort) for as long as
    the process lives, or land half way through a frame read. The cancel signal
    stays pending meanwhile and a Ctrl-C is recorded by a stand-in handler; both
    land as soon as they are allowed again, once the holder's finalizer (or the
    abort) is in place.
    """
    if threading.get_ident() != threading.main_thread().ident:
        return None
    held = _Held()
    handler = signal.getsignal(signal.SIGINT)
    try:
        if callable(handler):
            held.handler = handler  # (first: the except below puts it back)
            signal.signal(signal.SIGINT, held.record)
        held.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CANCEL)
    except BaseException:  # a cancel that arrived just before: nothing stays held
        held.mask = held.mask or ()
        allow_interrupts(held)
        raise
    return held


def allow_interrupts(held: _Held | None) -> None:
    """Undo :func:`defer_interrupts`: a cancel or a Ctrl-C held meanwhile lands here."""
    if held is None:
        return
    try:
        if CANCEL_SIGNAL not in (held.mask or ()):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _CANCEL)
    finally:
        try:
            if held.handler is not None:
                signal.signal(signal.SIGINT, held.handler)
        finally:
            if held.caught and held.handler is not None:
                held.handler(signal.SIGINT, held.caught[0])


def settle_on(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any) -> None:
    """Resolve ``fut`` (of ``loop``) with ``result`` (an exception fails it); any thread."""
    if asyncio._get_running_loop() is loop:
        _settle(fut, result)
        return
    try:
        loop.call_soon_threadsafe(_settle, fut, result)
    except RuntimeError:
        pass  # that loop is closed: nobody waits any more


def _settle(fut: asyncio.Future[Any], result: Any) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


class StoreClient:
    def __init__(
        self,
        arena_path: str,
        capacity: int,
        conn: SyncClient,
        my_id: bytes,
        cache_bytes: int | None = None,
    ) -> None:
        self.arena = Arena(arena_path, capacity)
        self.conn = conn
        self.my_id = my_id
        self._holders: weakref.WeakValueDictionary[bytes, np.ndarray] = (
            weakref.WeakValueDictionary()
        )
        # The read cache: recently read objects stay mapped and pinned (strong
        # refs to their holders, least recently read first), so that reading
        # one again needs no round trip. The daemon revokes these pins
        # (:meth:`revoke`) when the object is freed or the store needs room.
        self.cache_bytes = capacity // 8 if cache_bytes is None else cache_bytes
        self._cache: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()
        self._meta: dict[int, tuple[int, list[list[int]]]] = {}
        self.released: collections.deque[bytes] = collections.deque()
        self.on_release: Any = None  # set by the runtime: schedules a flush
        # the async route (set by the runtime once its daemon connection is up)
        self.daemon: RpcPeer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._writes: set[asyncio.Future[Any]] = set()
        self._closing = False  # close() ran; the connection lives on while views do

    def attach(self, daemon: RpcPeer, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``daemon`` (replies on ``loop``, the runtime's) for calls from loop threads."""
        self.daemon = daemon
        self.loop = loop

    def put(self, oid: bytes, ser: Serialized, owner_id: bytes) -> int:
        """Write a serialized value as object ``oid``; returns its size in the store.

        Raises:
            ObjectStoreFullError: no room even after spilling.
        """
        raws = [b.raw() for b in ser.buffers]
        total, spans = layout(len(ser.stream), [r.nbytes for r in raws])
        held = defer_interrupts()  # a range handed out is always sealed or aborted
        offset = None
        try:
            reply = self.conn.call(
                P.CreateObjectMsg(next_rid(), oid, total, [owner_id]), self._unpins()
            )
            if reply.TAG == P.Tag.ERROR_REPLY:
                raise error_from_reply(reply)
            offset = reply.value
            allow, held = held, None
            allow_interrupts(allow)  # a cancel or Ctrl-C held meanwhile lands here: aborted
            self.arena.write(offset, ser.stream, raws, spans)
            held = defer_interrupts()
            self.conn.send(P.SealObjectMsg(0, oid, encode_meta(len(ser.stream), spans)))
            offset = None
        except BaseException:
            if offset is not None:
                if held is None:
                    held = defer_interrupts()
                self.conn.send(P.AbortObjectMsg(oid))
            raise
        finally:
            allow_interrupts(held)
        return total

    def _holder(self, oid: bytes) -> tuple[np.ndarray, tuple[int, list[list[int]]]]:
        holder = self._holders.get(oid)
        if holder is not None:
            meta = self._meta.get(id(holder))
            if meta is not None:
                if oid in self._cache:
                    self._touch(oid)
                return holder, meta
        held = defer_interrupts()  # the pin's release is in place before a cancel lands
        try:
            reply = self.conn.call(P.OpenObjectsMsg(next_rid(), [oid]), self._unpins())
            holder = self._opened([oid], reply)[0]
        except BaseException:
            allow_interrupts(held)
            raise
        try:
            allow_interrupts(held)  # a cancel or Ctrl-C held meanwhile lands here
        except BaseException:
            del holder  # (not kept alive by the traceback: its pin goes now)
            raise
        return holder, self._meta[id(holder)]

    def _cached(self, oid: bytes) -> np.ndarray | None:
        holder = self._holders.get(oid)
        if holder is not None and id(holder) in self._meta:
            if oid in self._cache:
                self._touch(oid)
            return holder
        return None

    def _opened(self, oids: list[bytes], reply: Any) -> Holders:
        """Map what the daemon opened for us (each pinned until its holder dies)."""
        if isinstance(reply, BaseException):
            raise reply
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        holders = []
        for oid, loc in zip(oids, reply.value, strict=True):
            if loc is None:
                raise ObjectLostError(
                    f"object {oid.hex()} is not in the object store (freed, or lost with its node)"
                )
            offset, size, meta_blob = loc
            holder = self.arena.holder(offset, size)
            key = id(holder)
            self._meta[key] = decode_meta(meta_blob)
            self._holders[oid] = holder
            weakref.finalize(holder, self._release, oid, key)
            holders.append(holder)
            self._keep(oid, holder)
        return holders

    # --- the read cache -------------------------------------------------------------------

    def _keep(self, oid: bytes, holder: Any) -> None:
        size = holder.nbytes
        if size > self.cache_bytes:
            return
        dropped = []
        with self._cache_lock:
            if oid in self._cache:
                return
            self._cache[oid] = holder
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _old, h = self._cache.popitem(last=False)
                self._cached_bytes -= h.nbytes
                dropped.append(h)
        del dropped  # outside the lock: the last ref may run a holder's finalizer

    def _touch(self, oid: bytes) -> None:
        with self._cache_lock:
            if oid in self._cache:
                self._cache.move_to_end(oid)

    def revoke(self, oids: list[bytes]) -> None:
        """Drop the read cache's pins on ``oids`` (views the program still holds
        keep theirs); the releases queue as usual (:meth:`take_released`)."""
        dropped = []
        with self._cache_lock:
            for oid in oids:
                h = self._cache.pop(oid, None)
                if h is not None:
                    self._cached_bytes -= h.nbytes
                    dropped.append(h)
        del dropped

    def forget(self, oids: list[bytes]) -> None:
        """This process frees ``oids``: its read cache lets go of them first."""
        if self._cache:
            self.revoke(oids)

    # --- the async route (loop threads) ---------------------------------------------------

    def open_then(self, oids: list[bytes], done: Callable[[Any], None]) -> None:
        """Open (map and pin) objects without blocking this thread.

        ``done`` gets the holders (keep them alive while reading: :meth:`get`
        then finds the mapping) or an exception; it runs here at once when all
        are mapped already, else on the runtime loop.
        """
        held = {oid: h for oid in oids if (h := self._cached(oid)) is not None}
        missing = [oid for oid in oids if oid not in held]
        if not missing:
            done([held[oid] for oid in oids])
            return

        def opened(reply: Any) -> None:
            try:
                fresh = dict(zip(missing, self._opened(missing, reply), strict=True))
            except BaseException as e:
                done(e)
                return
            done([held.get(oid, fresh.get(oid)) for oid in oids])

        try:
            self._request(P.OpenObjectsMsg(next_rid(), missing), opened)
        except ConnectionError as e:
            done(e)

    async def open_async(self, oids: list[bytes]) -> Holders:
        """:meth:`open_then` for a coroutine on any loop; cancelling it drops the pins."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Holders] = loop.create_future()
        self.open_then(oids, lambda result: settle_on(loop, fut, result))
        return await fut

    def put_then(
        self, oid: bytes, ser: Serialized, owner_id: bytes, done: Callable[[Any], None]
    ) -> None:
        """Write ``ser`` as object ``oid`` without blocking this thread.

        ``done`` runs on the runtime loop with the size in the store once the
        object is sealed, or with the exception (``ObjectStoreFullError``...).
        """
        raws = [b.raw() for b in ser.buffers]
        total, spans = layout(len(ser.stream), [r.nbytes for r in raws])

        def created(reply: Any) -> None:
            if isinstance(reply, BaseException):
                done(reply)
            elif reply.TAG == P.Tag.ERROR_REPLY:
                done(error_from_reply(reply))
            elif total <= WRITE_ON_LOOP_MAX:
                done(self._write_and_seal(oid, reply.value, ser.stream, raws, spans, total))
            else:
                self._write_on_thread(oid, reply.value, ser.stream, raws, spans, total, done)

        try:
            self._request(P.CreateObjectMsg(next_rid(), oid, total, [owner_id]), created)
        except ConnectionError as e:
            done(e)

    def _write_on_thread(
        self,
        oid: bytes,
        offset: int,
        stream: bytes,
        raws: list[Any],
        spans: Any,
        total: int,
        done: Callable[[Any], None],
    ) -> None:
        assert self.loop is not None
        fut = self.loop.run_in_executor(
            None, self._write_and_seal, oid, offset, stream, raws, spans, total
        )
        self._writes.add(fut)

        def written(f: asyncio.Future[Any]) -> None:
            self._writes.discard(f)
            if f.cancelled():
                done(ObjectLostError(f"writing object {oid.hex()} was cancelled (shutdown)"))
            else:
                done(f.exception() if f.exception() is not None else f.result())

        fut.add_done_callback(written)

    def _write_and_seal(
        self, oid: bytes, offset: int, stream: bytes, raws: list[Any], spans: Any, total: int
    ) -> Any:
        """Copy into the arena and seal; returns the size, or the exception (aborted)."""
        assert self.daemon is not None
        try:
            self.arena.write(offset, stream, raws, spans)
            self.daemon.send(P.SealObjectMsg(0, oid, encode_meta(len(stream), spans)))
        except Exception as e:
            try:
                self.daemon.send(P.AbortObjectMsg(oid))
            except ConnectionError:
                pass
            return e
        return total

    def _request(self, msg: Any, done: Callable[[Any], None]) -> None:
        daemon = self.daemon
        if daemon is None:
            raise ConnectionError("the store's async route is not attached")
        unpins = self._unpins()
        if unpins is not None:
            daemon.send(unpins)  # counted before the daemon makes room for this request
        daemon.request(msg, done)

    def get(self, oid: bytes, where: str = "value") -> tuple[Any, list[Any]]:
        """Read object ``oid``; returns the value and the refs found inside.

        While a view of the object from an earlier read is alive, or the read
        cache still holds it, the mapping is reused with no round trip;
        otherwise the daemon is asked (and pins it for this process). The cache's
        pins are revoked by the daemon when the object is freed or the store
        needs their room, so no read ever sees freed memory.
        """
        holder, (stream_len, spans) = self._holder(oid)
        mv = holder.data  # views of it keep `holder` (and the pin) alive
        buffers = [mv[o : o + n] for o, n in spans]
        return deserialize(mv[:stream_len], buffers, where)

    def _release(self, oid: bytes, key: int) -> None:
        # Runs in whatever thread dropped the last view: only queue work here.
        self._meta.pop(key, None)
        self.released.append(oid)
        cb = self.on_release
        if cb is not None:
            cb()
        elif self._closing and not self._meta:
            self.conn.close()  # the last view held past close() died: its pins go

    def _unpins(self) -> Any:
        """Unpins queued by dead views, to go first on this connection (in the same
        write), so the daemon counts them before it makes room for what we ask next."""
        oids = self.take_released()
        return P.ReleaseObjectsMsg(oids) if oids else None

    def take_released(self) -> list[bytes]:
        out = []
        released = self.released
        while released:
            out.append(released.popleft())
        return out

    def close(self) -> None:
        """Let go of the store. Views the program still holds keep their bytes: while
        any is alive the store connection stays open (the daemon keeps a process's
        pins while it is connected) and closes when the last one dies; on a node the
        process merely attached to, the daemon outlives it and would reuse the ranges."""
        with self._cache_lock:
            dropped = list(self._cache.values())
            self._cache.clear()
            self._cached_bytes = 0
        del dropped
        for fut in list(self._writes):
            fut.cancel()
        self.on_release = None  # the runtime's flush is gone with it
        self._closing = True
        if not self._meta:
            self.conn.close()
        self.arena.close()  # (the mapping stays while views are alive)
