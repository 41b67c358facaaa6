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

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._rpc import next_rid
from .errors import ObjectLostError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = ["ensure_local", "holders_of", "in_cluster"]


def in_cluster(rt: CoreRuntime) -> bool:
    return bool(rt.node.raw.get("cluster"))


def holders_of(e: Any) -> list[bytes] | None:
    """The nodes known to hold a store copy of entry ``e`` (None: not known)."""
    locs = getattr(e, "locations", None)
    return sorted(locs) if locs else None


def ensure_local(
    rt: CoreRuntime, oid: bytes, holders: Iterable[bytes] | None, owner: Any = None
) -> None:
    """Make sure this node's store has ``oid`` (blocking; any thread but the runtime's loop).

    Args:
        holders: node ids known to hold a copy (None: unknown, every peer is asked).
        owner: the owner's address, told of the new copy (None: this process).

    Raises:
        ObjectLostError: no node could provide it.
    """
    if not in_cluster(rt):
        return
    here = rt.node.node_id
    hs = [bytes(h) for h in holders] if holders is not None else []
    if here in hs:
        return
    reply = rt.store.conn.call(P.PullObjectMsg(next_rid(), oid, hs, b""))
    if reply.TAG == P.Tag.ERROR_REPLY:
        raise ObjectLostError(
            f"object {oid.hex()} could not be copied to this node: {reply.message}"
        )
    if not reply.value:  # it was here already
        return
    _report(rt, oid, owner)


def _report(rt: CoreRuntime, oid: bytes, owner: Any) -> None:
    here = rt.node.node_id
    if owner is None or bytes(owner[0]) == rt.my_id:
        with rt.lock:
            rt.table.add_location(oid, here)
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
