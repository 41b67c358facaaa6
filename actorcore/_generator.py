"""``ObjectRefGenerator``: the refs of a streaming call, one per yielded value.

``f.options(num_returns="streaming").remote()`` returns one at once. Iterate it
with ``for ref in gen`` / ``next(gen)`` (blocking) or ``async for ref in gen`` /
``await gen.__anext__()``: each ref comes as soon as its value was yielded.
An error raised by the generator arrives as the ref of its position (getting
it raises the TaskError), and iteration ends after it. When the call fails as
a whole (its worker died with no retries left, it was cancelled), the next
ref is the call's *end* ref, which raises that error; then iteration ends.

Items arrive on the runtime's loop into a :class:`StreamBuffer`; the consumer
takes them from any thread or loop. No lock is shared: the deque's append and
popleft are atomic, and a consumer that finds it empty registers its wake-up
first and looks again before it sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import TYPE_CHECKING, Any

from ._ref import ObjectRef
from .errors import BlockingCallError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = ["ObjectRefGenerator", "StreamBuffer"]


class StreamBuffer:
    """Refs of one stream not taken yet, filled on the runtime's loop."""

    __slots__ = ("ended", "failed", "items", "ready", "waiters")

    def __init__(self) -> None:
        self.items: collections.deque[ObjectRef] = collections.deque()
        self.ended = False
        self.failed = False
        self.ready = threading.Event()
        self.waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]
        self.waiters = collections.deque()

    def push(self, refs: list[ObjectRef]) -> None:
        """Items arrived (runtime loop)."""
        self.items.extend(refs)
        self._wake()

    def end(self, failed: bool) -> None:
        """No item comes any more (runtime loop)."""
        self.failed = failed
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self.ready.set()
        waiters = self.waiters
        while waiters:
            loop, fut = waiters.popleft()
            try:
                loop.call_soon_threadsafe(_settle, fut)
            except RuntimeError:
                pass  # that loop is closed


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ObjectRefGenerator:
    """The refs a streaming call yields, in order; iterate it (sync or async)."""

    def __init__(self, rt: CoreRuntime, end: ObjectRef, buf: StreamBuffer, window: int) -> None:
        self._rt = rt
        self._end = end
        self._buf = buf
        # with back-pressure, tell the owner core what was consumed: every quarter
        # window, and whenever we catch up (the producer may be waiting for us)
        self._report_every = max(1, window // 4) if window > 0 else 0
        self._reported = 0
        self._taken = 0
        self._end_given = False

    @property
    def stream_id(self) -> bytes:
        return self._end.id

    def completed(self) -> ObjectRef:
        """The call's end ref: its value is the number of items (or the call's error)."""
        return self._end

    def _take(self) -> ObjectRef | None:
        """The next ref if there is one now; None to wait; StopIteration when done."""
        buf = self._buf
        if buf.items:
            ref = buf.items.popleft()
            self._taken = taken = self._taken + 1
            every = self._report_every
            if every and (taken - self._reported >= every or not buf.items):
                self._reported = taken
                self._rt.streams.consumed(self._end.id, taken)
            return ref
        if buf.ended:
            if buf.items:  # ended right after we looked
                return self._take()
            if buf.failed and not self._end_given:
                self._end_given = True
                return self._end
            raise StopIteration
        return None

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        _refuse_on_loop()  # always, like get(): not only when this one would block
        ref = self._take()
        if ref is not None:
            return ref
        buf = self._buf
        rt = self._rt
        rt.block_begin()  # in a worker: give the CPU back while we wait (as get() does)
        try:
            while True:
                buf.ready.clear()
                ref = self._take()
                if ref is not None:
                    return ref
                buf.ready.wait()
        finally:
            rt.block_end()

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        try:
            ref = self._take()
            if ref is not None:
                return ref
            loop = asyncio.get_running_loop()
            while True:
                fut = loop.create_future()
                self._buf.waiters.append((loop, fut))
                ref = self._take()
                if ref is not None:
                    return ref
                await fut
                ref = self._take()
                if ref is not None:
                    return ref
        except StopIteration:
            raise StopAsyncIteration from None

    def __del__(self) -> None:
        rt = self._rt
        if rt is not None and not rt.closing:
            rt.streams.dropped(self._end.id)

    def __reduce__(self) -> Any:
        raise TypeError(
            "an ObjectRefGenerator cannot be passed to another process; iterate it here "
            "and pass the refs it yields (or call the streaming method from there)"
        )

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._end.id.hex()}, taken={self._taken})"


def _refuse_on_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise BlockingCallError(
        "next() on an ObjectRefGenerator blocks and cannot run on an event loop's thread; "
        "use `async for ref in gen` or `await gen.__anext__()` instead"
    )
