"""The vocabulary of pulls: settings, the events the transfer service reports and
the instructions :class:`store._pull.PullState` answers with. No logic here."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Allocate",
    "AllocatedEvent",
    "AllocationFailedEvent",
    "ChunkDoneEvent",
    "Complete",
    "Disconnect",
    "Fail",
    "FetchChunk",
    "Holder",
    "HoldersAddedEvent",
    "NodeFailedEvent",
    "OpenAt",
    "OpenFailedEvent",
    "OpenedEvent",
    "PullConfig",
    "PullEvent",
    "ReleaseAt",
    "TickEvent",
]

MiB = 1 << 20
Holder = Hashable  # how the shell names a holder node (its transfer address)


@dataclass(frozen=True, slots=True)
class PullConfig:
    """Sizes and limits of pulls on one node.

    Attributes:
        chunk_bytes: bytes asked of a holder in one request.
        pull_window: bytes in flight at once for one pull.
        holder_window: bytes in flight at once from one holder node (so that
            the chunks of a pull spread over its holders).
        node_window: bytes in flight at once for all pulls of this node (the
            receiver budget).
        open_fanout: holders of one object asked (and used) at once.
        stall_timeout_s: a holder node with requests outstanding and no answer
            for this long is dropped.
    """

    chunk_bytes: int = 8 * MiB
    pull_window: int = 64 * MiB
    holder_window: int = 32 * MiB
    node_window: int = 256 * MiB
    open_fanout: int = 3
    stall_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be > 0")
        if not self.chunk_bytes <= self.holder_window <= self.pull_window <= self.node_window:
            raise ValueError("need chunk_bytes <= holder_window <= pull_window <= node_window")
        if self.open_fanout < 1:
            raise ValueError("open_fanout must be >= 1")
        if self.stall_timeout_s <= 0:
            raise ValueError("stall_timeout_s must be > 0")


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PullEvent:
    """Someone (``waiter``) needs ``oid``, which ``holders`` have; merged per object."""

    oid: bytes
    holders: tuple[Holder, ...]
    waiter: Any
    owner: Any
    now: float


@dataclass(frozen=True, slots=True)
class HoldersAddedEvent:
    """More nodes are known to hold ``oid`` (the owner learned of new copies)."""

    oid: bytes
    holders: tuple[Holder, ...]
    now: float


@dataclass(frozen=True, slots=True)
class OpenedEvent:
    """``holder`` has ``oid`` (now pinned there for us): its size and layout."""

    oid: bytes
    holder: Holder
    size: int
    meta: bytes
    now: float


@dataclass(frozen=True, slots=True)
class OpenFailedEvent:
    """``holder`` answered that it has no copy of ``oid``."""

    oid: bytes
    holder: Holder
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class AllocatedEvent:
    """The local store gave ``oid`` its range."""

    oid: bytes
    now: float


@dataclass(frozen=True, slots=True)
class AllocationFailedEvent:
    """The local store could not take ``oid`` (``no_room``: it is full)."""

    oid: bytes
    reason: str
    now: float
    no_room: bool = True


@dataclass(frozen=True, slots=True)
class ChunkDoneEvent:
    """Chunk ``index`` of ``oid`` from ``holder`` is in the local range."""

    oid: bytes
    holder: Holder
    index: int
    now: float


@dataclass(frozen=True, slots=True)
class NodeFailedEvent:
    """The connection to ``holder`` broke (or it answered nonsense): drop it everywhere."""

    holder: Holder
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class TickEvent:
    """Time passed: look for stalled holders."""

    now: float


# --- instructions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAt:
    """Ask ``holder`` for the size and layout of ``oid`` (and to pin it)."""

    oid: bytes
    holder: Holder


@dataclass(frozen=True, slots=True)
class Allocate:
    """Make a range of ``size`` bytes for ``oid`` in the local store."""

    oid: bytes
    size: int
    owner: Any


@dataclass(frozen=True, slots=True)
class FetchChunk:
    """Read ``[offset, offset + length)`` of ``oid`` from ``holder`` into the local range."""

    oid: bytes
    holder: Holder
    index: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ReleaseAt:
    """Tell ``holder`` we are done with its copy of ``oid`` (unpin)."""

    oid: bytes
    holder: Holder


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection to ``holder`` (it stalled): no byte of it may land any more."""

    holder: Holder
    reason: str


@dataclass(frozen=True, slots=True)
class Complete:
    """Every byte is here: seal the local copy, wake ``waiters``, register the location."""

    oid: bytes
    size: int
    meta: bytes
    waiters: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Fail:
    """The pull failed: abort the local range (if ``allocated``) and fail ``waiters``.

    ``no_room``: it failed because the local store had no room (not a lost object).
    """

    oid: bytes
    reason: str
    waiters: tuple[Any, ...]
    allocated: bool
    no_room: bool = False
