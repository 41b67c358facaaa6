"""Reading values: ``get``, ``wait``, ``await ref``, futures and ``as_completed``.

A value is turned into a Python object in the thread that asked for it: small
values are unpickled from their inline payload, large ones from the store with
zero-copy buffers. Waiting threads sleep on a lock; waiting coroutines on a
future of their own loop, woken in batches from the runtime's loop.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _locations as L
from ._ref import ObjectRef
from ._refcount import FAILED, INLINE, PENDING, STORE, ObjectEntry
from ._serialization import loads_payload
from .errors import GetTimeoutError, ObjectLostError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = [
    "as_completed",
    "await_ref",
    "get",
    "is_local",
    "pull_local",
    "ref_future",
    "value_of",
    "wait",
    "wait_async",
]


def _check_refs(refs: Sequence[Any], fn: str) -> None:
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"{fn}() takes ObjectRefs, got a {type(r).__name__}: {r!r:.80}")


def entry_of(rt: CoreRuntime, ref: ObjectRef) -> ObjectEntry:
    """The entry of ``ref`` (under the lock); starts a fetch for borrowed values."""
    e = rt.table.entries.get(ref.id)
    if e is None:
        e = rt.table.add_local(ref.id, ref.owner)  # a ref from before a restart
        e.local -= 1
        if e.owned:
            rt.table.complete(e, 2, ObjectLostError(f"object {ref.id.hex()} is unknown here"))
    if e.state == PENDING and not e.owned and not e.fetching:
        rt.fetch(e)
    return e


def value_of(rt: CoreRuntime, e: ObjectEntry) -> Any:
    """The Python value of a READY entry; raises the error of a FAILED one."""
    if e.state == FAILED:
        raise e.data
    if e.kind == INLINE:
        value, refs = loads_payload(e.data, f"object {e.oid.hex()}")
    elif e.kind == STORE:
        if not L.is_local(rt, e):
            L.ensure_local(rt, e.oid, L.holders_of(e), None if e.owned else e.owner)
            L.mark_local(rt, e)
        value, refs = rt.store.get(e.oid, f"object {e.oid.hex()}")
    else:
        raise ObjectLostError(f"object {e.oid.hex()} has no value here")
    if refs:
        rt.register_borrows(refs, e.oid)
    return value


# --- where a ready value is: the hook a cross-node pull plugs into ------------------------


def is_local(rt: CoreRuntime, e: ObjectEntry) -> bool:
    """Whether the value of a READY entry can be read on this node without a transfer.

    On one node every ready value is local: an inline value lives in this
    process, a store value in this node's store. With several nodes, a store
    value whose copies are all on other nodes is not local until pulled.
    """
    return L.is_local(rt, e)


def pull_local(rt: CoreRuntime, e: ObjectEntry, done: Callable[[ObjectEntry], None]) -> None:
    """Bring the value of a READY entry to this node; ``done(e)`` once it is local.

    The cross-node pull plugs in here; on one node nothing is ever remote.
    """
    L.pull_async(rt, e, done)


def _usable(rt: CoreRuntime, e: ObjectEntry, fetch_local: bool) -> bool:
    """Ready for ``wait``: left PENDING, and (``fetch_local``) readable on this node."""
    if e.state == PENDING:
        return False
    return not fetch_local or e.state == FAILED or is_local(rt, e)


def _add_usable_waiter(
    rt: CoreRuntime, e: ObjectEntry, fetch_local: bool, cb: Callable[[ObjectEntry], None]
) -> Callable[[ObjectEntry], None] | None:
    """Arrange ``cb(e)`` for when ``e`` is usable (under the lock); returns the callback
    registered with the table (to remove later), or None when ``e`` is usable now."""
    if not fetch_local:
        return cb if rt.table.add_waiter(e, cb) else None

    def ready(e: ObjectEntry) -> None:
        if _usable(rt, e, True):
            cb(e)
        else:
            pull_local(rt, e, cb)

    if rt.table.add_waiter(e, ready):
        return ready
    if _usable(rt, e, True):
        return None
    pull_local(rt, e, cb)  # ready elsewhere: counted once it is here
    return ready


def _add_waiters(
    rt: CoreRuntime, entries: list[ObjectEntry], fetch_local: bool, cb: Any
) -> list[tuple[ObjectEntry, Any]]:
    """Register ``cb`` on each entry not usable yet; the ``(entry, callback)`` pairs."""
    waiting = []
    for e in entries:
        if not _usable(rt, e, fetch_local):
            registered = _add_usable_waiter(rt, e, fetch_local, cb)
            if registered is not None:
                waiting.append((e, registered))
    return waiting


def _wait_entries(
    rt: CoreRuntime,
    refs: Sequence[ObjectRef],
    num: int,
    timeout: float | None,
    fetch_local: bool = False,
) -> list[ObjectEntry]:
    """Block until ``num`` of ``refs`` are usable (see :func:`_usable`); their entries."""
    if rt.broken is not None:
        raise rt.broken
    with rt.lock:
        entries = [entry_of(rt, r) for r in refs]
        ready = sum(1 for e in entries if _usable(rt, e, fetch_local))
        if ready >= num:
            return entries
        lock = _thread.allocate_lock()
        lock.acquire()
        need = [num - ready]

        def woke(_e: ObjectEntry) -> None:
            need[0] -= 1
            if need[0] == 0:
                lock.release()

        waiting = _add_waiters(rt, entries, fetch_local, woke)
    rt.block_begin()
    try:
        if not lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise GetTimeoutError(
                f"{sum(1 for e in entries if e.state == PENDING)} of {len(refs)} objects were "
                f"not ready after {timeout} s"
            )
    finally:
        rt.block_end()
        with rt.lock:
            for e, cb in waiting:
                rt.table.remove_waiter(e, cb)
    if rt.broken is not None and any(e.state == PENDING for e in entries):
        raise rt.broken
    return entries


def get(rt: CoreRuntime, refs: Any, timeout: float | None) -> Any:
    if isinstance(refs, ObjectRef):
        e = _wait_entries(rt, (refs,), 1, timeout)[0]
        return _read(rt, refs, e, timeout)
    if not isinstance(refs, list | tuple):
        raise TypeError(f"get() takes an ObjectRef or a list of them, not {type(refs).__name__}")
    _check_refs(refs, "get")
    entries = _wait_entries(rt, refs, len(refs), timeout)
    return [_read(rt, r, e, timeout) for r, e in zip(refs, entries, strict=True)]


_REBUILD_READS = 3  # reads of one object that may each find it lost and wait for a rebuild


def _read(rt: CoreRuntime, ref: ObjectRef, e: ObjectEntry, timeout: float | None) -> Any:
    """:func:`value_of`; an object found lost is rebuilt from lineage (owned) or asked of
    its owner again (borrowed), and read again (within what is left of ``timeout``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(_REBUILD_READS):
        try:
            return value_of(rt, e)
        except ObjectLostError:
            if not rt.recovery.read_failed(e):
                raise
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        e = _wait_entries(rt, (ref,), 1, left)[0]
    return value_of(rt, e)


def _partition(
    rt: CoreRuntime,
    refs: Sequence[ObjectRef],
    entries: list[ObjectEntry],
    num: int,
    fetch_local: bool,
) -> tuple[list[Any], list[Any]]:
    ready: list[Any] = []
    rest: list[Any] = []
    for ref, e in zip(refs, entries, strict=True):
        if len(ready) < num and _usable(rt, e, fetch_local):
            ready.append(ref)
        else:
            rest.append(ref)
    return ready, rest


def _check_wait_args(refs: Sequence[Any], num_returns: int, fetch_local: bool) -> list[Any]:
    if not isinstance(fetch_local, bool):
        raise TypeError(f"fetch_local must be True or False, not {fetch_local!r:.40}")
    if not isinstance(refs, list | tuple):
        raise TypeError(f"wait() takes a list of ObjectRefs, not {type(refs).__name__}")
    _check_refs(refs, "wait")
    if len({r.id for r in refs}) != len(refs):
        raise ValueError("wait() got the same ObjectRef more than once")
    if not 1 <= num_returns <= max(len(refs), 1):
        raise ValueError(
            f"num_returns must be between 1 and len(refs)={len(refs)}, not {num_returns}"
        )
    return list(refs)


def wait(
    rt: CoreRuntime,
    refs: Sequence[Any],
    num_returns: int,
    timeout: float | None,
    fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]:
    """``(ready, not_ready)``; with ``fetch_local`` a ref is ready once its value is
    readable on this node (pulled here if need be), else once it is ready anywhere."""
    refs = _check_wait_args(refs, num_returns, fetch_local)
    if not refs:
        return [], []
    with rt.lock:
        entries = [entry_of(rt, r) for r in refs]
    # fast path: enough are ready already (the common case of a draining loop)
    ready, rest = _partition(rt, refs, entries, num_returns, fetch_local)
    if len(ready) >= num_returns:
        return ready, rest
    try:
        entries = _wait_entries(rt, refs, num_returns, timeout, fetch_local)
    except GetTimeoutError:
        pass
    return _partition(rt, refs, entries, num_returns, fetch_local)


# --- coroutines ---------------------------------------------------------------------------


class _LoopWaker:
    """Wakes futures of one foreign loop in batches: one self-pipe write per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self.pending: list[asyncio.Future[Any]] = []
        self.lock = threading.Lock()
        self.scheduled = False

    def wake(self, fut: asyncio.Future[Any]) -> None:
        if threading.get_ident() == self.thread:
            if not fut.done():
                fut.set_result(None)
            return
        with self.lock:
            self.pending.append(fut)
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:
            pass  # that loop was closed; nobody is waiting any more

    def _run(self) -> None:
        with self.lock:
            futs, self.pending = self.pending, []
            self.scheduled = False
        for fut in futs:
            if not fut.done():
                fut.set_result(None)


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker] = (
    weakref.WeakKeyDictionary()
)
_wakers_lock = threading.Lock()


def _waker(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    w = _wakers.get(loop)
    if w is None:
        with _wakers_lock:
            w = _wakers.get(loop)
            if w is None:
                w = _wakers[loop] = _LoopWaker(loop)
    return w


async def _until_ready(
    rt: CoreRuntime,
    entries: list[ObjectEntry],
    num: int,
    timeout: float | None,
    fetch_local: bool = False,
) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    waker = _waker(loop)
    with rt.lock:
        ready = sum(1 for e in entries if _usable(rt, e, fetch_local))
        if ready >= num:
            return
        need = [num - ready]

        def woke(_e: ObjectEntry) -> None:
            need[0] -= 1
            if need[0] == 0:
                waker.wake(fut)

        waiting = _add_waiters(rt, entries, fetch_local, woke)
    try:
        if timeout is None:
            await fut
        else:
            await asyncio.wait_for(fut, timeout)
    finally:
        with rt.lock:
            for e, cb in waiting:
                rt.table.remove_waiter(e, cb)


async def await_ref(rt: CoreRuntime, ref: ObjectRef) -> Any:
    if rt.broken is not None:
        raise rt.broken
    with rt.lock:
        e = entry_of(rt, ref)
    for _ in range(_REBUILD_READS):
        if e.state == PENDING or not is_local(rt, e):
            await _until_ready(rt, [e], 1, None, True)  # (a copy on another node is pulled)
            if e.state != FAILED and not is_local(rt, e) and rt.recovery.read_failed(e):
                continue  # the pull found no copy: rebuilt from lineage, or asked again
        try:
            if e.kind == STORE and e.state != FAILED:
                # map it without a blocking round trip to the daemon (which may be
                # spilling); while `held` lives, value_of finds the mapping
                held = await rt.store.open_async([e.oid])
                value = value_of(rt, e)
                del held
                return value
            return value_of(rt, e)
        except ObjectLostError:
            if not rt.recovery.read_failed(e):  # (an owned object is rebuilt: wait again)
                raise
    return value_of(rt, e)


async def wait_async(
    rt: CoreRuntime,
    refs: Sequence[Any],
    num_returns: int,
    timeout: float | None,
    fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]:
    """:func:`wait` for a coroutine."""
    refs = _check_wait_args(refs, num_returns, fetch_local)
    if not refs:
        return [], []
    with rt.lock:
        entries = [entry_of(rt, r) for r in refs]
    try:
        await _until_ready(rt, entries, num_returns, timeout, fetch_local)
    except TimeoutError:
        pass
    return _partition(rt, refs, entries, num_returns, fetch_local)


async def as_completed(rt: CoreRuntime, refs: Sequence[Any]) -> AsyncIterator[Any]:
    """Yield each ref once its value is there (or failed), in completion order."""
    _check_refs(refs, "as_completed")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    waker_thread = threading.get_ident()

    def put(ref: Any) -> None:
        if threading.get_ident() == waker_thread:
            queue.put_nowait(ref)
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ref)

    registered: list[tuple[ObjectEntry, Any]] = []
    with rt.lock:
        for ref in refs:
            e = entry_of(rt, ref)

            def woke(_e: ObjectEntry, ref: Any = ref) -> None:
                put(ref)

            if rt.table.add_waiter(e, woke):
                registered.append((e, woke))
            else:
                queue.put_nowait(ref)
    try:
        for _ in range(len(refs)):
            yield await queue.get()
    finally:
        with rt.lock:
            for e, cb in registered:
                rt.table.remove_waiter(e, cb)


def ref_future(rt: CoreRuntime, ref: ObjectRef) -> concurrent.futures.Future[Any]:
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    # The future keeps the ref alive until it resolves (the caller may drop the
    # ref right away: its entry, with our waiter, would be freed and we'd hang).
    keep: list[ObjectRef] = [ref]

    def settle(e: ObjectEntry) -> None:
        try:
            fut.set_result(value_of(rt, e))
        except BaseException as exc:
            fut.set_exception(exc)
        finally:
            keep.clear()

    def opened(e: ObjectEntry, held: Any) -> None:
        if isinstance(held, BaseException):
            keep.clear()
            fut.set_exception(held)
        else:
            settle(e)  # `held` keeps the mapping for value_of

    def ready(e: ObjectEntry) -> None:
        if e.kind == STORE and e.state != FAILED:  # the runtime loop must not block
            if not is_local(rt, e):  # on another node: pulled here first
                pull_local(rt, e, lambda e: rt.call_soon(ready_here, e))
            else:
                ready_here(e)
        else:
            settle(e)

    def ready_here(e: ObjectEntry) -> None:
        rt.store.open_then([e.oid], lambda held: opened(e, held))

    with rt.lock:
        e = entry_of(rt, ref)
        waiting = rt.table.add_waiter(e, lambda e: rt.call_soon(ready, e))
    if not waiting:
        ready(e)
    return fut
