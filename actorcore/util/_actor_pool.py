"""``ActorPool``: spread work over a fixed set of actors, as Ray's does."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import _api
from .._ref import ObjectRef

__all__ = ["ActorPool"]


class ActorPool:
    """Run ``fn(actor, value)`` on whichever actor of the pool is free.

    ``fn`` must return an ObjectRef (``lambda a, v: a.work.remote(v)``).
    """

    def __init__(self, actors: list[Any]) -> None:
        if not actors:
            raise ValueError("an ActorPool needs at least one actor")
        self._idle = list(actors)
        self._future_to_actor: dict[ObjectRef, tuple[int, Any]] = {}
        self._index_to_future: dict[int, ObjectRef] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending: list[tuple[Callable[[Any, Any], ObjectRef], Any]] = []

    def submit(self, fn: Callable[[Any, Any], ObjectRef], value: Any) -> None:
        """Schedule ``fn(actor, value)`` now if an actor is idle, else when one frees up."""
        if self._idle:
            actor = self._idle.pop()
            ref = fn(actor, value)
            if not isinstance(ref, ObjectRef):
                raise TypeError("the function given to ActorPool must return an ObjectRef")
            self._future_to_actor[ref] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = ref
            self._next_task_index += 1
        else:
            self._pending.append((fn, value))

    def has_next(self) -> bool:
        return bool(self._future_to_actor)

    def has_free(self) -> bool:
        return bool(self._idle) and not self._pending

    def _return(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.pop(0))

    def get_next(self, timeout: float | None = None) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ref = self._index_to_future[self._next_return_index]
        ready, _ = _api.wait([ref], timeout=timeout)
        if not ready:
            raise TimeoutError(f"no result within {timeout} s")
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(ref)
        self._return(actor)
        return _api.get(ref)

    def get_next_unordered(self, timeout: float | None = None) -> Any:
        """Whichever result is ready first."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ready, _ = _api.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError(f"no result within {timeout} s")
        ref = ready[0]
        index, actor = self._future_to_actor.pop(ref)
        del self._index_to_future[index]
        self._return(actor)
        return _api.get(ref)

    def _submit_all(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> None:
        while self.has_next():  # results of earlier submissions are dropped
            self.get_next_unordered()
        for v in values:
            self.submit(fn, v)

    def map(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn`` over ``values``, in order."""
        self._submit_all(fn, values)
        while self.has_next():
            yield self.get_next()

    def map_unordered(
        self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]
    ) -> Iterator[Any]:
        """Results of ``fn`` over ``values``, as they complete."""
        self._submit_all(fn, values)
        while self.has_next():
            yield self.get_next_unordered()

    def pop_idle(self) -> Any | None:
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        busy = {a for _, a in self._future_to_actor.values()}
        if actor in self._idle or actor in busy:
            raise ValueError("that actor is already in the pool")
        self._return(actor)
