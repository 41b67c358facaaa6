"""A replica: the actor that hosts one instance of a deployment's class.

It counts the requests it holds (the controller reads the count for
autoscaling and for draining) and runs at most ``max_ongoing_requests`` of
them at once, whoever sent them (each router also respects that bound, so
the replica's own queue stays empty with one router). Sync methods run in a
thread of their own, one at a time, so the replica keeps answering health and
metrics calls while one runs.

Streams: a generator method's items are produced by a pump task into a queue;
callers pull them in chunks (``stream_start`` then ``stream_next`` until
done). With streaming actor calls in the core, the pump's queue would become
the call's output stream and the pulls would disappear.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import actorcore as ac
from actorcore import ObjectRef

__all__ = ["Replica"]

logger = logging.getLogger(__name__)

CHUNK_MAX_ITEMS = 1000
STALL_S = 120.0  # a stream nobody pulls from for this long is abandoned
_END = object()


async def _put(queue: asyncio.Queue[Any], item: Any) -> None:
    await asyncio.wait_for(queue.put(item), STALL_S)


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Replica:
    """Hosts ``cls(*args, **kwargs)`` and runs the requests routed to it."""

    def __init__(
        self,
        key: str,
        cls_blob: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        max_ongoing: int,
    ) -> None:
        import cloudpickle

        cls = cloudpickle.loads(cls_blob)
        self._key = key
        self._max_ongoing = max_ongoing
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="serve-replica")
        self._obj = cls(*args, **kwargs)
        self._sem: asyncio.Semaphore | None = None
        self._ongoing = 0
        self._total = 0
        self._last_arrival = time.monotonic()
        self._idle: asyncio.Event | None = None
        self._streams: dict[int, tuple[asyncio.Queue[Any], asyncio.Task[None]]] = {}
        self._sids = itertools.count(1)

    # --- bookkeeping ---------------------------------------------------------------------

    def _enter(self) -> asyncio.Semaphore:
        self._ongoing += 1
        self._total += 1
        self._last_arrival = time.monotonic()
        if self._idle is not None:
            self._idle.clear()
        if self._sem is None:
            self._sem = asyncio.Semaphore(self._max_ongoing)
        return self._sem

    def _leave(self) -> None:
        self._ongoing -= 1
        if self._ongoing == 0 and self._idle is not None:
            self._idle.set()

    def _method(self, name: str) -> Any:
        fn = getattr(self._obj, name, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"deployment {self._key} has no method {name!r}")
        return fn

    @staticmethod
    async def _resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        if any(isinstance(a, ObjectRef) for a in args):
            args = tuple([await a if isinstance(a, ObjectRef) else a for a in args])
        if any(isinstance(v, ObjectRef) for v in kwargs.values()):
            kwargs = {k: await v if isinstance(v, ObjectRef) else v for k, v in kwargs.items()}
        return args, kwargs

    # --- requests ------------------------------------------------------------------------

    async def handle_request(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        sem = self._enter()
        try:
            async with sem:
                fn = self._method(method)
                args, kwargs = await self._resolve(args, kwargs)
                if inspect.iscoroutinefunction(fn):
                    return await fn(*args, **kwargs)
                if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
                    raise TypeError(
                        f"{self._key}.{method} is a generator: call it through "
                        f"handle.options(stream=True)"
                    )
                loop = asyncio.get_running_loop()
                value = await loop.run_in_executor(
                    self._pool, functools.partial(fn, *args, **kwargs)
                )
                if inspect.isawaitable(value):
                    value = await value
                return value
        finally:
            self._leave()

    async def stream_start(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[int, list[Any], bool]:
        sem = self._enter()
        await sem.acquire()
        try:
            fn = self._method(method)
            args, kwargs = await self._resolve(args, kwargs)
            gen = fn(*args, **kwargs)
            if not (inspect.isasyncgen(gen) or inspect.isgenerator(gen)):
                raise TypeError(f"{self._key}.{method} is not a generator method")
        except BaseException:
            sem.release()
            self._leave()
            raise
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4 * CHUNK_MAX_ITEMS)
        sid = next(self._sids)
        task = asyncio.get_running_loop().create_task(self._pump(gen, queue))

        def ended(_task: asyncio.Task[None]) -> None:
            sem.release()
            self._leave()

        task.add_done_callback(ended)
        self._streams[sid] = (queue, task)
        return await self.stream_next(sid)

    async def _pump(self, gen: Any, queue: asyncio.Queue[Any]) -> None:
        try:
            try:
                if inspect.isasyncgen(gen):
                    async for item in gen:
                        await _put(queue, item)
                else:
                    loop = asyncio.get_running_loop()
                    while True:
                        item = await loop.run_in_executor(self._pool, next, gen, _END)
                        if item is _END:
                            break
                        await _put(queue, item)
            except (asyncio.CancelledError, TimeoutError):
                raise
            except Exception as e:
                await _put(queue, _Failed(e))
            await _put(queue, _END)
        except TimeoutError:
            logger.warning("a stream of %s was not read for %s s: dropped", self._key, STALL_S)
            self._streams = {k: v for k, v in self._streams.items() if v[0] is not queue}

    async def stream_next(self, sid: int) -> tuple[int, list[Any], bool]:
        """The items produced since the last pull (at least one, unless the stream ended)."""
        entry = self._streams.get(sid)
        if entry is None:
            raise KeyError(f"stream {sid} of {self._key} is unknown (ended or cancelled)")
        queue = entry[0]
        items = [await queue.get()]
        while len(items) < CHUNK_MAX_ITEMS and not queue.empty():
            items.append(queue.get_nowait())
        done = False
        if items[-1] is _END:
            items.pop()
            done = True
            del self._streams[sid]
        failed = [x for x in items if isinstance(x, _Failed)]
        if failed:
            self._streams.pop(sid, None)
            raise failed[0].error
        return sid, items, done

    async def stream_cancel(self, sid: int) -> None:
        entry = self._streams.pop(sid, None)
        if entry is not None:
            entry[1].cancel()

    # --- control -------------------------------------------------------------------------

    async def ready(self) -> dict[str, Any]:
        ctx = ac.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id()}

    async def metrics(self) -> tuple[int, int]:
        """(requests held now, requests taken since start)."""
        return self._ongoing, self._total

    async def check_health(self) -> None:
        """Run the deployment's ``check_health`` (if it has one); raises when unhealthy."""
        fn = getattr(self._obj, "check_health", None)
        if fn is None:
            return
        if inspect.iscoroutinefunction(fn):
            await fn()
        else:
            await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def drain(self, quiet_s: float) -> int:
        """Return once no request has been held for ``quiet_s`` s; the number taken overall."""
        if self._idle is None:
            self._idle = asyncio.Event()
            if self._ongoing == 0:
                self._idle.set()
        while True:
            await self._idle.wait()
            wait = self._last_arrival + quiet_s - time.monotonic()
            if wait <= 0 and self._ongoing == 0:
                return self._total
            await asyncio.sleep(max(wait, 0.005))
