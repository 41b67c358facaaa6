"""``ObjectRef``: a reference to a value that exists (or will) somewhere in the cluster.

A ref is its object id plus its owner's address. It is awaitable any number of
times from any event loop of the process, works with ``asyncio.gather``,
``wait_for`` and ``shield``, and pickles as a reference (the owner counts the
copy), never as the value.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from . import _global as G
from ._serialization import current_deserialization, nested_collector

__all__ = ["ObjectRef"]


class ObjectRef:
    """A reference to an object; ``await ref`` or ``ac.get(ref)`` for its value."""

    __slots__ = ("__weakref__", "id", "owner")

    def __init__(self, oid: bytes, owner: tuple[Any, ...], *, _counted: bool = False) -> None:
        self.id = oid
        self.owner = owner
        if not _counted:
            rt = G.runtime
            if rt is not None:
                rt.add_ref(oid, owner)

    def __del__(self) -> None:
        rt = G.runtime
        if rt is not None:
            rt.drop_ref(self.id)

    def __reduce__(self) -> Any:
        collector = nested_collector()
        if collector is not None:
            collector.append(self)
        return (_rebuild_ref, (self.id, self.owner))

    def __await__(self) -> Generator[Any, None, Any]:
        return G.require().await_ref(self).__await__()

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def hex(self) -> str:
        return self.id.hex()

    def __repr__(self) -> str:
        return f"ObjectRef({self.id.hex()})"

    def future(self) -> Any:
        """A ``concurrent.futures.Future`` resolved with the value (or its error)."""
        return G.require().ref_future(self)


def _rebuild_ref(oid: bytes, owner: Any) -> ObjectRef:
    ctx = current_deserialization()
    if ctx is None:
        return ObjectRef(oid, tuple(owner))
    ref = ObjectRef(oid, tuple(owner), _counted=True)  # counted with the others at the end
    ctx.refs.append(ref)
    return ref
