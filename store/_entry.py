"""One object in the store's accounting, and the states it goes through."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "ObjectState"]


class ObjectState(enum.Enum):
    CREATED = "created"
    SEALED = "sealed"
    SPILLING = "spilling"
    SPILLED = "spilled"
    RESTORING = "restoring"


_LEGAL = {
    ObjectState.CREATED: {ObjectState.SEALED},
    ObjectState.SEALED: {ObjectState.SPILLING},
    ObjectState.SPILLING: {ObjectState.SPILLED, ObjectState.SEALED},
    ObjectState.SPILLED: {ObjectState.RESTORING},
    ObjectState.RESTORING: {ObjectState.SEALED, ObjectState.SPILLED},
}


@dataclass(slots=True)
class Entry:
    oid: bytes
    size: int
    owner: Any
    creator: Any
    state: ObjectState = ObjectState.CREATED
    offset: int | None = None
    meta: bytes = b""
    pins: dict[Any, int] = field(default_factory=dict)
    freed: bool = False
    primary: bool = True
    spill_path: str | None = None
    last_access: int = 0
