"""Submitting tasks: dependency resolution, worker leases, pipelining, retries.

The owner (the process calling ``f.remote()``) resolves the task's top-level
ObjectRef arguments first, then pushes the task straight to a worker it leased
from the node daemon for the task's resource shape. Up to
``max_tasks_in_flight_per_worker`` tasks are pipelined per lease. An idle
lease is kept for ``lease_linger_s`` (so a loop of one-at-a-time tasks does not
pay a lease round trip each), and given back at once when the daemon asks for
it because another owner waits.

A worker that dies takes its tasks with it: each is retried up to
``max_retries`` times, then fails with WorkerCrashedError. A worker that blocks
in ``get`` hands back the tasks it has not started, and they go elsewhere.

Pipelining must not trap a short task behind a long one while a CPU is free:
tasks are pipelined only onto a worker that finished something in the last
``STALL_S``; a worker that has not (a long task) gets no more, another lease
is asked for, and once it arrives the tasks queued behind the long one are
stolen back (STEAL_TASKS) and run there.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from . import _task_events as TE
from ._args import FunctionDescriptor, PreparedArgs, prepare_args, resolve_dep
from ._ids import new_id
from ._ref import ObjectRef
from ._refcount import ERROR, FAILED, ObjectEntry, wake
from ._rpc import error_from_reply, next_rid
from .errors import ActorCoreError, TaskCancelledError, WorkerCrashedError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = ["TaskSpec", "TaskSubmitter"]

logger = logging.getLogger(__name__)

OPT_RETRY_EXCEPTIONS = 1
STALL_S = 0.02  # a busy worker that finished nothing for this long takes no more tasks


class TaskSpec:
    __slots__ = (
        "args",
        "cancelled",
        "fn",
        "key",
        "lease",
        "name",
        "opts",
        "resolved",
        "retries_left",
        "return_ids",
        "rid",
        "shape",
        "task_id",
        "unresolved",
    )

    def __init__(
        self,
        fn: FunctionDescriptor,
        name: str,
        args: PreparedArgs,
        shape: dict[str, float],
        retries: int,
        opts: int,
        num_returns: int,
    ) -> None:
        self.task_id = new_id()
        self.fn = fn
        self.name = name
        self.args = args
        self.shape = shape
        self.key: Any = tuple(sorted(shape.items()))
        self.retries_left = retries
        self.opts = opts
        self.return_ids = [new_id() for _ in range(num_returns)]
        self.rid = 0
        self.lease: Lease | None = None
        self.cancelled = False
        self.resolved: list[Any] = []
        self.unresolved = 0


class Lease:
    __slots__ = (
        "address",
        "gen",
        "in_flight",
        "paused",
        "peer",
        "progress",
        "revoked",
        "worker_id",
    )

    def __init__(self, worker_id: bytes, peer: Any) -> None:
        self.worker_id = worker_id
        self.peer = peer
        self.in_flight: dict[int, TaskSpec] = {}
        self.revoked = False
        self.paused = False
        self.gen = 0
        self.progress = 0.0  # when it last started being busy or finished a task

    def stalled(self, now: float) -> bool:
        return bool(self.in_flight) and now - self.progress >= STALL_S


class ShapeQueue:
    __slots__ = ("key", "leases", "pending", "requesting", "shape")

    def __init__(self, key: Any, shape: dict[str, float]) -> None:
        self.key = key
        self.shape = shape
        self.pending: collections.deque[TaskSpec] = collections.deque()
        self.leases: list[Lease] = []
        self.requesting = 0  # rid of the lease request in flight, 0 if none


class TaskSubmitter:
    """Owner side of tasks; every method runs under ``rt.lock``."""

    def __init__(self, rt: CoreRuntime) -> None:
        self.rt = rt
        self.queues: dict[Any, ShapeQueue] = {}
        self.by_return: dict[bytes, TaskSpec] = {}
        self.closed = False
        self._stall_timer = False

    # --- submission --------------------------------------------------------------------

    def submit(
        self,
        fn: FunctionDescriptor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        name: str,
        shape: dict[str, float],
        num_returns: int,
        max_retries: int,
        retry_exceptions: bool,
    ) -> list[Any]:
        rt = self.rt
        prepared = prepare_args(rt, args, kwargs, f"{name}()")
        opts = OPT_RETRY_EXCEPTIONS if retry_exceptions else 0
        spec = TaskSpec(fn, name, prepared, shape, max_retries, opts, num_returns)
        TE.pending_task(spec.task_id, name, bool(prepared.deps))  # observability hook
        address = rt.address
        with rt.lock:
            table = rt.table
            for oid in spec.return_ids:
                e = table.create_owned(oid, address)
                e.local = 1
                e.task = spec
                self.by_return[oid] = spec
            table.add_submitted(prepared.held)
            self._resolve_then_queue(spec)
        return [ObjectRef(oid, address, _counted=True) for oid in spec.return_ids]

    def _resolve_then_queue(self, spec: TaskSpec) -> None:
        deps = spec.args.deps
        if not deps:
            self._enqueue(spec)
            return
        table = self.rt.table
        spec.resolved = [None] * len(deps)
        spec.unresolved = len(deps)
        for i, ref in enumerate(deps):
            e = table.entries[ref.id]
            cb = functools.partial(self._dep_ready, spec, i)
            if not table.add_waiter(e, cb):
                cb(e)
            elif not e.owned:
                self.rt.fetch(e)

    def _dep_ready(self, spec: TaskSpec, i: int, e: ObjectEntry) -> None:
        with self.rt.lock:
            if e.state == FAILED:
                if spec.unresolved > 0:
                    spec.unresolved = -1
                    self._finish_failed(spec, e.data)
                return
            spec.resolved[i] = [i, *resolve_dep(e)]
            spec.unresolved -= 1
            if spec.unresolved == 0 and not spec.cancelled:
                self._enqueue(spec)

    def _enqueue(self, spec: TaskSpec, front: bool = False) -> None:
        q = self.queues.get(spec.key)
        if q is None:
            q = self.queues[spec.key] = ShapeQueue(spec.key, spec.shape)
        if front:
            q.pending.appendleft(spec)
        else:
            q.pending.append(spec)
        self._pump(q)

    # --- leases and pushing ---------------------------------------------------------------

    def _pump(self, q: ShapeQueue) -> None:
        limit = self.rt.config.max_tasks_in_flight_per_worker
        pending = q.pending
        now = time.monotonic()
        pipelined = False
        while pending:
            best: Lease | None = None
            for lease in q.leases:
                n = len(lease.in_flight)
                if lease.revoked or lease.paused or n >= limit or lease.stalled(now):
                    continue
                if best is None or n < len(best.in_flight):
                    best = lease
            if best is None:
                break
            pipelined = pipelined or bool(best.in_flight)
            self._push(pending.popleft(), best)
        if pending and not q.requesting and not self.closed:
            self._request_lease(q)
        if pipelined:
            self._arm_stall_check()
        if not pending:
            for lease in list(q.leases):
                if not lease.in_flight:
                    self._lease_idle(q, lease)

    def _arm_stall_check(self) -> None:
        if not self._stall_timer and not self.closed:
            self._stall_timer = True
            self.rt.call_soon(self._arm_stall_timer)

    def _arm_stall_timer(self) -> None:
        self.rt.loop.call_later(STALL_S, self._check_stalls)

    def _check_stalls(self) -> None:
        """A pipeline stuck behind a long task: get another worker for what waits."""
        with self.rt.lock:
            self._stall_timer = False
            now = time.monotonic()
            again = False
            for q in self.queues.values():
                stuck = [
                    lease for lease in q.leases if len(lease.in_flight) > 1 and lease.stalled(now)
                ]
                if stuck and not q.requesting and not self.closed:
                    self._request_lease(q)
                again = again or any(len(lease.in_flight) > 1 for lease in q.leases)
            if again:
                self._arm_stall_check()

    def _steal_for(self, q: ShapeQueue) -> None:
        """A new worker is idle: take back tasks queued behind long ones elsewhere."""
        now = time.monotonic()
        for lease in q.leases:
            if len(lease.in_flight) > 1 and lease.stalled(now):
                try:
                    lease.peer.send(P.StealTasksMsg())
                except ConnectionError:
                    pass

    def _push(self, spec: TaskSpec, lease: Lease) -> None:
        rt = self.rt
        spec.rid = rid = next_rid()
        spec.lease = lease
        if not lease.in_flight:
            lease.progress = time.monotonic()
        lease.in_flight[rid] = spec
        lease.gen += 1
        conn = lease.peer.conn
        sent = conn.state.get("fns")
        if sent is None:
            sent = conn.state["fns"] = set()
        fn = spec.fn
        blob = None
        if fn.fn_id not in sent:
            sent.add(fn.fn_id)
            blob = fn.blob
        resolved = [r for r in spec.resolved if r is not None] if spec.resolved else []
        msg = P.PushTaskMsg(
            rid,
            spec.task_id,
            fn.fn_id,
            blob,
            spec.name,
            spec.args.payload,
            resolved,
            spec.return_ids,
            list(rt.address),
            spec.opts,
        )
        try:
            lease.peer.request(msg, functools.partial(self._on_reply, spec, lease))
        except ConnectionError as e:
            sent.discard(fn.fn_id)
            self._on_reply(spec, lease, e)

    def _request_lease(self, q: ShapeQueue) -> None:
        rt = self.rt
        rid = q.requesting = next_rid()
        try:
            rt.daemon.request(
                P.RequestLeaseMsg(rid, q.shape), functools.partial(self._on_grant, q, rid)
            )
        except ConnectionError as e:
            self._on_grant(q, rid, e)

    def _on_grant(self, q: ShapeQueue, rid: int, reply: Any) -> None:
        with self.rt.lock:
            if q.requesting == rid:
                q.requesting = 0
            if isinstance(reply, BaseException) or reply.TAG == P.Tag.ERROR_REPLY:
                err = reply if isinstance(reply, BaseException) else ActorCoreError(reply.message)
                self._fail_queue(q, err)
                return
            worker_id, address = reply.value
            self.rt.with_peer(tuple(address), functools.partial(self._leased, q, worker_id))

    def _leased(self, q: ShapeQueue, worker_id: bytes, peer: Any) -> None:
        with self.rt.lock:
            if isinstance(peer, BaseException):
                # the worker died before we reached it: the daemon knows; ask again
                self._return_lease(worker_id, kill=True)
                self._pump(q)
                return
            q.leases.append(Lease(worker_id, peer))
            if not q.pending:
                self._steal_for(q)
            self._pump(q)

    def _lease_idle(self, q: ShapeQueue, lease: Lease) -> None:
        if lease.revoked or self.closed:
            self._drop_lease(q, lease)
            return
        gen = lease.gen
        linger = self.rt.config.lease_linger_s
        self.rt.call_soon(self._arm_linger, q, lease, gen, linger)

    def _arm_linger(self, q: ShapeQueue, lease: Lease, gen: int, linger: float) -> None:
        self.rt.loop.call_later(linger, self._linger_over, q, lease, gen)

    def _linger_over(self, q: ShapeQueue, lease: Lease, gen: int) -> None:
        with self.rt.lock:
            if lease.gen == gen and not lease.in_flight and lease in q.leases:
                self._drop_lease(q, lease)

    def _drop_lease(self, q: ShapeQueue, lease: Lease) -> None:
        if lease in q.leases:
            q.leases.remove(lease)
            self._return_lease(lease.worker_id, kill=False)

    def _return_lease(self, worker_id: bytes, kill: bool) -> None:
        try:
            self.rt.daemon.send(P.ReturnLeaseMsg(worker_id, kill))
        except ConnectionError:
            pass

    def revoke(self, worker_id: bytes) -> None:
        """The daemon wants this worker back: stop pushing, return once idle."""
        with self.rt.lock:
            for q in self.queues.values():
                for lease in q.leases:
                    if lease.worker_id == worker_id:
                        lease.revoked = True
                        if not lease.in_flight:
                            self._drop_lease(q, lease)
                        return

    def tasks_returned(self, peer: Any, rids: list[int], blocked: bool) -> None:
        """A worker handed back tasks it had not started (it is blocked, or we stole them)."""
        with self.rt.lock:
            for q in self.queues.values():
                for lease in q.leases:
                    if lease.peer is not peer:
                        continue
                    if blocked:
                        lease.paused = True
                    specs = [lease.in_flight.pop(r) for r in rids if r in lease.in_flight]
                    for r in rids:  # the worker will never answer these
                        peer.pending.pop(r, None)
                    for spec in reversed(specs):
                        spec.lease = None
                        q.pending.appendleft(spec)
                    self._pump(q)

    # --- results ------------------------------------------------------------------------

    def _on_reply(self, spec: TaskSpec, lease: Lease, reply: Any) -> None:
        with self.rt.lock:
            if lease.in_flight.pop(spec.rid, None) is None:
                return  # handed back, or already failed
            spec.lease = None
            q = self.queues.get(spec.key)
            if isinstance(reply, BaseException):
                self._lease_lost(q, lease, reply)
                self._retry_or_fail(spec, reply)
            elif reply.TAG == P.Tag.ERROR_REPLY:
                self._finish_failed(spec, error_from_reply(reply))
            else:
                lease.paused = False
                lease.progress = time.monotonic()
                self._finish(spec, reply.results)
            if q is not None:
                if lease.revoked and not lease.in_flight:
                    self._drop_lease(q, lease)
                self._pump(q)

    def _lease_lost(self, q: ShapeQueue | None, lease: Lease, err: BaseException) -> None:
        if q is not None and lease in q.leases:
            q.leases.remove(lease)
        others = list(lease.in_flight.values())
        lease.in_flight.clear()
        for spec in others:
            spec.lease = None
            self._retry_or_fail(spec, err)

    def _retry_or_fail(self, spec: TaskSpec, err: BaseException) -> None:
        if spec.cancelled:
            self._finish_failed(spec, TaskCancelledError(f"task {spec.name} was cancelled"))
        elif spec.retries_left != 0 and not self.closed:
            spec.retries_left -= 1
            logger.info("retrying task %s after its worker died: %s", spec.name, err)
            self._enqueue(spec, front=True)
        else:
            self._finish_failed(
                spec,
                WorkerCrashedError(
                    f"the worker running {spec.name} died and no retries were left: {err}"
                ),
            )

    def _finish(self, spec: TaskSpec, results: list[Any]) -> None:
        rt = self.rt
        if (
            spec.opts & OPT_RETRY_EXCEPTIONS
            and spec.retries_left != 0
            and any(r[0] == ERROR for r in results)
            and not spec.cancelled
        ):
            spec.retries_left -= 1
            for _kind, _data, nested in results:
                rt.discard_result(nested)
            self._enqueue(spec, front=True)
            return
        for oid, (kind, data, nested) in zip(spec.return_ids, results, strict=True):
            self.by_return.pop(oid, None)
            rt.adopt_result(oid, kind, data, nested)
        self._release_args(spec)

    def _finish_failed(self, spec: TaskSpec, err: BaseException) -> None:
        TE.owner_failed(spec.task_id, spec.name, err)  # observability hook
        table = self.rt.table
        for oid in spec.return_ids:
            self.by_return.pop(oid, None)
            e = table.entries.get(oid)
            if e is not None:
                e.task = None
                wake(table.complete(e, ERROR, err), e)
        self._release_args(spec)

    def _release_args(self, spec: TaskSpec) -> None:
        held = spec.args.held
        if held:
            instrs = self.rt.table.remove_submitted(held)
            spec.args.held = []
            self.rt.execute(instrs)
        spec.args.store_ref = None

    def _fail_queue(self, q: ShapeQueue, err: BaseException) -> None:
        while q.pending:
            self._finish_failed(q.pending.popleft(), err)

    # --- cancel and teardown ----------------------------------------------------------------

    def cancel(self, oid: bytes, force: bool) -> bool:
        """Cancel the task producing ``oid``; False if it is not (any more) a pending task."""
        with self.rt.lock:
            spec = self.by_return.get(oid)
            if spec is None or spec.cancelled:
                return False
            spec.cancelled = True
            lease = spec.lease
            if lease is None:
                q = self.queues.get(spec.key)
                if q is not None and spec in q.pending:
                    q.pending.remove(spec)
                self._finish_failed(spec, TaskCancelledError(f"task {spec.name} was cancelled"))
                return True
        try:
            lease.peer.send(P.CancelTaskMsg(spec.task_id, force))
        except ConnectionError:
            pass
        return True

    def peer_closed(self, peer: Any) -> None:
        """Connections to leased workers fail their requests themselves; forget the lease."""
        with self.rt.lock:
            for q in self.queues.values():
                for lease in list(q.leases):
                    if lease.peer is peer:
                        q.leases.remove(lease)
                        self._pump(q)

    def fail_all(self, err: BaseException) -> None:
        with self.rt.lock:
            for q in self.queues.values():
                self._fail_queue(q, err)

    def close(self) -> None:
        with self.rt.lock:
            self.closed = True
            for q in self.queues.values():
                for lease in list(q.leases):
                    self._drop_lease(q, lease)
