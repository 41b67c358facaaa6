"""The object store: arena allocator, store accounting, shared-memory arena, sessions,
and the state machines of node-to-node pulls (receiver) and serving (sender).

:class:`StoreState` is the sans-IO accounting (create, seal, pin, free, spill,
restore, readers waiting for a seal); its results, events and instructions are
plain values exported here. :class:`Arena` maps the node's shared-memory file.
"""

from ._allocator import ALIGN, AllocatorStats, ArenaAllocator
from ._arena import Arena, decode_meta, encode_meta, layout, reset_after_fork
from ._pull import PullConfig, PullState
from ._results import (
    Abort,
    ClientGone,
    Created,
    DeleteFile,
    Free,
    Full,
    Location,
    NeedRestore,
    NeedSpill,
    Refused,
    RestoreDone,
    RevokePins,
    Seal,
    StoreEvent,
    StoreInstruction,
    StoreStats,
    Unknown,
    WakeReaders,
)
from ._serve import ServeConfig, ServeState
from ._session import SessionDirs, default_capacity, sweep_stale
from ._session import _owner_alive as owner_alive
from ._state import ObjectState, StoreState

__all__ = [
    "ALIGN",
    "Abort",
    "AllocatorStats",
    "Arena",
    "ArenaAllocator",
    "ClientGone",
    "Created",
    "DeleteFile",
    "Free",
    "Full",
    "Location",
    "NeedRestore",
    "NeedSpill",
    "ObjectState",
    "PullConfig",
    "PullState",
    "Refused",
    "RestoreDone",
    "RevokePins",
    "Seal",
    "ServeConfig",
    "ServeState",
    "SessionDirs",
    "StoreEvent",
    "StoreInstruction",
    "StoreState",
    "StoreStats",
    "Unknown",
    "WakeReaders",
    "decode_meta",
    "default_capacity",
    "encode_meta",
    "layout",
    "owner_alive",
    "reset_after_fork",
    "sweep_stale",
]
