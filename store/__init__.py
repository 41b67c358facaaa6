"""The object store: arena allocator, store accounting, shared-memory arena, sessions."""

from ._allocator import AllocatorStats, ArenaAllocator
from ._arena import Arena
from ._session import SessionDirs, default_capacity, sweep_stale
from ._state import ObjectState, StoreState, StoreStats

__all__ = [
    "AllocatorStats",
    "Arena",
    "ArenaAllocator",
    "ObjectState",
    "SessionDirs",
    "StoreState",
    "StoreStats",
    "default_capacity",
    "sweep_stale",
]
