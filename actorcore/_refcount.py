"""The object table of one process: values and reference counts. No I/O.

Every object this process knows has one :class:`ObjectEntry`. For an object
this process *owns* (it called ``.remote()`` or ``put``) the entry counts:

* ``local``      live ObjectRef instances in this process,
* ``submitted``  pending tasks of this process that take it as an argument,
* ``contained``  live objects of this process that hold it nested inside,
* ``borrowers``  other processes that hold it (they said so with ADD_BORROWER).

A *borrowed* entry counts the same things for this process alone; while its
total is above zero this process is registered as a borrower at the owner.
When a total reaches zero the entry goes and the table returns what to do:
free the store copy, tell the owner this borrower is done, and release the
refs nested inside.

Values: PENDING until a task's result or a fetched value arrives; then READY
with an inline payload or a note that it lives in the store, or FAILED with an
exception. Waiters are callbacks run once the state leaves PENDING.

The table is the state of :class:`actorcore._owner._objects.ObjectCore`, changed
only on the runtime's loop; other threads may read an entry's value once its
state left PENDING (``complete`` sets the state last).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACTOR",
    "ERROR",
    "FAILED",
    "INLINE",
    "PENDING",
    "READY",
    "STORE",
    "ActorOutOfScope",
    "FreeStore",
    "ObjectEntry",
    "ObjectTable",
    "ReleaseBorrow",
    "wake",
]

logger = logging.getLogger(__name__)

PENDING = 0
READY = 1
FAILED = 2

INLINE = 0  # value kinds on the wire and in entries
STORE = 1
ERROR = 2
ACTOR = 3  # the entry stands for an actor handle, counted like a ref


@dataclass(frozen=True, slots=True)
class FreeStore:
    """Tell the node's store that the owner let go of this object; ``holders`` are
    the nodes known to hold a copy (its node daemon frees those, and no other)."""

    oid: bytes
    holders: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ReleaseBorrow:
    """Tell ``owner`` that this process no longer borrows ``oid``."""

    oid: bytes
    owner: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ActorOutOfScope:
    """No handle to this actor is left anywhere: its owner may end it."""

    actor_id: bytes


Instruction = FreeStore | ReleaseBorrow | ActorOutOfScope


class ObjectEntry:
    __slots__ = (
        "borrowers",
        "contained",
        "data",
        "fetching",
        "kind",
        "local",
        "locations",
        "nested",
        "oid",
        "owned",
        "owner",
        "registered",
        "state",
        "submitted",
        "waiters",
    )

    def __init__(self, oid: bytes, owner: tuple[Any, ...], owned: bool) -> None:
        self.oid = oid
        self.owner = owner
        self.owned = owned
        self.local = 0
        self.submitted = 0
        self.contained = 0
        self.borrowers: set[bytes] | None = None
        self.registered = owned
        self.state = PENDING
        self.kind = INLINE
        self.data: Any = None
        # one waiter bare (the common case: one object fewer per pending entry), or a list
        self.waiters: Callable[[ObjectEntry], None] | list[Callable[[ObjectEntry], None]] | None
        self.waiters = None
        self.nested: list[tuple[bytes, tuple[Any, ...]]] | None = None
        self.fetching = False
        self.locations: set[bytes] | None = None  # nodes holding a store copy (owned objects)

    def total(self) -> int:
        return (
            self.local
            + self.submitted
            + self.contained
            + (len(self.borrowers) if self.borrowers else 0)
        )

    def __repr__(self) -> str:
        return (
            f"<ObjectEntry {self.oid.hex()} owned={self.owned} state={self.state} "
            f"local={self.local} submitted={self.submitted} contained={self.contained} "
            f"borrowers={len(self.borrowers or ())}>"
        )


class ObjectTable:
    """Values and reference counts of the objects one process knows."""

    def __init__(self, my_id: bytes) -> None:
        self.my_id = my_id
        self.entries: dict[bytes, ObjectEntry] = {}
        self.borrowed_by: dict[bytes, set[bytes]] = {}  # peer id -> oids it borrows

    # --- creation ----------------------------------------------------------------------

    def create_owned(self, oid: bytes, owner: tuple[Any, ...]) -> ObjectEntry:
        e = ObjectEntry(oid, owner, True)
        self.entries[oid] = e
        return e

    def add_local(self, oid: bytes, owner: tuple[Any, ...]) -> ObjectEntry:
        """A new ObjectRef instance; creates a borrowed entry for an unknown object."""
        e = self.entries.get(oid)
        if e is None:
            e = ObjectEntry(oid, owner, owner[0] == self.my_id)
            self.entries[oid] = e
        e.local += 1
        return e

    # --- counts ------------------------------------------------------------------------

    def remove_local(self, oids: Iterable[bytes]) -> list[Instruction]:
        out: list[Instruction] = []
        entries = self.entries
        for oid in oids:
            e = entries.get(oid)
            if e is None:
                continue
            e.local -= 1
            if e.local <= 0 and e.total() <= 0:
                self._drop(e, out)
        return out

    def remove_local_last(self, e: ObjectEntry) -> list[Instruction]:
        """Drop ``e``, whose counts all reached zero (the fast path of ``remove_local``)."""
        out: list[Instruction] = []
        self._drop(e, out)
        return out

    def add_submitted(self, oids: Iterable[bytes]) -> None:
        for oid in oids:
            e = self.entries.get(oid)
            if e is not None:
                e.submitted += 1

    def remove_submitted(self, oids: Iterable[bytes]) -> list[Instruction]:
        out: list[Instruction] = []
        for oid in oids:
            e = self.entries.get(oid)
            if e is None:
                continue
            e.submitted -= 1
            if e.total() <= 0:
                self._drop(e, out)
        return out

    def add_borrower(self, oid: bytes, peer: bytes) -> bool:
        """Record that ``peer`` holds ``oid``; False if the object is already gone."""
        e = self.entries.get(oid)
        if e is None or not e.owned:
            return False
        if e.borrowers is None:
            e.borrowers = set()
        e.borrowers.add(peer)
        self.borrowed_by.setdefault(peer, set()).add(oid)
        return True

    def remove_borrower(self, oids: Iterable[bytes], peer: bytes) -> list[Instruction]:
        out: list[Instruction] = []
        mine = self.borrowed_by.get(peer)
        for oid in oids:
            e = self.entries.get(oid)
            if mine is not None:
                mine.discard(oid)
            if e is None or not e.borrowers or peer not in e.borrowers:
                continue
            e.borrowers.discard(peer)
            if e.total() <= 0:
                self._drop(e, out)
        if mine is not None and not mine:
            del self.borrowed_by[peer]
        return out

    def peer_gone(self, peer: bytes) -> list[Instruction]:
        """A borrowing process ended: forget every borrow it held."""
        oids = self.borrowed_by.pop(peer, set())
        out: list[Instruction] = []
        for oid in oids:
            e = self.entries.get(oid)
            if e is not None and e.borrowers:
                e.borrowers.discard(peer)
                if e.total() <= 0:
                    self._drop(e, out)
        return out

    def set_nested(
        self, oid: bytes, nested: list[tuple[bytes, tuple[Any, ...]]], registered: bool
    ) -> None:
        """``oid`` holds these refs: they stay alive while it does.

        ``registered``: for borrowed inner refs, whether this process is already
        registered as their borrower (a producer registered it on our behalf).
        """
        e = self.entries.get(oid)
        if e is None or not nested:
            return
        e.nested = nested
        for inner, owner in nested:
            ie = self.entries.get(inner)
            if ie is None:
                ie = ObjectEntry(inner, owner, owner[0] == self.my_id)
                ie.registered = ie.owned or registered
                self.entries[inner] = ie
            ie.contained += 1

    def _drop(self, e: ObjectEntry, out: list[Instruction]) -> None:
        del self.entries[e.oid]
        if e.owned:
            if e.state == READY and e.kind == STORE:
                out.append(FreeStore(e.oid, tuple(sorted(e.locations or ()))))
            elif e.kind == ACTOR:
                out.append(ActorOutOfScope(e.oid))
        elif e.registered:
            out.append(ReleaseBorrow(e.oid, e.owner))
        if e.nested:
            for inner, _owner in e.nested:
                ie = self.entries.get(inner)
                if ie is None:
                    continue
                ie.contained -= 1
                if ie.total() <= 0:
                    self._drop(ie, out)
        if e.waiters:
            # nobody can wait on an object nobody refers to; drop silently
            e.waiters = None

    # --- values --------------------------------------------------------------------------

    def complete(self, e: ObjectEntry, kind: int, data: Any) -> list[Callable[[ObjectEntry], None]]:
        """Store the value; returns the waiters to call (outside any lock if possible)."""
        if e.state != PENDING:
            return []
        # the state last: other threads read kind and data once they see it change
        e.kind = kind
        e.data = data
        e.fetching = False
        e.state = FAILED if kind == ERROR else READY
        waiters, e.waiters = e.waiters, None
        if waiters is None:
            return []
        return waiters if type(waiters) is list else [waiters]  # type: ignore[list-item]

    # --- locations -------------------------------------------------------------------------

    def add_location(self, oid: bytes, node_id: bytes) -> None:
        """A store copy of the owned object ``oid`` is on node ``node_id``."""
        e = self.entries.get(oid)
        if e is not None and e.owned:
            if e.locations is None:
                e.locations = {node_id}
            else:
                e.locations.add(node_id)

    def locations_of(self, oid: bytes) -> frozenset[bytes]:
        """The nodes known to hold a store copy of ``oid`` (empty if none or unknown)."""
        e = self.entries.get(oid)
        return frozenset(e.locations) if e is not None and e.locations else frozenset()

    def node_gone(self, node_id: bytes) -> list[bytes]:
        """Forget the copies on a dead node; returns the owned objects left with none."""
        lost = []
        for e in self.entries.values():
            if e.locations and node_id in e.locations:
                e.locations.discard(node_id)
                if not e.locations:
                    lost.append(e.oid)
        return lost

    def reset(self, e: ObjectEntry) -> None:
        """Back to PENDING (a retry will produce the value again)."""
        e.state = PENDING  # first: a reader that saw READY has read the value already
        e.data = None
        e.kind = INLINE

    def add_waiter(self, e: ObjectEntry, cb: Callable[[ObjectEntry], None]) -> bool:
        """Register ``cb``; False (and nothing registered) if the value is already there."""
        if e.state != PENDING:
            return False
        waiters = e.waiters
        if waiters is None:
            e.waiters = cb
        elif type(waiters) is list:
            waiters.append(cb)
        else:
            e.waiters = [waiters, cb]  # type: ignore[list-item]
        return True

    def remove_waiter(self, e: ObjectEntry, cb: Callable[[ObjectEntry], None]) -> None:
        waiters = e.waiters
        if type(waiters) is list:
            try:
                waiters.remove(cb)
            except ValueError:
                pass
        elif waiters is not None and waiters == cb:
            e.waiters = None

    # --- checks ----------------------------------------------------------------------------

    def validate(self) -> None:
        for oid, e in self.entries.items():
            assert e.oid == oid
            assert e.local >= 0 and e.submitted >= 0 and e.contained >= 0, e
        for peer, oids in self.borrowed_by.items():
            for oid in oids:
                be = self.entries.get(oid)
                assert be is not None and be.borrowers and peer in be.borrowers, (peer, oid)


def wake(waiters: list[Callable[[ObjectEntry], None]], e: ObjectEntry) -> None:
    """Call every waiter; one that fails does not keep the others waiting."""
    for cb in waiters:
        try:
            cb(e)
        except Exception:
            logger.exception("a waiter of object %s failed", e.oid.hex())
