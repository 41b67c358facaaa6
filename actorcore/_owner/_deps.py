"""One path for resolving top-level ObjectRef arguments (tasks, actor calls, creation).

A call's top-level ObjectRef arguments are sent as their values (or as a
pointer into the store), so the caller waits for them first. The callback
gets the resolved list ``[[i, kind, data, oid], ...]`` once all are ready, or
the error of the first that failed; it is never called twice, and runs on the
runtime's loop (a waiter of the object core), with no lock held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._args import SealWait, resolve_dep
from .._refcount import FAILED, READY, ObjectEntry
from ._object_events import Watch

if TYPE_CHECKING:
    from .._runtime import CoreRuntime

__all__ = ["ready_now", "resolve_deps"]

Done = Callable[[list[Any] | BaseException], None]


class _Resolution:
    """One call's arguments being waited for; only the runtime's loop touches it."""

    __slots__ = ("done", "index", "left", "resolved", "seal_only")

    def __init__(
        self, n: int, done: Done, index: dict[bytes, list[int]], seal_only: set[int]
    ) -> None:
        self.done = done
        self.seal_only = seal_only  # SealWait deps: waited for, not sent
        self.resolved: list[Any] = [None] * n
        self.left = n
        self.index = index

    def woke(self, e: ObjectEntry) -> None:
        """A waited-for object is there (a waiter of the object core, on the loop)."""
        if self.left <= 0:
            return  # already failed
        if e.state == FAILED:
            self.left = 0
            self.done(e.data)
            return
        for i in self.index[e.oid]:
            if i not in self.seal_only:
                self.resolved[i] = [i, *resolve_dep(e)]
            self.left -= 1
        if self.left == 0:
            self.done([r for r in self.resolved if r is not None])


def resolve_deps(rt: CoreRuntime, deps: Sequence[Any], done: Done) -> None:
    """Call ``done(resolved)`` once every ref in ``deps`` is ready, or ``done(error)``.

    Any thread; ``done`` runs on the runtime's loop (at once when called there
    and everything is ready). Values owned elsewhere are fetched from their
    owners.
    """
    if not deps:
        done([])
        return
    index: dict[bytes, list[int]] = {}
    refs = []
    seal_only = {i for i, ref in enumerate(deps) if type(ref) is SealWait}
    for i, ref in enumerate(deps):
        at = index.get(ref.id)
        if at is None:
            index[ref.id] = [i]
            refs.append((ref.id, ref.owner))
        else:
            at.append(i)
    res = _Resolution(len(deps), done, index, seal_only)
    rt.objects.post(Watch(refs, res.woke))


def ready_now(rt: CoreRuntime, deps: Sequence[Any]) -> list[Any] | None:
    """The resolved list if every ref in ``deps`` is ready already, else None.

    Any thread, without a lock: only published (READY) values are read. The
    common case (an argument made by ``put``, or a result that came back)
    then needs no waiting: the caller's thread sends the call as if it had no
    ref arguments.
    """
    entries = rt.table.entries
    resolved = []
    for i, ref in enumerate(deps):
        e = entries.get(ref.id)
        if e is None or e.state != READY:
            return None
        if type(ref) is not SealWait:
            resolved.append([i, *resolve_dep(e)])
    return resolved
