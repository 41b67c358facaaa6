"""Store copies on other nodes: a process makes a copy local before reading it.

In a cluster a store object may live on another node. Before a process reads
one (``get``, a task's arguments, ``wait(fetch_local=True)``), it asks its own
node daemon to pull it (``PULL_OBJECT`` with the holders the owner reported,
as node ids; the daemon maps them to the nodes' transfer addresses, and with
none known asks every peer). A copy pulled here is reported to the owner as a
new location (``OBJECT_LOCATION``). On a single node, or when the owner
reported this node among the holders, nothing happens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._refcount import STORE
from ._rpc import next_rid
from .errors import ObjectLostError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

PULL_WAIT_S = 300.0  # (as the blocking store connection's timeout)

__all__ = [
    "arg_sources",
    "ensure_local",
    "ensure_local_async",
    "holders_of",
    "in_cluster",
    "is_local",
    "mark_local",
    "pull_async",
]


def in_cluster(rt: CoreRuntime) -> bool:
    return bool(rt.node.raw.get("cluster"))


def holders_of(e: Any) -> list[bytes] | None:
    """The nodes known to hold a store copy of entry ``e`` (None: not known)."""
    locs = getattr(e, "locations", None)
    return sorted(locs) if locs else None


def is_local(rt: CoreRuntime, e: Any) -> bool:
    """Whether a READY entry's value is readable on this node without a pull.

    Inline values always are, and everything on a single node. A store value is
    when its known holders include this node; with none known, it is not (the
    daemon is asked, and answers at once when the copy is here).
    """
    if e.kind != STORE or not in_cluster(rt):
        return True
    return bool(e.locations) and rt.node.node_id in e.locations


def mark_local(rt: CoreRuntime, e: Any) -> None:
    """Note that ``e``'s value now has a copy on this node (any thread)."""
    rt.objects.location(e.oid, rt.node.node_id, any_entry=True)


def pull_async(rt: CoreRuntime, e: Any, done: Callable[[Any], None]) -> None:
    """Pull a READY entry's store value to this node; ``done(e)`` once it is here, or
    the pull failed (reading it then raises). Any thread."""
    oid, holders, owner = e.oid, holders_of(e) or [], e.owner

    def pulled(reply: Any) -> None:
        failed = isinstance(reply, BaseException) or reply.TAG == P.Tag.ERROR_REPLY
        if not failed:
            mark_local(rt, e)
            if reply.value:
                _report(rt, oid, owner)
        done(e)

    def start() -> None:
        try:
            msg = P.PullObjectMsg(next_rid(), oid, holders, _owner_id(rt, owner))
            rt.daemon.request(msg, pulled)
        except ConnectionError as err:
            pulled(err)

    rt.call_soon(start)


Source = tuple[bytes, list[bytes] | None, Any]  # (object id, holders, owner address)


def arg_sources(payload: Any, resolved: list[Any] | None) -> list[Source]:
    """The store objects a call's arguments are read from, with where they live."""
    out: list[Source] = []
    if payload and isinstance(payload, list | tuple) and isinstance(payload[0], int):
        owner = payload[3] if len(payload) > 3 else None
        out.append((payload[1], payload[2] if len(payload) > 2 else None, owner))
    for r in resolved or ():
        if r[1] == STORE:
            out.append((r[3], r[4] if len(r) > 4 else None, r[5] if len(r) > 5 else None))
    return out


async def ensure_local_async(rt: CoreRuntime, sources: list[Source]) -> None:
    """:func:`ensure_local` of several objects, for a loop thread (never blocks it).

    A failed pull is left for the read that follows to report.
    """
    if not in_cluster(rt):
        return
    here = rt.node.node_id
    futs = []
    for oid, holders, owner in sources:
        hs = [bytes(h) for h in holders] if holders is not None else []
        if here in hs:
            continue
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        msg = P.PullObjectMsg(next_rid(), oid, hs, _owner_id(rt, owner))
        rt.call_soon(_request, rt, msg, fut)
        futs.append((oid, owner, asyncio.wrap_future(fut)))
    for oid, owner, f in futs:
        reply = await f
        if not isinstance(reply, BaseException) and reply.TAG == P.Tag.REPLY and reply.value:
            _report(rt, oid, owner)


def _request(rt: CoreRuntime, msg: Any, fut: concurrent.futures.Future[Any]) -> None:
    try:
        rt.daemon.request(msg, fut.set_result)
    except ConnectionError as e:
        fut.set_result(e)


def ensure_local(
    rt: CoreRuntime,
    oid: bytes,
    holders: Iterable[bytes] | None,
    owner: Any = None,
    cancel: concurrent.futures.Future[None] | None = None,
) -> None:
    """Make sure this node's store has ``oid`` (blocking; any thread but the runtime's loop).

    Args:
        holders: node ids known to hold a copy (None: unknown, every peer is asked).
        owner: the owner's address, told of the new copy (None: not known).
        cancel: once done, stop waiting (the pull goes on; its copy is reported).

    A pull may take long: on the main thread (a driver's, where Ctrl-C lands)
    it goes through the runtime's loop, so that an interrupt stops the wait but
    never lands half way through the blocking store connection's read (which
    would leave it out of step) and the copy is still reported.

    Raises:
        ObjectLostError: no node could provide it.
    """
    if not in_cluster(rt):
        return
    here = rt.node.node_id
    hs = [bytes(h) for h in holders] if holders is not None else []
    if here in hs:
        return
    msg = P.PullObjectMsg(next_rid(), oid, hs, _owner_id(rt, owner))
    if cancel is not None or threading.current_thread() is threading.main_thread():
        _pull_unless(rt, msg, owner, cancel)
        return
    reply = rt.store.conn.call(msg)
    _pulled(rt, oid, owner, reply)


def _pull_unless(
    rt: CoreRuntime, msg: Any, owner: Any, cancel: concurrent.futures.Future[None] | None
) -> None:
    """:func:`ensure_local`'s pull through the runtime's loop, until ``cancel`` is done
    (or an interrupt: a KeyboardInterrupt raised in the wait)."""
    if rt.closing or rt.loop.is_closed():
        raise ObjectLostError(f"object {msg.oid.hex()} cannot be copied here: shutting down")
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    rt.call_soon(_request, rt, msg, fut)
    try:
        waits = [fut] if cancel is None else [fut, cancel]
        concurrent.futures.wait(waits, PULL_WAIT_S, concurrent.futures.FIRST_COMPLETED)
    finally:
        if not fut.done():  # the copy, if it comes, is still reported (never left unknown)
            fut.add_done_callback(lambda f: _pulled_quietly(rt, msg.oid, owner, f.result()))
    if not fut.done():
        if cancel is None or not cancel.done():
            raise ObjectLostError(
                f"object {msg.oid.hex()}: no answer to its pull in {PULL_WAIT_S:.0f} s"
            )
        return
    reply = fut.result()
    if isinstance(reply, BaseException):
        raise ObjectLostError(f"object {msg.oid.hex()} could not be copied here: {reply}")
    _pulled(rt, msg.oid, owner, reply)


def _pulled_quietly(rt: CoreRuntime, oid: bytes, owner: Any, reply: Any) -> None:
    if isinstance(reply, BaseException):
        return  # (the daemon is gone: nothing was copied)
    try:
        _pulled(rt, oid, owner, reply)
    except ObjectLostError:
        pass  # (nothing was copied: nobody waits for it any more)


def _pulled(rt: CoreRuntime, oid: bytes, owner: Any, reply: Any) -> None:
    """Carry out the daemon's answer to a pull of ``oid`` (raises if it failed)."""
    if reply.TAG == P.Tag.ERROR_REPLY:
        raise ObjectLostError(
            f"object {oid.hex()} could not be copied to this node: {reply.message}"
        )
    if not reply.value:  # it was here already
        return
    _report(rt, oid, owner)


def _owner_id(rt: CoreRuntime, owner: Any) -> bytes:
    """The owner process of a pulled copy (its store entry is freed when that process ends)."""
    return rt.my_id if owner is None else bytes(owner[0])


def _report(rt: CoreRuntime, oid: bytes, owner: Any) -> None:
    here = rt.node.node_id
    if owner is None:  # (an argument blob of an older sender: no entry tracks it)
        rt.objects.location(oid, here)
        return
    if bytes(owner[0]) == rt.my_id:
        rt.objects.location(oid, here, free_if_gone=True)
        return
    msg = P.ObjectLocationMsg(oid, here)

    def send(peer: Any) -> None:
        if isinstance(peer, BaseException):
            return
        try:
            peer.send(msg)
        except ConnectionError:
            pass

    rt.with_peer(tuple(owner), send)
