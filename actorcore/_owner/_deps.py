"""One path for resolving top-level ObjectRef arguments (tasks, actor calls, creation).

A call's top-level ObjectRef arguments are sent as their values (or as a
pointer into the store), so the caller waits for them first. The callback
gets the resolved list ``[[i, kind, data, oid], ...]`` once all are ready, or
the error of the first that failed; it is never called twice, and never while
this module holds the runtime's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._args import resolve_dep
from .._refcount import FAILED, READY, ObjectEntry

if TYPE_CHECKING:
    from .._runtime import CoreRuntime

__all__ = ["ready_now", "resolve_deps"]

Done = Callable[[list[Any] | BaseException], None]


class _Resolution:
    __slots__ = ("done", "left", "resolved", "rt")

    def __init__(self, rt: CoreRuntime, n: int, done: Done) -> None:
        self.rt = rt
        self.done = done
        self.resolved: list[Any] = [None] * n
        self.left = n

    def ready(self, i: int, e: ObjectEntry) -> Any:
        """Record dep ``i``; returns what to call ``done`` with once finished, else None."""
        if self.left <= 0:
            return None  # already failed
        if e.state == FAILED:
            self.left = 0
            return e.data
        self.resolved[i] = [i, *resolve_dep(e)]
        self.left -= 1
        return self.resolved if self.left == 0 else None

    def waiter(self, i: int) -> Callable[[ObjectEntry], None]:
        def woke(e: ObjectEntry) -> None:
            with self.rt.lock:
                answer = self.ready(i, e)
            if answer is not None:
                self.done(answer)

        return woke


def resolve_deps(rt: CoreRuntime, deps: Sequence[Any], done: Done) -> None:
    """Call ``done(resolved)`` once every ref in ``deps`` is ready, or ``done(error)``.

    Any thread; ``done`` may run at once in this thread, or later where the
    last value arrives (usually the runtime's loop). Values owned elsewhere are
    fetched from their owners.
    """
    if not deps:
        done([])
        return
    res = _Resolution(rt, len(deps), done)
    answer = None
    table = rt.table
    with rt.lock:
        for i, ref in enumerate(deps):
            e = table.entries[ref.id]
            if table.add_waiter(e, res.waiter(i)):
                if not e.owned:
                    rt.fetch(e)
            else:
                answer = res.ready(i, e) or answer
    if answer is not None:
        done(answer)


def ready_now(rt: CoreRuntime, deps: Sequence[Any]) -> list[Any] | None:
    """The resolved list if every ref in ``deps`` is ready already, else None.

    Under the runtime's lock. The common case (an argument made by ``put``, or
    a result that came back) then needs no waiting: the caller's thread sends
    the call as if it had no ref arguments.
    """
    entries = rt.table.entries
    resolved = []
    for i, ref in enumerate(deps):
        e = entries.get(ref.id)
        if e is None or e.state != READY:
            return None
        resolved.append([i, *resolve_dep(e)])
    return resolved
