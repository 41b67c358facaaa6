"""The owner's task core: leases, pipelining, stealing, retries. No I/O, no clock.

The owner (the process calling ``f.remote()``) resolves a task's top-level
ObjectRef arguments first, then pushes the task straight to a worker it leased
from a node daemon for the task's resource shape. Up to
``max_in_flight`` tasks are pipelined per lease. An idle lease is kept for
``linger_s`` (so a loop of one-at-a-time tasks does not pay a lease round trip
each), and given back at once when the daemon revokes it.

A worker that dies takes its tasks with it: each is retried up to
``max_retries`` times, then fails with WorkerCrashedError. A worker that blocks
in ``get`` hands back the tasks it has not started, and they go elsewhere.

Pipelining must not trap a short task behind a long one while a CPU is free:
tasks are pipelined only onto a worker that finished something in the last
``stall_s``; a worker that has not (a long task) gets no more, another lease is
asked for, and once it arrives the tasks queued behind the long one are stolen
back (STEAL_TASKS) and run there.

A lease may be granted on another node (its grant says which), and a daemon may
redirect a request to another node's daemon; ``NodeDied`` loses the leases on
that node (their tasks are retried) and asks again for a request sent there.

:class:`TaskCore` is driven by ``handle(events, now) -> instructions``; the
shell (:mod:`._task_shell`) feeds it on the runtime's loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from .._refcount import ERROR, STORE
from ..errors import ActorCoreError, TaskCancelledError, WorkerCrashedError
from ..scheduler._resources import SPREAD_KEY
from . import _task_events as E
from ._task_state import Lease, ShapeQueue, TaskSpec

__all__ = ["OPT_RETRY_EXCEPTIONS", "STALL_S", "Lease", "ShapeQueue", "TaskCore", "TaskSpec"]

logger = logging.getLogger(__name__)

OPT_RETRY_EXCEPTIONS = 1
STALL_S = 0.02  # a busy worker that finished nothing for this long takes no more tasks
# A lease request sent to another node's daemon that could not reach it (the node died
# and its death is not declared yet) is asked again through the local daemon, paced:
UNREACHABLE_RETRY_S = 0.2
UNREACHABLE_TRIES = 150  # ~30 s: far past any node TTL
# A worker that could not get a task's argument (its copies went with a dead node, whose
# death its owner learns within the TTL, then rebuilding it): the arguments are resolved
# again after a pause, this many times, without using the task's retries.
ARGS_LOST_RETRY_S = 0.5
ARGS_LOST_TRIES = 20  # ~10 s
# a forced cancel's worker that has not ended itself by then is killed by its daemon
FORCE_KILL_GRACE_S = 0.5


class TaskCore:
    """The owner's side of tasks as a state machine: ``handle(events, now)``."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        linger_s: float,
        next_rid: Callable[[], int],
        stall_s: float = STALL_S,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.linger_s = linger_s
        self.stall_s = stall_s
        self.next_rid = next_rid
        self.queues: dict[Any, ShapeQueue] = {}
        self.by_return: dict[bytes, TaskSpec] = {}
        self.lease_requests: dict[int, ShapeQueue] = {}
        self.closed = False
        self.now = 0.0
        self._stall_armed = False
        self._unreachable: dict[Any, int] = {}  # shape key -> redirects that failed in a row
        self._out: list[Any] = []
        self._handlers: dict[type, Callable[[Any], None]] = {
            E.SubmitTask: self._on_submit,
            E.DepsReady: self._on_deps_ready,
            E.DepsFailed: self._on_deps_failed,
            E.LeaseGranted: self._on_granted,
            E.LeaseUnreachable: self._on_unreachable,
            E.LeaseRedirected: self._on_redirected,
            E.LeaseFailed: self._on_lease_failed,
            E.TaskReplied: self._on_replied,
            E.TaskRejected: self._on_rejected,
            E.ArgsLost: self._on_args_lost,
            E.ResolveAgain: self._on_resolve_again,
            E.PushFailed: self._on_push_failed,
            E.TasksReturned: self._on_returned,
            E.PeerClosed: self._on_peer_closed,
            E.LeaseRevoked: self._on_revoked,
            E.CancelTask: self._on_cancel,
            E.CancelChildren: self._on_cancel_children,
            E.ForceKill: self._on_force_kill,
            E.LingerOver: self._on_linger_over,
            E.RetryLease: self._on_retry_lease,
            E.StallCheck: self._on_stall_check,
            E.NodeDied: self._on_node_died,
            E.DaemonLost: self._on_daemon_lost,
            E.Close: self._on_close,
        }

    def handle(self, events: Iterable[Any], now: float) -> list[Any]:
        """Apply ``events`` (in order) at time ``now``; returns the instructions to carry out."""
        self.now = now
        out = self._out = []
        handlers = self._handlers
        for ev in events:
            handlers[type(ev)](ev)
        self._out = []
        return out

    # --- submission and arguments --------------------------------------------------------

    def _on_submit(self, ev: E.SubmitTask) -> None:
        spec = ev.spec
        for oid in spec.return_ids:
            self.by_return[oid] = spec
        if spec.args.deps:
            self._out.append(E.ResolveDeps(spec))
        else:
            self._enqueue(spec)

    def _on_deps_ready(self, ev: E.DepsReady) -> None:
        if not ev.spec.cancelled:
            ev.spec.resolved = ev.resolved
            self._enqueue(ev.spec)

    def _on_deps_failed(self, ev: E.DepsFailed) -> None:
        if not ev.spec.cancelled:
            self._finish_failed(ev.spec, ev.error)

    def _enqueue(self, spec: TaskSpec, front: bool = False) -> None:
        q = self.queues.get(spec.key)
        if q is None:
            q = self.queues[spec.key] = ShapeQueue(spec.key, spec.shape)
        if front:
            q.pending.appendleft(spec)
        else:
            q.pending.append(spec)
        self._pump(q)

    # --- leases and pushing ----------------------------------------------------------------

    def _best_lease(self, q: ShapeQueue) -> Lease | None:
        best: Lease | None = None
        limit, now, stall_s = self.max_in_flight, self.now, self.stall_s
        if SPREAD_KEY in q.shape:
            limit = 1  # SPREAD: a lease (each placed anew) per running task, no pipelining
        for lease in q.leases:
            n = len(lease.in_flight)
            if lease.revoked or lease.paused or n >= limit or lease.stalled(now, stall_s):
                continue
            if best is None or n < len(best.in_flight):
                best = lease
        return best

    def _pump(self, q: ShapeQueue) -> None:
        pending = q.pending
        pipelined = False
        while pending:
            best = self._best_lease(q)
            if best is None:
                break
            pipelined = pipelined or bool(best.in_flight)
            self._push(pending.popleft(), best)
        if pending and not q.requesting and not self.closed:
            self._request_lease(q)
        if pipelined:
            self._arm_stall_check()
        if not pending:
            idle = [lease for lease in q.leases if not lease.in_flight]
            if idle and len(idle) < len(q.leases):
                self._steal_for(q)  # an idle worker takes back what waits behind long tasks
            for lease in idle:
                self._lease_idle(q, lease)

    def _push(self, spec: TaskSpec, lease: Lease) -> None:
        spec.rid = rid = self.next_rid()
        spec.lease = lease
        if not lease.in_flight:
            lease.progress = self.now
        lease.in_flight[rid] = spec
        self._out.append(E.PushTask(lease, spec))

    def _request_lease(
        self, q: ShapeQueue, node_id: bytes | None = None, daemon: Any = None
    ) -> None:
        rid = q.requesting = self.next_rid()
        q.requesting_node = node_id
        self.lease_requests[rid] = q
        args = _arg_locations(q.pending[0]) if q.pending and node_id is None else None
        self._out.append(E.RequestLease(rid, q.shape, node_id, daemon, args))

    def _arm_stall_check(self) -> None:
        if not self._stall_armed and not self.closed:
            self._stall_armed = True
            self._out.append(E.StartTimer(self.stall_s, E.StallCheck()))

    def _on_stall_check(self, _ev: E.StallCheck) -> None:
        """A pipeline stuck behind a long task: get another worker for what waits."""
        self._stall_armed = False
        again = False
        for q in self.queues.values():
            stuck = [
                lease
                for lease in q.leases
                if len(lease.in_flight) > 1 and lease.stalled(self.now, self.stall_s)
            ]
            if stuck and not q.requesting and not self.closed:
                self._request_lease(q)
            again = again or any(len(lease.in_flight) > 1 for lease in q.leases)
        if again:
            self._arm_stall_check()

    def _steal_for(self, q: ShapeQueue) -> None:
        """A new worker is idle: take back tasks queued behind long ones elsewhere."""
        for lease in q.leases:
            if len(lease.in_flight) > 1 and lease.stalled(self.now, self.stall_s):
                self._out.append(E.StealTasks(lease.peer))

    def _take_request(self, rid: int) -> ShapeQueue | None:
        q = self.lease_requests.pop(rid, None)
        if q is not None and q.requesting == rid:
            q.requesting = 0
            q.requesting_node = None
        return q

    def _on_granted(self, ev: E.LeaseGranted) -> None:
        q = self._take_request(ev.rid)
        if q is not None:
            self._unreachable.pop(q.key, None)
        if q is None or self.closed:
            self._out.append(E.ReturnLease(ev.worker_id, False, ev.node_id))
            return
        q.leases.append(Lease(ev.worker_id, ev.peer, ev.node_id, self.now, q.key))
        self._pump(q)  # (with nothing pending, the new worker steals what waits elsewhere)

    def _on_unreachable(self, ev: E.LeaseUnreachable) -> None:
        # the worker died before we reached it: the daemon knows; ask again
        q = self._take_request(ev.rid)
        self._out.append(E.ReturnLease(ev.worker_id, True, ev.node_id))
        if q is not None:
            self._pump(q)

    def _on_redirected(self, ev: E.LeaseRedirected) -> None:
        q = self._take_request(ev.rid)
        if q is not None and not self.closed:
            self._request_lease(q, ev.node_id, ev.daemon)

    def _on_lease_failed(self, ev: E.LeaseFailed) -> None:
        asked = self.lease_requests.get(ev.rid)
        elsewhere = asked is not None and asked.requesting_node is not None
        q = self._take_request(ev.rid)
        if q is not None and elsewhere and isinstance(ev.error, ConnectionError):
            tries = self._unreachable[q.key] = self._unreachable.get(q.key, 0) + 1
            if tries <= UNREACHABLE_TRIES and not self.closed:
                q.requesting = -1  # no other request until the retry
                self._out.append(E.StartTimer(UNREACHABLE_RETRY_S, E.RetryLease(q.key)))
                return
        if q is not None:
            err = ev.error
            if not isinstance(err, BaseException):
                err = ActorCoreError(str(err))
            self._fail_queue(q, err)

    def _on_retry_lease(self, ev: E.RetryLease) -> None:
        q = self.queues.get(ev.key)
        if q is not None and q.requesting == -1:
            q.requesting = 0
            self._pump(q)

    def _lease_idle(self, q: ShapeQueue, lease: Lease) -> None:
        if lease.revoked or self.closed:
            self._drop_lease(q, lease)
            return
        if any(k.startswith("bundle_group_") for k in q.shape):
            # a placement group's worker goes back at once (as Ray's do): removing the
            # group stops the workers still leased in it
            self._drop_lease(q, lease)
            return
        lease.idle_since = self.now
        if not lease.lingering:  # one timer per lease at a time, not one per task
            lease.lingering = True
            self._out.append(E.StartTimer(self.linger_s, E.LingerOver(lease)))

    def _on_linger_over(self, ev: E.LingerOver) -> None:
        lease = ev.lease
        lease.lingering = False
        q = self.queues.get(lease.key)
        if q is None or lease not in q.leases or lease.in_flight:
            return  # gone, or busy: it lingers again once idle
        idle = self.now - lease.idle_since
        if idle >= self.linger_s:
            self._drop_lease(q, lease)
        else:  # used since the timer started: wait for the rest of its linger
            lease.lingering = True
            self._out.append(E.StartTimer(self.linger_s - idle, E.LingerOver(lease)))

    def _drop_lease(self, q: ShapeQueue, lease: Lease) -> None:
        if lease in q.leases:
            q.leases.remove(lease)
            self._out.append(E.ReturnLease(lease.worker_id, False, lease.node_id))

    def _on_revoked(self, ev: E.LeaseRevoked) -> None:
        for q in self.queues.values():
            for lease in q.leases:
                if lease.worker_id == ev.worker_id:
                    lease.revoked = True
                    if not lease.in_flight:
                        self._drop_lease(q, lease)
                    return

    def _on_returned(self, ev: E.TasksReturned) -> None:
        for q in self.queues.values():
            for lease in q.leases:
                if lease.peer is not ev.peer:
                    continue
                if ev.blocked:
                    lease.paused = True
                specs = [lease.in_flight.pop(r) for r in ev.rids if r in lease.in_flight]
                for spec in reversed(specs):
                    spec.lease = None
                    q.pending.appendleft(spec)
                self._pump(q)

    def _on_peer_closed(self, ev: E.PeerClosed) -> None:
        for q in self.queues.values():
            for lease in list(q.leases):
                if lease.peer is ev.peer:
                    q.leases.remove(lease)
                    self._pump(q)

    def _on_node_died(self, ev: E.NodeDied) -> None:
        err = WorkerCrashedError(f"node {ev.node_id.hex()} died")
        for q in list(self.queues.values()):
            for lease in [lease for lease in q.leases if lease.node_id == ev.node_id]:
                self._lease_lost(q, lease, err)
            if q.requesting and q.requesting_node == ev.node_id:
                self.lease_requests.pop(q.requesting, None)
                q.requesting = 0
                q.requesting_node = None
            self._pump(q)

    # --- results ------------------------------------------------------------------------

    def _took(self, lease: Lease, rid: int) -> TaskSpec | None:
        spec = lease.in_flight.pop(rid, None)
        if spec is not None:
            spec.lease = None
        return spec  # None: handed back, or already failed

    def _after_reply(self, spec: TaskSpec, lease: Lease) -> None:
        q = self.queues.get(spec.key)
        if q is not None:
            if lease.revoked and not lease.in_flight:
                self._drop_lease(q, lease)
            self._pump(q)

    def _on_replied(self, ev: E.TaskReplied) -> None:
        lease = ev.lease
        spec = self._took(lease, ev.rid)
        if spec is None:
            return
        lease.paused = False
        lease.progress = self.now
        self._finish(spec, ev.results, lease.node_id)
        self._after_reply(spec, lease)

    def _on_rejected(self, ev: E.TaskRejected) -> None:
        spec = self._took(ev.lease, ev.rid)
        if spec is not None:
            self._finish_failed(spec, ev.error)
            self._after_reply(spec, ev.lease)

    def _on_args_lost(self, ev: E.ArgsLost) -> None:
        spec = self._took(ev.lease, ev.rid)
        if spec is None:
            return
        if spec.cancelled:
            self._finish_failed(spec, TaskCancelledError(f"task {spec.name} was cancelled"))
        elif spec.arg_losses < ARGS_LOST_TRIES and not self.closed:
            spec.arg_losses += 1
            self._out.append(E.StartTimer(ARGS_LOST_RETRY_S, E.ResolveAgain(spec)))
        else:
            self._finish_failed(spec, ev.error)
        self._after_reply(spec, ev.lease)

    def _on_resolve_again(self, ev: E.ResolveAgain) -> None:
        spec = ev.spec
        if spec.cancelled:
            self._finish_failed(spec, TaskCancelledError(f"task {spec.name} was cancelled"))
        elif self.closed:
            self._finish_failed(spec, ActorCoreError("the runtime shut down"))
        else:
            spec.resolved = []
            self._out.append(E.ResolveDeps(spec))

    def _on_push_failed(self, ev: E.PushFailed) -> None:
        spec = self._took(ev.lease, ev.rid)
        if spec is not None:
            self._lease_lost(self.queues.get(spec.key), ev.lease, ev.error)
            self._retry_or_fail(spec, ev.error)
            self._after_reply(spec, ev.lease)

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

    def _finish(self, spec: TaskSpec, results: list[Any], node_id: bytes | None) -> None:
        if (
            spec.opts & OPT_RETRY_EXCEPTIONS
            and spec.retries_left != 0
            and not spec.cancelled
            and any(r[0] == ERROR for r in results)
        ):
            spec.retries_left -= 1
            self._out.append(E.DiscardResults(results))
            self._enqueue(spec, front=True)
            return
        for oid in spec.return_ids:
            self.by_return.pop(oid, None)
        self._out.append(E.TaskDone(spec, results, node_id))

    def _finish_failed(self, spec: TaskSpec, err: BaseException) -> None:
        for oid in spec.return_ids:
            self.by_return.pop(oid, None)
        self._out.append(E.TaskFailed(spec, err))

    def _fail_queue(self, q: ShapeQueue, err: BaseException) -> None:
        while q.pending:
            self._finish_failed(q.pending.popleft(), err)

    # --- cancel and teardown ----------------------------------------------------------------

    def _on_cancel(self, ev: E.CancelTask) -> None:
        spec = self.by_return.get(ev.oid)
        if spec is None:
            self._out.append(E.NotATask(ev.oid, ev.force, ev.recursive))
        elif not spec.cancelled:
            self._cancel(spec, ev.force, ev.recursive)

    def _cancel(self, spec: TaskSpec, force: bool, recursive: bool) -> None:
        spec.cancelled = True
        lease = spec.lease
        if lease is not None:
            self._out.append(E.SendCancel(lease.peer, spec.task_id, force, recursive))
            if force:
                self._out.append(E.StartTimer(FORCE_KILL_GRACE_S, E.ForceKill(spec, lease)))
            return
        q = self.queues.get(spec.key)
        if q is not None and spec in q.pending:
            q.pending.remove(spec)
        self._finish_failed(spec, TaskCancelledError(f"task {spec.name} was cancelled"))

    def _on_force_kill(self, ev: E.ForceKill) -> None:
        spec, lease = ev.spec, ev.lease
        if spec.lease is not lease or lease.in_flight.get(spec.rid) is not spec:
            return  # it answered
        if next(iter(lease.in_flight.values())) is spec:  # running (the worker's oldest)
            self._out.append(E.ReturnLease(lease.worker_id, True, lease.node_id))

    def _on_cancel_children(self, ev: E.CancelChildren) -> None:
        children = {id(s): s for s in self.by_return.values() if s.parent == ev.parent}
        for spec in children.values():
            if not spec.cancelled:
                self._cancel(spec, ev.force, True)

    def _on_daemon_lost(self, ev: E.DaemonLost) -> None:
        for q in self.queues.values():
            self._fail_queue(q, ev.error)

    def _on_close(self, _ev: E.Close) -> None:
        self.closed = True
        for q in self.queues.values():
            for lease in list(q.leases):
                self._drop_lease(q, lease)

    # --- checks ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check the invariants (tests switch this on)."""
        for key, q in self.queues.items():
            assert q.key == key
            for spec in q.pending:
                assert spec.lease is None, spec
            for lease in q.leases:
                for rid, spec in lease.in_flight.items():
                    assert spec.lease is lease and spec.rid == rid, (spec, lease)
            if q.requesting > 0:  # (-1: waiting to ask again)
                assert self.lease_requests.get(q.requesting) is q
        for rid, q in self.lease_requests.items():
            assert q.requesting == rid, rid


def _arg_locations(spec: TaskSpec) -> dict[bytes, int] | None:
    """{node: bytes} of ``spec``'s store arguments known to live there (locality)."""
    out: dict[bytes, int] = {}
    for r in spec.resolved or ():
        if len(r) > 4 and r[1] == STORE and r[4] and isinstance(r[2], int):
            for node in r[4]:
                out[bytes(node)] = out.get(bytes(node), 0) + r[2]
    return out or None
