"""Ownership between processes: the owner's side and the borrower's side.

An owner answers borrowers: the value of an object once it is ready
(GET_OBJECT), "I hold it too" (ADD_BORROWER) and "I let go" (REMOVE_BORROWERS).
A borrower registers with the owner of every foreign ref it unpickles, before
the object that carried the ref can go (the container stays pinned until the
owners acknowledged), and lends the refs it returns to its caller. A borrower
that needs a value asks the owner for it.

A mixin of :class:`actorcore._runtime.CoreRuntime`, which provides ``lock``,
``table``, ``address``, ``with_peer`` and ``execute``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._ids import new_id
from ._refcount import ERROR, INLINE, ObjectEntry, wake
from ._rpc import DEFERRED, RpcPeer, handles, next_rid
from ._serialization import exception_blob, load_error
from .errors import ObjectLostError, OwnerDiedError

__all__ = ["OwnershipMixin", "wire_value"]


class OwnershipMixin:
    lock: Any
    table: Any
    address: Any
    my_id: bytes

    if TYPE_CHECKING:  # provided by CoreRuntime

        def with_peer(self, address: Any, cb: Callable[[Any], None]) -> None: ...

        def execute(self, instrs: list[Any]) -> None: ...

    # --- the owner's side of borrowing -------------------------------------------------------

    @handles(P.Tag.GET_OBJECT)
    def on_get_object(self, peer: RpcPeer, msg: P.GetObjectMsg, _bufs: list[bytes]) -> Any:
        with self.lock:
            e = self.table.entries.get(msg.oid)
            if e is None:
                raise ObjectLostError(
                    f"object {msg.oid.hex()} is gone: its owner freed it or never had it"
                )
            if self.table.add_waiter(e, lambda e, rid=msg.rid: peer.reply(rid, wire_value(e))):
                return DEFERRED
            return wire_value(e)

    @handles(P.Tag.OBJECT_LOCATION)
    def on_object_location(
        self, peer: RpcPeer, msg: P.ObjectLocationMsg, _bufs: list[bytes]
    ) -> Any:
        with self.lock:
            self.table.add_location(msg.oid, msg.node_id)
        return DEFERRED

    @handles(P.Tag.ADD_BORROWER)
    def on_add_borrower(self, peer: RpcPeer, msg: P.AddBorrowerMsg, _bufs: list[bytes]) -> bool:
        with self.lock:
            ok = self.table.add_borrower(msg.oid, msg.borrower[0])
        if not ok:
            raise ObjectLostError(f"object {msg.oid.hex()} was freed before it could be borrowed")
        return True

    @handles(P.Tag.REMOVE_BORROWERS)
    def on_remove_borrowers(
        self, peer: RpcPeer, msg: P.RemoveBorrowersMsg, _bufs: list[bytes]
    ) -> Any:
        with self.lock:
            instrs = self.table.remove_borrower(msg.oids, msg.borrower[0])
        self.execute(instrs)
        return DEFERRED

    def register_borrows(self, refs: list[Any], container: bytes | None) -> Any:
        """Register this process as borrower of the foreign refs just unpickled.

        Returns a ``threading.Event`` set once every owner acknowledged (None if
        there was nothing to do). While registrations are in flight the
        container object (whose value held the refs) is pinned.
        """
        todo: list[ObjectEntry] = []
        with self.lock:
            for ref in refs:
                e = self.table.entries.get(ref.id)
                if e is not None and not e.registered:
                    e.registered = True
                    todo.append(e)
            if not todo:
                return None
            if container is not None:
                self.table.add_submitted([container])
        done = threading.Event()
        left = [len(todo)]

        def acked(_reply: Any) -> None:
            with self.lock:
                left[0] -= 1
                finished = left[0] == 0
            if finished:
                if container is not None:
                    with self.lock:
                        instrs = self.table.remove_submitted([container])
                    self.execute(instrs)
                done.set()

        for e in todo:
            msg = P.AddBorrowerMsg(next_rid(), e.oid, list(self.address))
            self.with_peer(e.owner, functools.partial(self._request_or_fail, msg=msg, cb=acked))
        return done

    def adopt_result(
        self, oid: bytes, kind: int, data: Any, nested: Any, wakes: list[Any] | None = None
    ) -> None:
        """Take a task's or call's result for ``oid`` (under the lock).

        The refs nested in it live as long as it does. The worker registered us
        as their borrower before replying (so no release could overtake the
        reply); for refs we own that registration is dropped again here, the
        containment counting for it. With ``wakes``, the object's waiters are
        appended to it as ``(waiters, entry)`` (to run once the lock is let go)
        instead of being run here. A result nobody wants any more goes through
        a stand-in entry that is dropped at once, which frees its store copy and
        releases its nested refs the usual way.
        """
        table = self.table
        e = table.entries.get(oid)
        unwanted = e is None
        if e is None:
            e = table.create_owned(oid, self.address)
            e.local = 1
        if kind == ERROR:
            data = load_error(data)
        waiters = table.complete(e, kind, data)
        if wakes is None:
            wake(waiters, e)
        elif waiters:
            wakes.append((waiters, e))
        if nested:
            pairs = [(n[0], tuple(n[1])) for n in nested]
            table.set_nested(oid, pairs, registered=True)
            mine = [inner for inner, owner in pairs if owner[0] == self.my_id]
            if mine:
                self.execute(table.remove_borrower(mine, self.my_id))
        if unwanted:
            self.execute(table.remove_local([oid]))

    def discard_result(self, nested: Any) -> None:
        """Let go of the refs nested in a result that will not be used (a retried attempt)."""
        if nested:
            stand_in = new_id()
            self.adopt_result(stand_in, INLINE, b"", nested)
            self.execute(self.table.remove_local([stand_in]))

    def lend_to(self, refs: list[Any], borrower: list[Any]) -> Any:
        """Refs inside a value we return to ``borrower``: make it their borrower first.

        For refs this process owns that is a local note; for others the owner
        is asked, and the returned Event is set once every owner acknowledged.
        """
        foreign = []
        with self.lock:
            for r in refs:
                if r.owner[0] == self.my_id:
                    self.table.add_borrower(r.id, borrower[0])
                else:
                    foreign.append(r)
        if not foreign:
            return None
        done = threading.Event()
        left = [len(foreign)]

        def acked(_reply: Any) -> None:
            with self.lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        for r in foreign:
            msg = P.AddBorrowerMsg(next_rid(), r.id, list(borrower))
            self.with_peer(r.owner, functools.partial(self._request_or_fail, msg=msg, cb=acked))
        return done

    def _request_or_fail(self, peer: Any, msg: Any, cb: Callable[[Any], None]) -> None:
        if isinstance(peer, BaseException):
            cb(peer)
            return
        try:
            peer.request(msg, cb)
        except ConnectionError as e:
            cb(e)

    # --- fetching values owned elsewhere ------------------------------------------------------

    def fetch(self, e: ObjectEntry) -> None:
        """Ask the owner for a borrowed object's value (under the lock)."""
        if e.fetching or e.owned:
            return
        e.fetching = True
        oid = e.oid
        self.with_peer(e.owner, lambda p: self._request_value(p, oid))

    def _request_value(self, peer: Any, oid: bytes) -> None:
        if isinstance(peer, BaseException):
            self._fetched(oid, peer)
            return
        try:
            peer.request(P.GetObjectMsg(next_rid(), oid), lambda r: self._fetched(oid, r))
        except ConnectionError as e:
            self._fetched(oid, e)

    def _fetched(self, oid: bytes, reply: Any) -> None:
        with self.lock:
            e = self.table.entries.get(oid)
            if e is None:
                return
            waiters = self._complete_fetched(e, reply)
        wake(waiters, e)  # not under the lock: waiters may take it, or block

    def _complete_fetched(self, e: ObjectEntry, reply: Any) -> list[Any]:
        """Store the owner's answer in a borrowed entry (under the lock); returns its waiters."""
        if isinstance(reply, BaseException):  # the owner cannot be reached: it died
            err: ObjectLostError = OwnerDiedError(
                f"object {e.oid.hex()} is lost: its owner {bytes(e.owner[0]).hex()} "
                f"(the process that created it) died or cannot be reached ({reply})"
            )
            return self.table.complete(e, ERROR, err)
        if reply.TAG == P.Tag.ERROR_REPLY:
            err = ObjectLostError(
                f"object {e.oid.hex()} is lost: its owner {bytes(e.owner[0]).hex()} "
                f"could not provide it ({reply.message})"
            )
            return self.table.complete(e, ERROR, err)
        kind, data, _nested, *rest = reply.value
        if kind == ERROR:
            data = load_error(data)
        if rest and rest[0]:  # the nodes holding its store copies
            e.locations = {bytes(n) for n in rest[0]}
        return self.table.complete(e, kind, data)


def wire_value(e: ObjectEntry) -> list[Any]:
    """An entry's value as sent to a borrower: ``[kind, payload, nested, locations]``."""
    data = e.data
    if e.kind == ERROR:
        data = exception_blob(data)
    nested = [[oid, list(owner)] for oid, owner in e.nested] if e.nested else None
    return [e.kind, data, nested, sorted(e.locations) if e.locations else None]
