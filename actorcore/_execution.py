"""Running user code in a worker: arguments in, results out, errors wrapped.

Shared by tasks and actor methods. Arguments arrive pickled (inline, or as a
store object for big ones) with top-level ObjectRef arguments already resolved
by the caller. Results go back inline when small and through the store when
large; an exception becomes a TaskError carrying the remote traceback.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import os
import pickle
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._args import Dep
from ._locations import arg_sources, ensure_local, ensure_local_async
from ._refcount import ERROR, INLINE, STORE
from ._serialization import exception_blob, format_exception, loads_payload, serialize
from ._store_client import settle_on
from .errors import ObjectLostError, ObjectStoreFullError, SerializationError, TaskError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = [
    "ExecPool",
    "MainThreadExec",
    "TaskContext",
    "current_task",
    "decode_args",
    "decode_args_async",
    "encode_error",
    "encode_results",
    "encode_results_async",
    "encode_values",
    "store_results",
]


class TaskContext:
    """What is running right now, for logs and ``get_runtime_context()``."""

    __slots__ = ("actor_id", "label", "task_id")

    def __init__(self, label: str, task_id: bytes, actor_id: bytes | None) -> None:
        self.label = label
        self.task_id = task_id
        self.actor_id = actor_id


current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "actorcore_task", default=None
)


def _arg_value(rt: CoreRuntime, r: list[Any], refs: list[Any]) -> Any:
    _i, kind, data, oid = r[:4]
    if kind == INLINE:
        value, found = loads_payload(data, "an argument")
    elif kind == STORE:
        value, found = rt.store.get(oid, "an argument")
    else:
        raise SerializationError(f"argument {_i} arrived in an unknown form ({kind})")
    refs.extend(found)
    return value


def decode_args(
    rt: CoreRuntime, payload: Any, resolved: list[Any], *, pulled: bool = False
) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """Unpickle arguments; returns ``(args, kwargs, registration)``.

    ``registration`` is None or an Event to wait on before replying (this
    worker is registering as borrower of refs it received). Store arguments
    on other nodes are pulled here first (unless ``pulled``: done already).
    """
    if not payload and not resolved:  # a call without arguments
        return (), {}, None
    if not pulled:
        for oid, holders, owner in arg_sources(payload, resolved):
            ensure_local(rt, oid, holders, owner)
    refs: list[Any] = []
    if not payload:
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
    else:
        if isinstance(payload, list | tuple) and isinstance(payload[0], int):
            (args, kwargs), found = rt.store.get(payload[1], "the arguments")
        else:
            (args, kwargs), found = loads_payload(payload, "the arguments")
        refs.extend(found)
    if resolved:
        values = {r[0]: _arg_value(rt, r, refs) for r in resolved}
        args = tuple(values[a.i] if type(a) is Dep else a for a in args)
        if kwargs:
            kwargs = {k: values[v.i] if type(v) is Dep else v for k, v in kwargs.items()}
    reg = rt.register_borrows(refs, None) if refs else None
    return args, kwargs, reg


def encode_error(exc: BaseException, where: str) -> list[Any]:
    """One ``[ERROR, blob, None]`` result for an exception raised by user code."""
    if isinstance(exc, TaskError | SerializationError) or getattr(exc, "_actorcore_system", False):
        err: BaseException = exc
    else:
        err = TaskError(where, format_exception(exc), exc, pid=os.getpid())
    return [ERROR, exception_blob(err), None]


_PLAIN = frozenset({bytes, str, int, float, bool, type(None)})
_NOTHING: list[tuple[int, Any]] = []  # (never appended to)
_dumps = pickle.dumps


def encode_values(
    rt: CoreRuntime, value: Any, return_ids: list[bytes], owner: list[Any], where: str
) -> tuple[list[Any], list[tuple[int, Any]], Any]:
    """Result rows (None where a value goes to the store), those ``(row, Serialized)``
    to store, and the Events to wait for (borrows) or None.

    A loop thread awaits :func:`store_results` only when a value goes to the store
    (no coroutine else); :func:`encode_results_async` does both."""
    n = len(return_ids)
    if n == 1 and type(value) in _PLAIN:  # (no refs, buffers or classes inside: pickle it)
        stream = _dumps(value, 5)
        if len(stream) <= rt.config.inline_threshold:
            return [[INLINE, stream, None]], _NOTHING, None
    if n == 1:
        values = [value]
    else:
        try:
            values = list(value)
        except TypeError:
            values = []
        if len(values) != n:
            err = ValueError(f"{where} declared num_returns={n} but returned {value!r:.60}")
            return [encode_error(err, where)] * n, [], None
    out: list[Any] = []
    to_store: list[tuple[int, Any]] = []
    waits = []
    for v in values:
        try:
            ser = serialize(v, f"the return value of {where}")
        except SerializationError as e:
            out.append([ERROR, exception_blob(e), None])
            continue
        nested = None
        if ser.nested:
            nested = [[r.id, list(r.owner)] for r in ser.nested]
            ev = rt.lend_to(ser.nested, owner)
            if ev is not None:
                waits.append(ev)
        if ser.size > rt.config.inline_threshold:
            to_store.append((len(out), ser))
            out.append([STORE, 0, nested])
        else:
            out.append([INLINE, ser.payload(), nested])
    return out, to_store, (waits or None)


def _stored(row: list[Any], result: Any) -> list[Any]:
    """A result row once its value was stored (size) or failed to be (exception)."""
    if isinstance(result, BaseException):
        if not isinstance(result, ObjectStoreFullError | ConnectionError | ObjectLostError):
            raise result
        return [ERROR, exception_blob(result), None]
    return [STORE, result, row[2]]


def encode_results(
    rt: CoreRuntime, value: Any, return_ids: list[bytes], owner: list[Any], where: str
) -> tuple[list[Any], Any]:
    """Results for a call's return ids, and an Event to wait for (borrows), or None.

    Large values are written to the store with blocking calls: for threads that
    may block. A loop thread uses :func:`encode_results_async`.
    """
    out, to_store, waits = encode_values(rt, value, return_ids, owner, where)
    for i, ser in to_store:
        try:
            result: Any = rt.store.put(return_ids[i], ser, owner[0])
        except ObjectStoreFullError as e:
            result = e
        out[i] = _stored(out[i], result)
    return out, waits


async def encode_results_async(
    rt: CoreRuntime, value: Any, return_ids: list[bytes], owner: list[Any], where: str
) -> tuple[list[Any], Any]:
    """:func:`encode_results` for a loop thread: large values are written to the
    store without waiting on the daemon from this loop."""
    out, to_store, waits = encode_values(rt, value, return_ids, owner, where)
    if to_store:
        await store_results(rt, out, to_store, return_ids, owner)
    return out, waits


async def store_results(
    rt: CoreRuntime,
    out: list[Any],
    to_store: list[tuple[int, Any]],
    return_ids: list[bytes],
    owner: list[Any],
) -> None:
    """Write the large values of :func:`encode_values` to the store (on a loop thread,
    without waiting on the daemon from it) and fill in their rows of ``out``."""
    loop = asyncio.get_running_loop()
    futs = []
    for i, ser in to_store:
        fut: asyncio.Future[Any] = loop.create_future()
        rt.store.put_then(return_ids[i], ser, owner[0], functools.partial(settle_on, loop, fut))
        futs.append(fut)
    results = await asyncio.gather(*futs, return_exceptions=True)
    for (i, _ser), result in zip(to_store, results, strict=True):
        out[i] = _stored(out[i], result)


def store_args(payload: Any, resolved: list[Any]) -> list[bytes]:
    """The object ids of arguments that are read from the store."""
    oids = [r[3] for r in resolved or () if r[1] == STORE]
    if payload and isinstance(payload, list | tuple) and isinstance(payload[0], int):
        oids.append(payload[1])
    return oids


async def decode_args_async(
    rt: CoreRuntime, payload: Any, resolved: list[Any]
) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """:func:`decode_args` for a loop thread: store arguments are mapped first
    without waiting on the daemon from this loop."""
    oids = store_args(payload, resolved)
    if oids:
        await ensure_local_async(rt, arg_sources(payload, resolved))
    held = await rt.store.open_async(oids) if oids else None
    out = decode_args(rt, payload, resolved, pulled=True)
    del held  # the values made from the mappings keep them alive from here
    return out


def run_jobs(
    jobs: queue.SimpleQueue[Callable[[], None] | None], after: Callable[[], None] | None = None
) -> None:
    """Run jobs from ``jobs`` until a None; a job that raises (a late cancel
    interrupt included) is logged and does not end the thread's loop."""
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            job()
        except BaseException:
            import logging

            logging.getLogger(__name__).exception("executor job failed")
        if after is not None:
            after()


class _Parked:
    """An idle pool thread: it sleeps on ``gate`` until a job is put in ``job``."""

    __slots__ = ("gate", "job")

    def __init__(self) -> None:
        self.gate = threading.Lock()
        self.gate.acquire()  # closed: the thread waits on it when idle
        self.job: Callable[[], None] | None = None


class ExecPool:
    """Threads that run user code off the event loop. Jobs are plain callables.

    A job goes to the thread that went idle last (its stack and caches are
    still warm; the others sleep on), a new thread while under the size, else
    waits in line. A job may spend a while waiting for work of its own (an
    actor's thread waiting for its caller's next call, :meth:`begin_wait`): up
    to ``max_waiting`` such threads are not counted against the size, so they
    never hold back the jobs of others.
    """

    def __init__(self, size: int, name: str = "actorcore-exec", max_waiting: int = 4) -> None:
        self._lock = threading.Lock()
        self._parked: list[_Parked] = []  # idle threads, the last one to go idle last
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._threads = 0
        self._size = size
        self._name = name
        self._waiting = 0
        self._max_waiting = max_waiting

    def begin_wait(self) -> bool:
        """A running job is about to wait for work of its own; False: too many wait already."""
        with self._lock:
            if self._waiting >= self._max_waiting:
                return False
            self._waiting += 1
            return True

    def end_wait(self) -> None:
        with self._lock:
            self._waiting -= 1

    def jobs_waiting(self) -> bool:
        """Jobs wait in line for a thread."""
        return bool(self._pending)

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._parked:
                parked = self._parked.pop()
                parked.job = job
            elif self._threads < self._size + self._waiting:
                self._threads += 1
                parked = None
                n = self._threads
            else:
                self._pending.append(job)
                return
        if parked is not None:
            parked.gate.release()
            return
        threading.Thread(
            target=self._run, args=(job,), name=f"{self._name}-{n - 1}", daemon=True
        ).start()

    def _run(self, job: Callable[[], None]) -> None:
        me = _Parked()
        while True:
            try:
                job()
            except BaseException:  # a late cancel interrupt included: the thread goes on
                import logging

                logging.getLogger(__name__).exception("executor job failed")
            with self._lock:
                if self._pending:
                    job = self._pending.popleft()
                    continue
                self._parked.append(me)
            me.gate.acquire()
            job, me.job = me.job, None  # type: ignore[assignment]

    def resize(self, size: int) -> None:
        self._size = max(self._size, size)


class MainThreadExec:
    """The worker's main thread as an executor: it runs the sync tasks.

    Only the main thread can be interrupted where it blocks: a signal makes
    ``time.sleep``, a socket read or a lock wait return into Python (PEP 475
    retries unless the handler raises), so a cancel raised by the handler
    lands there at once instead of at the task's next bytecode. The event
    loop runs on a thread of its own; :meth:`serve` is the main thread's loop.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread_id = threading.main_thread().ident or 0

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)

    def serve(self) -> None:
        """Run jobs until :meth:`close` (call on the main thread)."""
        run_jobs(self._jobs)
