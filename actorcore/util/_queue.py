"""``Queue``: a FIFO queue shared by tasks, actors and drivers, held by an actor."""

from __future__ import annotations

import asyncio
from typing import Any

from .. import _api
from .._remote import remote

__all__ = ["Empty", "Full", "Queue"]


class Empty(Exception):
    """Raised by ``get`` when the queue stays empty (non-blocking, or timed out)."""


class Full(Exception):
    """Raised by ``put`` when the queue stays full (non-blocking, or timed out)."""


class _QueueActor:
    def __init__(self, maxsize: int) -> None:
        self.q: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.q.qsize()

    async def put(self, item: Any, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self.q.put(item), timeout)
            return True
        except TimeoutError:
            return False

    async def get(self, timeout: float | None) -> tuple[bool, Any]:
        try:
            return True, await asyncio.wait_for(self.q.get(), timeout)
        except TimeoutError:
            return False, None

    def put_nowait(self, item: Any) -> bool:
        try:
            self.q.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    def get_nowait(self) -> tuple[bool, Any]:
        try:
            return True, self.q.get_nowait()
        except asyncio.QueueEmpty:
            return False, None


class Queue:
    """A queue that any process of the cluster can use; pass it around freely.

    ``maxsize`` <= 0 means unbounded. Blocking calls take a ``timeout``; the
    ``*_async`` forms are awaitable.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        self.maxsize = maxsize
        cls = remote(_QueueActor)
        if actor_options:
            cls = cls.options(**actor_options)
        self.actor = cls.remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        return int(_api.get(self.actor.qsize.remote()))

    qsize = size

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            if not _api.get(self.actor.put_nowait.remote(item)):
                raise Full("the queue is full")
            return
        if not _api.get(self.actor.put.remote(item, timeout)):
            raise Full(f"the queue stayed full for {timeout} s")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            ok, item = _api.get(self.actor.get_nowait.remote())
            if not ok:
                raise Empty("the queue is empty")
            return item
        ok, item = _api.get(self.actor.get.remote(timeout))
        if not ok:
            raise Empty(f"the queue stayed empty for {timeout} s")
        return item

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    async def put_async(self, item: Any, timeout: float | None = None) -> None:
        if not await self.actor.put.remote(item, timeout):
            raise Full(f"the queue stayed full for {timeout} s")

    async def get_async(self, timeout: float | None = None) -> Any:
        ok, item = await self.actor.get.remote(timeout)
        if not ok:
            raise Empty(f"the queue stayed empty for {timeout} s")
        return item

    def shutdown(self) -> None:
        _api.kill(self.actor)
