"""A caller reading the reply to its own call off the connection, instead of the loop.

A thread blocked in ``get()`` on the call it just sent would otherwise wait for
the runtime's loop to wake up, read the reply, run it through the owner's cores
and wake the thread: two wake-ups and a loop turn on the way of every
synchronous call. Here the caller reads the socket itself (:func:`read_reply`,
holding the connection's ``read_lock``), and a coroutine awaiting its call on
its own event loop has that loop watch the socket (:class:`LoopClaim`).

The loop steps aside while a caller reads (it stops watching the socket until
no caller has read for a moment), and no frame is lost or reordered: every
frame a caller reads goes to the connection's ``handed`` queue, which the loop
delivers as if it had read it, before anything it reads itself and before any
event queued after it (``CoreRuntime.deliver_handed``). Frames that are not the
caller's reply (a request of the peer, another call's reply) are handed on at
once; the caller's own reply is left for the loop's next turn, its value taken
by the caller right away.
"""

from __future__ import annotations

import asyncio
import errno
import select
import time
from collections.abc import Callable
from typing import Any

from ._transport import BROKEN, READ_BACK_S, REPLY_TAGS, Connection
from .errors import ProtocolError

__all__ = ["LoopClaim", "claim_reply", "read_reply"]

_RECV_SIZE = 1 << 18
POLL_SLICE_S = 0.1  # a caller looks this often whether its reply is still to come here


def _read_some(conn: Connection, rid: int, hand_on: Callable[[], None]) -> tuple[Any, bool, bool]:
    """One read, with ``conn.read_lock`` held: ``(reply or None, others, ended)``."""
    handed = conn.handed
    try:
        data = conn.sock.recv(_RECV_SIZE)
    except (BlockingIOError, InterruptedError):
        return None, False, False
    except OSError as e:
        handed.append((BROKEN, e))
        return None, True, True
    if not data:
        handed.append((BROKEN, ConnectionResetError(errno.ECONNRESET, "peer closed")))
        return None, True, True
    try:
        frames = conn.feed(data)
    except ProtocolError as e:
        handed.append((BROKEN, e))
        return None, True, True
    mine = None
    others = False
    for frame in frames:
        msg = frame[0]
        if mine is None and msg.TAG in REPLY_TAGS and msg.rid == rid:
            mine = msg
        else:
            others = True
            if msg.TAG in REPLY_TAGS:
                conn.handed_rids.add(msg.rid)  # (before the loop can see it)
        handed.append(frame)
    if others and mine is None:
        hand_on()  # the loop must deliver them now: the reply may wait for one
    return mine, others, False


def read_reply(
    conn: Connection,
    rid: int,
    waiting: Callable[[], bool],
    hand_on: Callable[[], None],
    timeout: float | None,
) -> tuple[Any, bool]:
    """Read ``conn`` on this (non-loop) thread until the reply to ``rid`` came.

    Returns ``(reply or None, others)``: None when another reader holds the
    socket, the reply was read by someone else, the connection ended or
    ``timeout`` passed (the caller then waits the usual way); ``others``: frames
    other than the reply were read (and handed on). ``waiting()`` says whether
    the reply is still to come here; it is checked once this thread holds the
    socket (the loop may have read the reply just before) and every
    ``POLL_SLICE_S`` (the call may have failed or gone elsewhere meanwhile).
    """
    lock = conn.read_lock
    if not conn.readable_off_loop or not lock.acquire(False):
        return None, False
    mine = None
    others = False
    try:
        if not conn.readable_off_loop or rid in conn.handed_rids or not waiting():
            return None, False
        conn.caller_reads += 1
        conn.caller_reading = True
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(conn.fd, select.POLLIN)
        slice_ms = int(POLL_SLICE_S * 1000)
        while mine is None:
            ms = slice_ms
            if deadline is not None:
                ms = min(ms, max(0, int((deadline - time.monotonic()) * 1000)))
            if not poller.poll(ms):
                if conn.closed or not waiting():
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                continue
            mine, more, ended = _read_some(conn, rid, hand_on)
            others = others or more
            if ended:
                break
    finally:
        conn.caller_reading = False
        lock.release()
        conn.done_reading()
    return mine, others


class LoopClaim:
    """A coroutine's event loop (not the runtime's) watching ``conn`` for its reply.

    ``await claim.wait()`` gives ``(reply or None, others)`` like
    :func:`read_reply`. While the claim holds, the runtime's loop leaves the
    socket to this loop (unless this loop stops running: then it reads again,
    and the claim finds its reply gone within ``POLL_SLICE_S``).

    Once the reply is in, the loop keeps watching the socket for a moment
    (idle): the next call awaited on this loop (:func:`claim_reply`) takes the
    claim over without registering the socket with the loop again, and what
    comes meanwhile is read here and handed on to the runtime's loop. The
    socket goes back to the runtime's loop at the first look (every
    ``POLL_SLICE_S``) after ``READ_BACK_S`` with no call awaited here.
    """

    __slots__ = (
        "conn",
        "fut",
        "hand_on",
        "idle_since",
        "loop",
        "others",
        "registered",
        "rid",
        "timer",
        "waiting",
    )

    def __init__(
        self,
        conn: Connection,
        rid: int,
        waiting: Callable[[], bool],
        hand_on: Callable[[], None],
    ) -> None:
        self.conn = conn
        self.rid = rid
        self.waiting = waiting
        self.hand_on = hand_on
        self.loop = asyncio.get_running_loop()
        self.fut: asyncio.Future[Any] = self.loop.create_future()
        self.others = False
        self.timer: asyncio.TimerHandle | None = None
        self.registered = False  # this loop watches the socket
        self.idle_since = 0.0  # (loop time) the last reply came: no call awaited since

    def live(self) -> bool:
        """Whether this claim will read what comes (its loop runs; idle, only for
        ``READ_BACK_S``: a loop busy with other work must not hold the socket); any thread."""
        if not self.registered or not self.loop.is_running():
            return False
        return not self.fut.done() or self.loop.time() - self.idle_since < READ_BACK_S

    def dead(self) -> bool:
        """Its loop is closed (and the socket with it no longer watched there)."""
        return self.loop.is_closed()

    def _take(self, fut: asyncio.Future[Any]) -> bool:
        """Claim the reply to ``self.rid`` with ``fut`` if it is still to come and this
        loop may read it. Under the lock: the runtime's loop reads before (the reply is
        gone then) or after (it sees the claim live and steps aside), never between."""
        conn = self.conn
        if not conn.readable_off_loop or not conn.read_lock.acquire(False):
            return False
        try:
            if conn.rid_gone(self.rid) or not self.waiting():
                return False
            if conn.claim is not None and conn.claim is not self:
                return False
            self.fut = fut
            self.others = False
            conn.claim = self
            self.registered = True  # (live from now on: its loop watches it at once)
            conn.caller_reads += 1
            return True
        finally:
            conn.read_lock.release()

    def start(self) -> bool:
        """Take the socket over for this loop; False when that cannot be now."""
        if self.conn.claim is not None or not self._take(self.fut):
            return False
        self.loop.add_reader(self.conn.fd, self._readable)
        self.timer = self.loop.call_later(POLL_SLICE_S, self._check)
        return True

    def again(self, rid: int, waiting: Callable[[], bool], hand_on: Callable[[], None]) -> bool:
        """Take an idle claim over for the next reply (the socket stays registered)."""
        if not self.fut.done() or not self.registered:
            return False
        self.rid, self.waiting, self.hand_on = rid, waiting, hand_on
        return self._take(self.loop.create_future())

    async def wait(self) -> tuple[Any, bool]:
        try:
            return await self.fut
        except BaseException:  # cancelled: the socket goes back now
            self.stop()
            raise

    def stop(self) -> None:
        """Give the socket back (idempotent; on this claim's loop)."""
        conn = self.conn
        if not self.fut.done():
            self.fut.set_result((None, self.others))
        if self.registered:
            self.registered = False
            self.loop.remove_reader(conn.fd)
        if conn.claim is self:
            conn.claim = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn.done_reading()

    def _finish(self, reply: Any) -> None:
        if not self.fut.done():
            self.fut.set_result((reply, self.others))
        self.idle_since = self.loop.time()
        if reply is None:  # (the connection ended, or the reply went elsewhere)
            self.stop()

    def _readable(self) -> None:
        conn = self.conn
        idle = self.fut.done()
        if not conn.read_lock.acquire(False):
            if idle:  # the lock's holder reads it: do not spin on a readable socket
                self.stop()
            return  # the runtime's loop or a thread reads now: this fires again if need be
        try:
            conn.caller_reads += 1
            if not conn.readable_off_loop:
                reply, ended = None, True
            else:  # (idle: no reply is wanted; every frame is handed on)
                reply, more, ended = _read_some(conn, -1 if idle else self.rid, self.hand_on)
                self.others = self.others or more
        finally:
            conn.read_lock.release()
        if idle:
            if ended:
                self.stop()
        elif reply is not None or ended:
            self._finish(reply)

    def wake(self) -> None:
        """The connection ended (any thread): look now, not at the next tick."""
        try:
            self.loop.call_soon_threadsafe(self._check)
        except RuntimeError:  # its loop is closed
            pass

    def _check(self) -> None:
        self.timer = None
        if not self.registered:
            return
        if self.fut.done():  # idle: the socket goes back unless a call came meanwhile
            if not self.conn.readable_off_loop or self.loop.time() - self.idle_since >= READ_BACK_S:
                self.stop()
                return
        elif not self.conn.readable_off_loop or not self.waiting():
            self._finish(None)
            return
        self.timer = self.loop.call_later(POLL_SLICE_S, self._check)


def claim_reply(
    conn: Connection, rid: int, waiting: Callable[[], bool], hand_on: Callable[[], None]
) -> LoopClaim | None:
    """A claim of ``conn`` for the reply to ``rid`` by the running loop, or None (the
    caller then waits the usual way): this loop's idle claim taken over, or a new one."""
    c = conn.claim
    if c is not None and c.loop is asyncio.get_running_loop():
        return c if c.again(rid, waiting, hand_on) else None
    if c is not None and c.dead():
        conn.claim = None  # (left by a loop closed while idle)
    claim = LoopClaim(conn, rid, waiting, hand_on)
    return claim if claim.start() else None
