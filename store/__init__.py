"""The object store: arena allocator, store accounting, shared-memory arena, sessions,
and the state machines of node-to-node pulls (receiver) and serving (sender)."""

from ._allocator import AllocatorStats, ArenaAllocator
from ._arena import Arena
from ._pull import PullConfig, PullState
from ._serve import ServeConfig, ServeState
from ._session import SessionDirs, default_capacity, sweep_stale
from ._state import ObjectState, StoreState, StoreStats

__all__ = [
    "AllocatorStats",
    "Arena",
    "ArenaAllocator",
    "ObjectState",
    "PullConfig",
    "PullState",
    "ServeConfig",
    "ServeState",
    "SessionDirs",
    "StoreState",
    "StoreStats",
    "default_capacity",
    "sweep_stale",
]
