"""Arguments of tasks and actor calls, ready to travel.

Top-level ObjectRef arguments are replaced by :class:`Dep` placeholders and
resolved by the caller before sending (their values travel with the call, or
the worker reads them from the store); refs nested deeper travel as refs.
Arguments bigger than the inline threshold go to the store once, whatever the
number of retries; on a thread running an event loop they are written in
the background (the call returns at once) and the call waits for the seal
like for a ref argument (:class:`SealWait`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._ref import ObjectRef
from ._refcount import STORE, ObjectEntry
from ._serialization import serialize

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = [
    "NO_ARGS",
    "Dep",
    "FunctionDescriptor",
    "PreparedArgs",
    "SealWait",
    "prepare_args",
    "resolve_dep",
]


class Dep:
    """Placeholder for a top-level ObjectRef argument, replaced by its value on the worker."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> Any:
        return (Dep, (self.i,))


class SealWait:
    """A dependency with no value to send: the call waits until the store object of
    its arguments, written in the background, is sealed (the last of ``deps``)."""

    __slots__ = ("id", "owner")

    def __init__(self, oid: bytes, owner: tuple[Any, ...]) -> None:
        self.id = oid
        self.owner = owner


class FunctionDescriptor:
    __slots__ = ("blob", "fn_id", "is_async", "name")

    def __init__(self, fn_id: bytes, blob: bytes, name: str, is_async: bool) -> None:
        self.fn_id = fn_id
        self.blob = blob
        self.name = name
        self.is_async = is_async


class PreparedArgs:
    """Arguments ready to send: a payload, the refs to resolve first, the refs inside."""

    __slots__ = ("deps", "held", "nested_ids", "payload", "store_ref")

    def __init__(self) -> None:
        # No arguments (the common call) make no lists: the fields hold one shared
        # empty list, never changed in place (fields are replaced, not appended to).
        # Fewer objects per call in flight, fewer for the cyclic GC to walk.
        self.payload: Any = b""
        self.deps: list[Any] = _NONE  # top-level ObjectRefs, by Dep index
        self.nested_ids: list[bytes] = _NONE
        self.store_ref: Any = None  # when the arguments went to the store
        self.held: list[bytes] = _NONE  # every id counted as "submitted"


_NONE: list[Any] = []  # (see PreparedArgs; never changed)

# The arguments of every actor call that has none (its fields are never set: only
# non-empty ``deps`` and ``held`` are replaced, which it has not).
NO_ARGS = PreparedArgs()


def prepare_args(
    rt: CoreRuntime, args: tuple[Any, ...], kwargs: dict[str, Any], where: str
) -> PreparedArgs:
    p = PreparedArgs()
    if not args and not kwargs:
        return p
    deps: list[Any] = []
    p.deps = deps
    if any(isinstance(a, ObjectRef) for a in args):
        new_args = []
        for a in args:
            if isinstance(a, ObjectRef):
                new_args.append(Dep(len(deps)))
                deps.append(a)
            else:
                new_args.append(a)
        args = tuple(new_args)
    if kwargs and any(isinstance(v, ObjectRef) for v in kwargs.values()):
        new_kwargs = {}
        for k, v in kwargs.items():
            if isinstance(v, ObjectRef):
                new_kwargs[k] = Dep(len(deps))
                deps.append(v)
            else:
                new_kwargs[k] = v
        kwargs = new_kwargs
    ser = serialize((args, kwargs), f"an argument of {where}")
    p.nested_ids = [r.id for r in ser.nested]
    if ser.size > rt.config.inline_threshold:
        # big arguments go through the store once, whatever the number of retries
        if asyncio._get_running_loop() is not None:  # a loop must not wait on the daemon
            ref = rt.put_serialized(ser, background=True)
            deps.append(SealWait(ref.id, ref.owner))
        else:
            ref = rt.put_serialized(ser)
        p.store_ref = ref
        # (with the node holding it, and its owner: told of copies made elsewhere)
        p.payload = [STORE, ref.id, [rt.node.node_id], list(rt.address)]
    else:
        p.payload = ser.payload()
    held = [d.id for d in deps if type(d) is not SealWait] + p.nested_ids
    if p.store_ref is not None:
        held.append(p.store_ref.id)
    p.held = held
    return p


def resolve_dep(e: ObjectEntry) -> list[Any]:
    """How a ready top-level argument travels: ``[kind, payload, object id, holders, owner]``
    (for store objects: the nodes known to hold a copy, and the owner's address)."""
    if e.kind != STORE:
        return [e.kind, e.data, e.oid]
    return [e.kind, e.data, e.oid, sorted(e.locations) if e.locations else None, list(e.owner)]
