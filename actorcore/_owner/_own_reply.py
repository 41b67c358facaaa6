"""The value of a call's return read by its caller (see :mod:`actorcore._caller_read`).

``get()`` on a thread, or ``await`` on an event loop other than the runtime's,
of the return of the call this thread sent last by itself: the caller reads the
reply off the connection instead of waiting for the runtime's loop. The loop
still takes every frame read, in order, before anything queued later
(``rt.deliver_handed``), and the object gets its value there as usual. Only a
plain value with no refs in it is taken here; anything else (an error, a store
object, nested refs, another reader on the socket, a lost connection) gives
NO_REPLY, and the caller waits for the loop as before.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .._caller_read import claim_reply, read_reply
from .._refcount import INLINE, PENDING
from .._serialization import loads_payload

if TYPE_CHECKING:
    from .._runtime import CoreRuntime

__all__ = ["NO_REPLY", "last_call", "own_reply", "own_reply_async"]

NO_REPLY = object()
SELF_READ = True  # (a switch for side-by-side measurements)


class _LastCall(threading.local):
    """The last call this thread sent itself: ``(return id, peer, rid)`` or None."""

    call: tuple[bytes, Any, int] | None = None
    answered = False  # its reply came back here: the next call may go straight away too


_last = _LastCall()


def last_call() -> _LastCall:
    return _last


def _claim(rt: CoreRuntime, oid: bytes) -> tuple[Any, ...] | None:
    """``(conn, rid, waiting, hand_on)`` when ``oid`` is this thread's last direct call."""
    last = _last.call
    if last is None or last[0] != oid or not SELF_READ:
        return None
    _last.call = None
    _oid, peer, rid = last
    conn = peer.conn
    pending = peer.pending
    if conn is None or rid not in pending:
        return None
    entry = rt.table.entries.get

    def waiting() -> bool:  # the reply is still to come on this connection
        e = entry(oid)
        return rid in pending and (e is None or e.state == PENDING)

    def hand_on() -> None:
        rt.handed_conns.append(conn)
        rt.kick_handed()

    return conn, rid, waiting, hand_on


def _value(rt: CoreRuntime, oid: bytes, conn: Any, reply: Any, others: bool) -> Any:
    if reply is None or others:
        if conn.has_handed():
            rt.handed_conns.append(conn)
            rt.kick_handed()
        if reply is None:
            return NO_REPLY
    else:
        rt.handed_conns.append(conn)
        if rt.objects.quiet_watches or _watched(rt, oid):
            rt.kick_handed()  # another thread or loop waits on it: the loop delivers now
        else:
            rt._schedule_flush()  # (at the latest: any inbox drain before comes first)
    results = getattr(reply, "results", None)
    if results is None or len(results) != 1 or results[0][0] != INLINE or results[0][2]:
        rt.kick_handed()  # an error or another kind of value: the loop's way, now
        return NO_REPLY
    value, refs = loads_payload(results[0][1], oid)  # ("object <hex>" in errors)
    if refs:
        rt.register_borrows(refs, oid)
    _last.answered = True
    return value


def _watched(rt: CoreRuntime, oid: bytes) -> bool:
    """Whether a waiter is on ``oid`` (read after the reply was handed on: a waiter the
    loop registers later finds it there, see ``Inbox.drain``)."""
    e = rt.table.entries.get(oid)
    return e is not None and bool(e.waiters)


def own_reply(rt: CoreRuntime, oid: bytes, timeout: float | None) -> Any:
    """For ``get()`` off the loop: the value of ``oid``, or NO_REPLY."""
    claim = _claim(rt, oid)
    if claim is None:
        return NO_REPLY
    conn, rid, waiting, hand_on = claim
    rt.block_begin()  # (a worker gives its CPU back, a threaded actor serves another call)
    try:
        reply, others = read_reply(conn, rid, waiting, hand_on, timeout)
    except BaseException:  # (KeyboardInterrupt in the wait): what was read goes on
        if conn.has_handed():
            hand_on()
        raise
    finally:
        rt.block_end()
    return _value(rt, oid, conn, reply, others)


async def own_reply_async(rt: CoreRuntime, oid: bytes) -> Any:
    """For ``await ref`` on a loop other than the runtime's: the value, or NO_REPLY."""
    found = _claim(rt, oid)
    if found is None:
        return NO_REPLY
    conn, rid, waiting, hand_on = found
    claim = claim_reply(conn, rid, waiting, hand_on)
    if claim is None:
        return NO_REPLY
    try:
        reply, others = await claim.wait()
    except BaseException:  # cancelled: what its loop read goes on
        if conn.has_handed():
            hand_on()
        raise
    return _value(rt, oid, conn, reply, others)
