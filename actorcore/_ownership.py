"""Ownership between processes: the owner's side and the borrower's side.

An owner answers borrowers: the value of an object once it is ready
(GET_OBJECT), "I hold it too" (ADD_BORROWER) and "I let go" (REMOVE_BORROWERS).
A borrower registers with the owner of every foreign ref it unpickles, before
the object that carried the ref can go (the container stays pinned until the
owners acknowledged), and lends the refs it returns to its caller. A borrower
that needs a value asks the owner for it.

The bookkeeping itself is the sans-IO :class:`~actorcore._owner._objects.ObjectCore`;
this mixin of :class:`actorcore._runtime.CoreRuntime` turns the owner's RPCs
and other threads' calls into its events (through ``objects``, its shell).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._owner import _object_events as E
from ._refcount import ERROR, ObjectEntry
from ._rpc import DEFERRED, RpcPeer, handles
from ._serialization import exception_blob
from .errors import ObjectLostError

if TYPE_CHECKING:
    from ._owner._object_shell import ObjectShell

__all__ = ["OwnershipMixin", "wire_value"]


class OwnershipMixin:
    my_id: bytes
    objects: ObjectShell

    # --- the owner's side of borrowing -------------------------------------------------------

    @handles(P.Tag.GET_OBJECT)
    def on_get_object(self, peer: RpcPeer, msg: P.GetObjectMsg, _bufs: list[bytes]) -> Any:
        rid, oid = msg.rid, msg.oid

        def answer(e: ObjectEntry | None) -> None:
            if e is None:
                peer.reply_error(
                    rid,
                    ObjectLostError(
                        f"object {oid.hex()} is gone: its owner freed it or never had it"
                    ),
                )
            else:
                peer.reply(rid, wire_value(e))

        self.objects.post(E.ValueRequested(oid, answer))
        return DEFERRED

    @handles(P.Tag.OBJECT_LOCATION)
    def on_object_location(
        self, peer: RpcPeer, msg: P.ObjectLocationMsg, _bufs: list[bytes]
    ) -> Any:
        self.objects.post(E.LocationAdded(msg.oid, msg.node_id))
        return DEFERRED

    @handles(P.Tag.ADD_BORROWER)
    def on_add_borrower(self, peer: RpcPeer, msg: P.AddBorrowerMsg, _bufs: list[bytes]) -> Any:
        rid, oid = msg.rid, msg.oid

        def answer(ok: bool) -> None:
            if ok:
                peer.reply(rid, True)
            else:
                peer.reply_error(
                    rid,
                    ObjectLostError(f"object {oid.hex()} was freed before it could be borrowed"),
                )

        self.objects.post(E.BorrowerAdded(oid, msg.borrower[0], answer))
        return DEFERRED

    @handles(P.Tag.REMOVE_BORROWERS)
    def on_remove_borrowers(
        self, peer: RpcPeer, msg: P.RemoveBorrowersMsg, _bufs: list[bytes]
    ) -> Any:
        self.objects.post(E.BorrowersRemoved(list(msg.oids), msg.borrower[0]))
        return DEFERRED

    # --- the borrower's side (any thread) ------------------------------------------------------

    def register_borrows(self, refs: list[Any], container: bytes | None) -> Any:
        """Register this process as borrower of the foreign refs just unpickled.

        Returns a ``threading.Event`` set once every owner acknowledged (None if
        no ref is owned elsewhere). While registrations are in flight the
        container object (whose value held the refs) is pinned.
        """
        me = self.my_id
        foreign = [(r.id, r.owner) for r in refs if r.owner[0] != me]
        if not foreign:
            return None
        done = threading.Event()
        self.objects.post(E.RegisterBorrows(foreign, container, done))
        return done

    def lend_to(self, refs: list[Any], borrower: list[Any]) -> Any:
        """Refs inside a value we return to ``borrower``: make it their borrower first.

        For refs this process owns that is a local note (queued before the reply
        goes, so it is counted before any release the borrower sends); for
        others the owner is asked, and the returned Event is set once every
        owner acknowledged (None when every ref is ours).
        """
        me = self.my_id
        pairs = [(r.id, r.owner) for r in refs]
        done = threading.Event() if any(o[0] != me for _i, o in pairs) else None
        self.objects.post(E.LendRefs(pairs, tuple(borrower), done))
        return done


def wire_value(e: ObjectEntry) -> list[Any]:
    """An entry's value as sent to a borrower: ``[kind, payload, nested, locations]``."""
    data = e.data
    if e.kind == ERROR:
        data = exception_blob(data)
    nested = [[oid, list(owner)] for oid, owner in e.nested] if e.nested else None
    return [e.kind, data, nested, sorted(e.locations) if e.locations else None]
