"""Which nodes may hold something for a process of a cluster, with no I/O.

Where ``OWNER_GONE`` goes when a process ends (:class:`OwnerReach`), and where
an owner's ``FREE_OBJECTS`` goes (:func:`copies_elsewhere`); the node daemon's
:class:`~actorcore._cluster_work.ClusterWork` sends them.

Which nodes may hold something for a process (``OWNER_GONE``'s targets): its
own node records, on the way through, every node it was sent to (a lease
redirected or spilled there, an actor forwarded or restarted there, an actor
it located there: its calls' results are stored there); and
every node records which nodes pulled a copy of an object of that owner from
it (the copy's owner is in the store entry). An object of an owner is first
stored on its node or on a node it was sent to, and every copy is pulled from
an earlier one, so following the pulls from the owner's node reaches every
copy: a node told ``OWNER_GONE`` passes it on to the nodes that pulled from it
(minus those already told, which the message lists). A process that ran only on
its own node costs no message at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import _protocol as P

__all__ = ["OwnerReach", "copies_elsewhere"]


def copies_elsewhere(msg: P.FreeObjectsMsg, here: bytes) -> dict[bytes, list[bytes]]:
    """The objects of an owner's free to free on each other node: exactly the nodes
    its owner recorded as holding a copy (its primary's node and every node that
    pulled one), never any other."""
    out: dict[bytes, list[bytes]] = {}
    for oid, holders in zip(msg.oids, msg.holders or (), strict=False):
        for node_id in holders or ():
            if bytes(node_id) != here:
                out.setdefault(bytes(node_id), []).append(oid)
    return out


class OwnerReach:
    """Which nodes may hold something for which process: where ``OWNER_GONE`` goes
    when it ends (no I/O; see the module's text)."""

    MAX_OWNERS = 100_000  # pulled-from-here records kept (oldest dropped past it)

    def __init__(self, me: bytes) -> None:
        self.me = me
        self.home: set[bytes] = set()  # the processes of this node (drivers, workers)
        self.sent: dict[bytes, set[bytes]] = {}  # process -> nodes it was sent to
        self.pulled: dict[bytes, set[bytes]] = {}  # owner -> nodes that pulled its copies here
        # OWNER_GONE received while its process was still connected here: passed on
        # when that connection ends (owner -> the nodes told already)
        self.deferred: dict[bytes, set[bytes]] = {}

    def registered(self, process_id: bytes) -> None:
        self.home.add(process_id)

    def sent_to(self, process_id: bytes, node_id: bytes) -> None:
        """``process_id`` (of this node) had work or calls sent to ``node_id``."""
        if node_id != self.me and process_id in self.home:
            nodes = self.sent.get(process_id)
            if nodes is None:
                self.sent[process_id] = {node_id}
            else:
                nodes.add(node_id)

    def served(self, owner: bytes, node_id: bytes) -> None:
        """``node_id`` pulled a copy of an object of ``owner`` from this node."""
        if node_id == self.me:
            return
        nodes = self.pulled.get(owner)
        if nodes is None:
            if len(self.pulled) >= self.MAX_OWNERS:  # (owners whose node died unseen)
                del self.pulled[next(iter(self.pulled))]
            self.pulled[owner] = {node_id}
        else:
            nodes.add(node_id)

    def ended(self, process_id: bytes) -> tuple[list[bytes], set[bytes]]:
        """A process's last connection here closed: ``(the nodes to tell, the nodes
        told already)`` (some only for a process of this node, or one whose node
        told us while it was still connected here)."""
        sent = self.sent.pop(process_id, set())
        seen = self.deferred.pop(process_id, None)
        if process_id in self.home:
            self.home.discard(process_id)
            return sorted((sent | self.pulled.pop(process_id, set())) - {self.me}), {self.me}
        if seen is not None:
            return self.told(process_id, seen), seen
        return [], set()  # its own node tells everyone who may hold something for it

    def told(self, owner: bytes, seen: set[bytes]) -> list[bytes]:
        """``OWNER_GONE`` for ``owner`` came, naming the nodes told already: the nodes
        to pass it on to."""
        nodes = self.pulled.pop(owner, set()) | self.sent.pop(owner, set())
        return sorted(nodes - seen - {self.me})
