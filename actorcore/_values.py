"""Reading values: ``get``, ``wait``, ``await ref``, futures and ``as_completed``.

A value is turned into a Python object in the thread that asked for it: small
values are unpickled from their inline payload, large ones from the store with
zero-copy buffers. A value already there is read without a lock or a hop to
the runtime's loop (published entries only); otherwise the object core is
asked to watch the objects (an event), and its waiters, run on the runtime's
loop, wake the waiting thread (a lock) or coroutine (a future of its own loop,
woken in batches).
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
from ._arg_recovery import PAUSE_S, stale_limit_s
from ._owner._own_reply import NO_REPLY, own_reply, own_reply_async
from ._ref import ObjectRef
from ._refcount import FAILED, INLINE, PENDING, READY, STORE, ObjectEntry
from ._serialization import deserialize, loads_payload, loads_plain
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


def _stand_in(ref: ObjectRef) -> ObjectEntry:
    """A PENDING entry for a ref the object core has not seen yet (its creation is queued)."""
    return ObjectEntry(ref.id, ref.owner, False)


def peek(rt: CoreRuntime, refs: Sequence[ObjectRef]) -> list[ObjectEntry] | None:
    """The table's entries of ``refs`` without a lock (any thread); None if one is missing.

    Only published state may be read from them: a value once ``state`` left
    PENDING (the loop sets ``kind`` and ``data`` before ``state``).
    """
    entries = rt.table.entries
    out = []
    for r in refs:
        e = entries.get(r.id)
        if e is None:
            return None
        out.append(e)
    return out


def watch(rt: CoreRuntime, refs: Sequence[ObjectRef], cb: Callable[[ObjectEntry], None]) -> None:
    """``cb(entry)`` on the runtime's loop once each ref's value is there (any thread)."""
    items = [(r.id, r.owner) for r in refs]
    me = rt.my_id
    if rt.on_loop_thread() or any(owner[0] != me for _oid, owner in items):
        rt.objects.watch(items, cb)  # (a borrowed value is fetched: wake the loop)
    else:
        rt.objects.watch_owned(items, cb)  # a result on its way wakes the loop anyway


def unwatch(rt: CoreRuntime, refs: Sequence[ObjectRef], cb: Callable[[ObjectEntry], None]) -> None:
    rt.objects.unwatch([r.id for r in refs], cb)


def value_of(rt: CoreRuntime, e: ObjectEntry) -> Any:
    """The Python value of a READY entry; raises the error of a FAILED one."""
    if e.state == FAILED:
        raise e.data
    if e.state == PENDING:  # reset since it was seen ready (its copies' node died)
        raise ObjectLostError(f"object {e.oid.hex()} is being made again")
    if e.kind == INLINE:
        data = e.data  # (an object id names it in errors: "object <hex>")
        if type(data) is bytes and e.owned and e.nested is None:
            # its producer listed every ref it pickled (an owned entry records them
            # as ``nested``): none, so none to collect while unpickling
            return loads_plain(data, e.oid)
        if type(data) is bytes:
            value, refs = deserialize(data, None, e.oid)
        else:
            value, refs = loads_payload(data, e.oid)
    elif e.kind == STORE:
        if not L.is_local(rt, e):
            L.ensure_local(rt, e.oid, L.holders_of(e), e.owner)
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


class _Counter:
    """Counts watched entries as they become usable (on the runtime's loop).

    ``woke`` is the object core's waiter: an entry whose value is there counts
    at once, or (``fetch_local``) once it was pulled to this node. ``fire()``
    runs when ``num`` counted.
    """

    __slots__ = ("fetch_local", "fire", "got", "need", "rt")

    def __init__(self, rt: CoreRuntime, num: int, fetch_local: bool, fire: Callable[[], None]):
        self.rt = rt
        self.need = num
        self.fetch_local = fetch_local
        self.fire = fire
        self.got: dict[bytes, ObjectEntry] = {}

    def woke(self, e: ObjectEntry) -> None:
        self.got[e.oid] = e
        if e.state != PENDING and (not self.fetch_local or _usable(self.rt, e, True)):
            self.need -= 1  # (count(), inline: once per object)
            if self.need == 0:
                self.fire()
        else:
            pull_local(self.rt, e, self.count)  # ready elsewhere: counted once it is here

    def count(self, _e: ObjectEntry) -> None:
        self.need -= 1
        if self.need == 0:
            self.fire()

    def entries(self, refs: Sequence[ObjectRef]) -> list[ObjectEntry]:
        """The entries of ``refs`` as last seen (stand-ins for ones never seen)."""
        got, table = self.got, self.rt.table.entries
        return [got.get(r.id) or table.get(r.id) or _stand_in(r) for r in refs]


def _enough(
    rt: CoreRuntime, refs: Sequence[ObjectRef], num: int, fetch_local: bool
) -> list[ObjectEntry] | None:
    """The fast path of a wait: the entries, if ``num`` are usable already (no loop hop)."""
    entries = peek(rt, refs)
    if entries is None:
        return None
    if num == len(entries):
        ok = all(_usable(rt, e, fetch_local) for e in entries)
    else:
        ok = sum(1 for e in entries if _usable(rt, e, fetch_local)) >= num
    return entries if ok else None


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
    entries = _enough(rt, refs, num, fetch_local)
    if entries is not None:
        return entries
    lock = _thread.allocate_lock()
    lock.acquire()
    counter = _Counter(rt, num, fetch_local, lock.release)
    watch(rt, refs, counter.woke)
    rt.block_begin()
    try:
        acquired = lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
    except BaseException:  # interrupted (a cancelled task): stop watching
        unwatch(rt, refs, counter.woke)
        raise
    finally:
        rt.block_end()
    if not acquired:
        unwatch(rt, refs, counter.woke)
        entries = counter.entries(refs)
        raise GetTimeoutError(
            f"{sum(1 for e in entries if e.state == PENDING)} of {len(refs)} objects were "
            f"not ready after {timeout} s"
        )
    entries = counter.entries(refs)
    if rt.broken is not None and any(e.state == PENDING for e in entries):
        raise rt.broken
    return entries


def get(rt: CoreRuntime, refs: Any, timeout: float | None) -> Any:
    if isinstance(refs, ObjectRef):
        e = rt.table.entries.get(refs.id)
        if (e is None or e.state == PENDING) and rt.broken is None:
            # the reply to a call this thread just sent: read it here (see own_reply)
            deadline = None if timeout is None else time.monotonic() + timeout
            value = own_reply(rt, refs.id, timeout)
            if value is not NO_REPLY:
                return value
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
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
    try:
        return value_of(rt, e)
    except ObjectLostError:
        failed = L.holders_of(e)
        if not rt.recovery.read_failed(e):
            raise
    return _read_again(rt, ref, failed, timeout)


def _read_again(
    rt: CoreRuntime, ref: ObjectRef, failed: list[bytes] | None, timeout: float | None
) -> Any:
    """The rest of :func:`_read` once a read found the object lost (``failed``: the
    holders it found none on): wait for it, and read it again."""
    deadline = None if timeout is None else time.monotonic() + timeout
    stale = _Stale(rt)
    reads = 1
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        e = _wait_entries(rt, (ref,), 1, left)[0]
        pause = stale.pause(e, failed)
        if pause:
            time.sleep(pause if left is None else min(pause, left))  # backoff (see _Stale)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            e = _wait_entries(rt, (ref,), 1, left)[0]  # (reset meanwhile: the node died)
        elif reads >= _REBUILD_READS:
            return value_of(rt, e)  # the last read: its error is the answer
        else:
            reads += 1
        failed = L.holders_of(e)
        try:
            return value_of(rt, e)
        except ObjectLostError:
            if not rt.recovery.read_failed(e):
                raise


class _Stale:
    """A borrowed object's owner that answers with the very holders a copy just failed
    from has not learned of their node's death yet (it will within a node TTL, and then
    rebuild the object): its reader asks again after a pause, for a bounded time."""

    __slots__ = ("limit_s", "since")

    def __init__(self, rt: CoreRuntime) -> None:
        self.since: float | None = None
        self.limit_s = stale_limit_s(rt.config.node_ttl_s)

    def pause(self, e: ObjectEntry, failed: list[bytes] | None) -> float:
        """The pause before the next read of ``e`` (0: read again now, as a new try)."""
        if e.owned or e.state != READY or not failed or L.holders_of(e) != failed:
            self.since = None
            return 0.0
        now = time.monotonic()
        if self.since is None:
            self.since = now
        return PAUSE_S if now - self.since < self.limit_s else 0.0


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
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            entries = _wait_entries(rt, refs, num_returns, left, fetch_local)
        except GetTimeoutError:
            entries = _current(rt, refs)
        ready, rest = _partition(rt, refs, entries, num_returns, fetch_local)
        pause = _pull_failed_pause(ready, num_returns, deadline)
        if pause <= 0:
            return ready, rest
        time.sleep(pause)  # pacing: the owner has not heard of the holders' death yet


def _pull_failed_pause(ready: list[Any], num_returns: int, deadline: float | None) -> float:
    """How long a wait pauses before looking again (0: it returns now).

    A wait wakes early with fewer than ``num_returns`` ready only when a pull of a
    ready object failed (its copies' node just died, its owner does not know yet):
    it looks again after a pause, until the owner rebuilds it, fails it or the
    timeout ends, instead of returning early with nothing ready.
    """
    if len(ready) >= num_returns:
        return 0.0
    if deadline is None:
        return PAUSE_S
    return min(PAUSE_S, deadline - time.monotonic())


def _current(rt: CoreRuntime, refs: Sequence[ObjectRef]) -> list[ObjectEntry]:
    table = rt.table.entries
    return [table.get(r.id) or _stand_in(r) for r in refs]


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
    refs: Sequence[ObjectRef],
    num: int,
    timeout: float | None,
    fetch_local: bool = False,
) -> list[ObjectEntry]:
    """Wait until ``num`` of ``refs`` are usable; their entries as last seen.

    Raises TimeoutError after ``timeout`` s. Cancelling stops the watch.
    """
    entries = _enough(rt, refs, num, fetch_local)
    if entries is not None:
        return entries
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    waker = _waker(loop)
    counter = _Counter(rt, num, fetch_local, lambda: waker.wake(fut))
    watch(rt, refs, counter.woke)
    try:
        if timeout is None:
            await fut
        else:
            await asyncio.wait_for(fut, timeout)
    except BaseException:
        unwatch(rt, refs, counter.woke)
        raise
    return counter.entries(refs)


async def await_ref(rt: CoreRuntime, ref: ObjectRef) -> Any:
    if rt.broken is not None:
        raise rt.broken
    if threading.get_ident() != rt.loop_thread_id:
        e = rt.table.entries.get(ref.id)
        if e is None or e.state == PENDING:  # this thread's own call: its loop reads the reply
            value = await own_reply_async(rt, ref.id)
            if value is not NO_REPLY:
                return value
    stale: _Stale | None = None  # (made when a pull first fails)
    failed: list[bytes] | None = None  # the holders the last pull found no copy on
    reads = 0
    while reads < _REBUILD_READS:
        # (a copy on another node is pulled)
        e = (await _until_ready(rt, (ref,), 1, None, True))[0]
        if e.state != FAILED and not is_local(rt, e):
            if stale is None:
                stale = _Stale(rt)
            pause = stale.pause(e, failed)
            failed = L.holders_of(e)
            if rt.recovery.read_failed(e):  # no copy: rebuilt from lineage, or asked again
                if pause:
                    await asyncio.sleep(pause)  # backoff (see _Stale)
                else:
                    reads += 1
                continue
        reads += 1
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
    e = (await _until_ready(rt, (ref,), 1, None, True))[0]
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
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            entries = await _until_ready(rt, refs, num_returns, left, fetch_local)
        except TimeoutError:
            entries = _current(rt, refs)
        ready, rest = _partition(rt, refs, entries, num_returns, fetch_local)
        pause = _pull_failed_pause(ready, num_returns, deadline)
        if pause <= 0:
            return ready, rest
        await asyncio.sleep(pause)  # pacing: see _pull_failed_pause


async def as_completed(rt: CoreRuntime, refs: Sequence[Any]) -> AsyncIterator[Any]:
    """Yield each ref once its value is there (or failed), in completion order."""
    _check_refs(refs, "as_completed")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    waker_thread = threading.get_ident()
    by_id: dict[bytes, list[Any]] = {}
    for ref in refs:
        by_id.setdefault(ref.id, []).append(ref)
    unique = [same[0] for same in by_id.values()]

    def put(ready: list[Any]) -> None:
        for r in ready:
            queue.put_nowait(r)

    def woke(e: ObjectEntry) -> None:  # on the runtime's loop
        ready = by_id.get(e.oid) or []
        if threading.get_ident() == waker_thread:
            put(ready)
        else:
            loop.call_soon_threadsafe(put, ready)

    watch(rt, unique, woke)
    try:
        for _ in range(len(refs)):
            yield await queue.get()
    finally:
        unwatch(rt, unique, woke)


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
                pull_local(rt, e, ready_here)
            else:
                ready_here(e)
        else:
            settle(e)

    def ready_here(e: ObjectEntry) -> None:
        rt.store.open_then([e.oid], lambda held: opened(e, held))

    watch(rt, (ref,), ready)  # (ready runs on the runtime's loop)
    return fut
