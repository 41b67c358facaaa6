"""``@serve.batch``: concurrent single calls to an async method become one call with a list.

The first call of a batch starts a clock; the batch runs when it holds
``max_batch_size`` calls or ``batch_wait_timeout_s`` has passed. The method
gets a list of the calls' arguments and returns a list of results in the same
order; each caller gets its own item. An item that is an exception is raised
in its caller alone; an exception raised by the method is raised in every
caller of that batch.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["batch"]

logger = logging.getLogger(__name__)


class _BatchQueue:
    """The calls waiting for one batched method of one instance (on one event loop)."""

    def __init__(self, fn: Callable[..., Any], max_size: int, wait_s: float) -> None:
        self.fn = fn
        self.max_size = max_size
        self.wait_s = wait_s
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
        self.task = self.loop.create_task(self._serve())
        self.batch_sizes: list[int] = []

    async def submit(self, item: Any) -> Any:
        fut = self.loop.create_future()
        await self.queue.put((item, fut))
        return await fut

    async def _collect(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        batch = [await self.queue.get()]
        deadline = self.loop.time() + self.wait_s
        while len(batch) < self.max_size:
            while len(batch) < self.max_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            left = deadline - self.loop.time()
            if len(batch) >= self.max_size or left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _serve(self) -> None:
        while True:
            batch = [(x, f) for x, f in await self._collect() if not f.done()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            del self.batch_sizes[:-1000]
            await self._run(batch)

    async def _run(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            results = await self.fn([x for x, _ in batch])
            if not isinstance(results, list | tuple) or len(results) != len(batch):
                raise TypeError(
                    f"a @serve.batch method must return a list of {len(batch)} results, "
                    f"got {type(results).__name__}"
                    + (f" of {len(results)}" if isinstance(results, list | tuple) else "")
                )
        except asyncio.CancelledError:
            for _, f in batch:
                f.cancel()
            raise
        except Exception as e:
            for _, f in batch:
                if not f.done():
                    f.set_exception(e)
            return
        for (_, f), r in zip(batch, results, strict=True):
            if f.done():
                continue
            if isinstance(r, BaseException):
                f.set_exception(r)
            else:
                f.set_result(r)


def batch(
    _fn: Callable[..., Any] | None = None,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
) -> Any:
    """Batch calls of an ``async def`` method (or function) taking one argument.

    Use bare (``@serve.batch``) or with settings. The decorated method takes a
    list and returns a list of the same length.

    Raises:
        TypeError: the method is not ``async def``.
        ValueError: a setting is out of range.
    """
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, not {max_batch_size!r}")
    if not isinstance(batch_wait_timeout_s, int | float) or batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be >= 0, not {batch_wait_timeout_s!r}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@serve.batch needs an async def method; {fn.__qualname__} is not")
        attr = f"__serve_batch_{fn.__name__}"
        free: dict[int, _BatchQueue] = {}  # for plain functions: one queue per loop

        def queue_of(owner: Any, bound: Callable[..., Any]) -> _BatchQueue:
            loop_id = id(asyncio.get_running_loop())
            if owner is None:
                q = free.get(loop_id)
                if q is None or q.loop.is_closed():
                    q = free[loop_id] = _BatchQueue(bound, max_batch_size, batch_wait_timeout_s)
                return q
            q = owner.__dict__.get(attr)
            if q is None or q.loop is not asyncio.get_running_loop():
                q = _BatchQueue(bound, max_batch_size, batch_wait_timeout_s)
                owner.__dict__[attr] = q
            return q

        @functools.wraps(fn)
        async def call(*args: Any) -> Any:
            if len(args) == 2:
                owner, item = args
                q = queue_of(owner, functools.partial(fn, owner))
            elif len(args) == 1:
                (item,) = args
                q = queue_of(None, fn)
            else:
                raise TypeError(f"a @serve.batch method takes one argument, got {len(args)}")
            return await q.submit(item)

        call.__serve_batch__ = True  # type: ignore[attr-defined]
        return call

    if _fn is not None:
        return wrap(_fn)
    return wrap
