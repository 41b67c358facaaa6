"""What the object store's accounting answers and asks for: plain values, no I/O.

Results of :class:`~actorcore.store.StoreState`'s primitive calls (create, open,
restore), the events its :meth:`~actorcore.store.StoreState.handle` takes and
the instructions it returns (wake readers waiting for a seal, delete a spill
file, refuse a request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "Abort",
    "ClientGone",
    "Created",
    "DeleteFile",
    "Free",
    "Full",
    "Location",
    "NeedRestore",
    "NeedSpill",
    "Refused",
    "RestoreDone",
    "Seal",
    "StoreEvent",
    "StoreInstruction",
    "StoreStats",
    "Unknown",
    "WakeReaders",
]


# --- results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Created:
    offset: int


@dataclass(frozen=True, slots=True)
class NeedSpill:
    """No room: spill these objects (then try again)."""

    oids: list[bytes]


@dataclass(frozen=True, slots=True)
class Full:
    message: str


@dataclass(frozen=True, slots=True)
class Location:
    offset: int
    size: int
    meta: bytes


@dataclass(frozen=True, slots=True)
class NeedRestore:
    oid: bytes


@dataclass(frozen=True, slots=True)
class Unknown:
    oid: bytes


@dataclass(frozen=True, slots=True)
class StoreStats:
    capacity: int
    used: int
    objects: int
    sealed: int
    spilled: int
    spilled_bytes: int
    pinned: int
    spill_count: int
    restore_count: int


# --- events (for StoreState.handle) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seal:
    """The writer ``writer`` finished object ``oid``."""

    oid: bytes
    meta: bytes
    writer: Any


@dataclass(frozen=True, slots=True)
class Abort:
    """The writer gave up on an object it never sealed."""

    oid: bytes
    writer: Any


@dataclass(frozen=True, slots=True)
class Free:
    """The process ``by`` lets go of objects; only their owner may."""

    oids: list[bytes]
    by: Any


@dataclass(frozen=True, slots=True)
class ClientGone:
    """A process ended: its pins, unsealed objects and owned objects go."""

    client: Any


@dataclass(frozen=True, slots=True)
class RestoreDone:
    """The bytes of a spilled object were read back (``ok``) or not."""

    oid: bytes
    ok: bool


StoreEvent = Seal | Abort | Free | ClientGone | RestoreDone


# --- instructions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WakeReaders:
    """Readers waiting for ``oid`` to be sealed (or restored) may look again.

    ``error`` says why the object will never be readable (its writer died),
    None when they should simply open it again.
    """

    oid: bytes
    waiters: tuple[Any, ...]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteFile:
    """A spill file nobody needs any more."""

    path: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Tell ``client`` its request was refused (nothing was changed)."""

    client: Any
    message: str


@dataclass(frozen=True, slots=True)
class RevokePins:
    """Ask ``client`` to drop the pins its read cache keeps on ``oids``.

    A process keeps recently read objects mapped and pinned so that reading one
    again needs no round trip; a pin that backs a live view of the object stays
    (the process drops only what nothing uses). Sent when a pinned object is
    freed, and when the store needs room that only cached pins hold.
    """

    client: Any
    oids: tuple[bytes, ...]


StoreInstruction = WakeReaders | DeleteFile | Refused | RevokePins
