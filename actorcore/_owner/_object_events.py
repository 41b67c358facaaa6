"""Events and instructions of the owner's object core (:mod:`._objects`).

Events are what happened to the objects one process knows: a ref was made or
dropped, a value arrived, a borrower registered or let go, a store copy was
seen, someone wants to be told when a value is there. Instructions are what
the shell must do: free a store copy, tell an owner a borrow ended, ask an
owner to count a borrower or for a value, wake waiters, answer a caller.

Slotted dataclasses, not ``frozen`` (creating a frozen one costs about four
times as much, and a few are made per call on the hot path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._refcount import ActorOutOfScope, FreeStore, ReleaseBorrow

if TYPE_CHECKING:
    import threading

    from .._refcount import ObjectEntry

__all__ = [
    "ActorOutOfScope",
    "Answer",
    "BorrowAcked",
    "BorrowerAdded",
    "BorrowerGone",
    "BorrowersRemoved",
    "FetchValue",
    "Fetched",
    "FreeStore",
    "HeldAdded",
    "HeldReleased",
    "LendRefs",
    "LocationAdded",
    "NodeGone",
    "ObjectsCreated",
    "ObjectsFailed",
    "Query",
    "RefAdded",
    "RefsAdded",
    "RefsDropped",
    "RegisterBorrows",
    "ReleaseBorrow",
    "ResultArrived",
    "ResultsDiscarded",
    "SendAddBorrower",
    "SetEvent",
    "Unwatch",
    "ValueOwned",
    "ValueRequested",
    "ValueSet",
    "Wake",
    "WakeEach",
    "Watch",
]

Owner = tuple[Any, ...]
Waiter = Callable[["ObjectEntry"], None]

# --- events: counts -------------------------------------------------------------------------
#
# The two commonest events also travel bare, as the runtime sends them (one per
# ObjectRef made or dropped; creating a dataclass costs about 0.4 us): an object
# id (``bytes``) is ``RefsDropped([oid])``, an ``(oid, owner)`` tuple is
# ``RefAdded(oid, owner)``. So does the commonest submission's: a list of object
# ids is ``ObjectsCreated(oids, [])``.


@dataclass(slots=True)
class RefAdded:
    """A new ObjectRef (or actor handle) instance for ``oid`` exists in this process."""

    oid: bytes
    owner: Owner


@dataclass(slots=True)
class RefsAdded:
    """New ObjectRef instances (one ``(oid, owner)`` each), e.g. those one value held."""

    refs: list[tuple[bytes, Owner]]


@dataclass(slots=True)
class RefsDropped:
    """ObjectRef instances died (one entry per instance)."""

    oids: list[bytes]


@dataclass(slots=True)
class ObjectsCreated:
    """A task or call was submitted: its return objects (one local ref each, pending),
    and the objects its pending submission holds."""

    oids: list[bytes]
    held: list[bytes]


@dataclass(slots=True)
class ValueOwned:
    """A new owned object with one local ref (``put``, an actor's handle entry).

    ``kind`` None: pending, completed later by :class:`ValueSet`.
    """

    oid: bytes
    kind: int | None
    data: Any
    nested: list[tuple[bytes, Owner]] | None = None
    node_id: bytes | None = None
    held: list[bytes] | None = None
    local: int = 1


@dataclass(slots=True)
class ValueSet:
    """The value of a pending owned object is there (or its error). For a store
    object nobody refers to any more, the shell is told to free the copy."""

    oid: bytes
    kind: int
    data: Any


@dataclass(slots=True)
class HeldAdded:
    """A pending submission takes these objects as arguments."""

    oids: list[bytes]


@dataclass(slots=True)
class HeldReleased:
    """A submission that took these objects as arguments is over."""

    oids: list[bytes]


# --- events: results ------------------------------------------------------------------------


@dataclass(slots=True)
class ResultArrived:
    """A task's, call's or stream item's result for ``oid``; ``nested`` as on the wire.

    ``create``: the object is new here (a stream item) and gets one local ref.
    """

    oid: bytes
    kind: int
    data: Any
    nested: Any
    node_id: bytes | None = None
    create: bool = False


@dataclass(slots=True)
class ResultsDiscarded:
    """Results that will not be used (a retried attempt, a dropped stream item): let go
    of the refs nested in them (the ``nested`` field of each)."""

    nested: list[Any]


@dataclass(slots=True)
class ObjectsFailed:
    """The task or call producing these objects failed with ``error``."""

    oids: list[bytes]
    error: BaseException


# --- events: borrowing ----------------------------------------------------------------------


@dataclass(slots=True)
class BorrowerAdded:
    """``peer`` says it holds the owned object ``oid``; ``answer(ok)``."""

    oid: bytes
    peer: bytes
    answer: Callable[[bool], None] | None = None


@dataclass(slots=True)
class BorrowersRemoved:
    """``peer`` let go of these owned objects."""

    oids: list[bytes]
    peer: bytes


@dataclass(slots=True)
class BorrowerGone:
    """The process ``peer`` ended: every borrow it held ends."""

    peer: bytes


@dataclass(slots=True)
class RegisterBorrows:
    """Refs were unpickled here: register as their borrower with their owners.

    ``container`` (the object whose value held them) stays alive until every
    owner acknowledged; ``done`` is set then.
    """

    refs: list[tuple[bytes, Owner]]
    container: bytes | None
    done: threading.Event


@dataclass(slots=True)
class LendRefs:
    """Refs inside a value returned to ``borrower``: make it their borrower first.

    For refs this process owns that is a local note; others' owners are asked,
    and ``done`` is set once every one acknowledged.
    """

    refs: list[tuple[bytes, Owner]]
    borrower: Owner
    done: threading.Event | None


@dataclass(slots=True)
class BorrowAcked:
    """An owner answered an ADD_BORROWER sent for ``token``."""

    token: Any


# --- events: values, waiters, locations -------------------------------------------------------


@dataclass(slots=True)
class Watch:
    """Call ``cb(entry)`` once for each ``(oid, owner)`` when its value is there (at
    once if it is). An unknown borrowed object is fetched from its owner."""

    refs: list[tuple[bytes, Owner]]
    cb: Waiter


@dataclass(slots=True)
class Unwatch:
    """Forget ``cb`` on these objects (a wait timed out or was cancelled)."""

    oids: list[bytes]
    cb: Waiter


@dataclass(slots=True)
class ValueRequested:
    """A borrower asks for the value of ``oid`` (GET_OBJECT): ``answer(entry)`` once it
    is there, ``answer(None)`` if the object is unknown."""

    oid: bytes
    answer: Callable[[ObjectEntry | None], None]


@dataclass(slots=True)
class Fetched:
    """The owner answered our GET_OBJECT for ``oid`` (a reply or an exception)."""

    oid: bytes
    reply: Any


@dataclass(slots=True)
class LocationAdded:
    """A store copy of ``oid`` is on ``node_id``. ``any_entry``: note it for a borrowed
    object too (a copy pulled here). ``free_if_gone``: the owner learns of a copy of
    its object; if the object is freed already, that copy is freed at once."""

    oid: bytes
    node_id: bytes
    any_entry: bool = False
    free_if_gone: bool = False  # an owned object freed while that copy was made: free it


@dataclass(slots=True)
class NodeGone:
    """A node died: forget its copies; ``answer(lost owned oids)``."""

    node_id: bytes
    answer: Callable[[list[bytes]], None] | None = None


@dataclass(slots=True)
class Query:
    """``answer(fn(table))`` on the loop: a consistent read for another thread."""

    fn: Callable[[Any], Any]
    answer: Callable[[Any], None]


# --- instructions -------------------------------------------------------------------------------


@dataclass(slots=True)
class Wake:
    """Call each of ``waiters`` with ``entry`` (the value is there)."""

    waiters: list[Waiter]
    entry: ObjectEntry


@dataclass(slots=True)
class WakeEach:
    """Call ``waiter`` with each of ``entries`` (a watch found several values there
    already: one instruction for them all)."""

    waiter: Waiter
    entries: list[ObjectEntry]


@dataclass(slots=True)
class Answer:
    """Call ``fn(value)``."""

    fn: Callable[[Any], None]
    value: Any


@dataclass(slots=True)
class SendAddBorrower:
    """Ask ``owner`` to count ``borrower`` as a holder of ``oid``; then BorrowAcked(token)."""

    owner: Owner
    oid: bytes
    borrower: Owner
    token: Any


@dataclass(slots=True)
class FetchValue:
    """Ask ``owner`` for the value of ``oid`` (GET_OBJECT); then Fetched."""

    owner: Owner
    oid: bytes


@dataclass(slots=True)
class SetEvent:
    """Set a ``threading.Event`` (borrow registrations acknowledged)."""

    event: threading.Event
