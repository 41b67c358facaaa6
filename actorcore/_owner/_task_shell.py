"""The shell of the owner's task core: carries its instructions out on the runtime loop.

Any thread may submit or cancel a task: it prepares the arguments, creates the
return objects and hands the core an event through an :class:`Inbox` (one
loop wake-up per batch). The core's state is only touched on the loop.
Results, failures and released arguments go to the object core
(:mod:`._objects`) as events; no lock is involved.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _protocol as P
from .. import _task_events as TE
from .._args import FunctionDescriptor, prepare_args
from .._execution import current_task
from .._ref import ObjectRef
from .._rpc import error_from_reply, next_rid
from .._runtime_env import spec_of_shape
from ..errors import ActorCoreError, ObjectLostError
from ..scheduler._resources import HINT_MARK, PLACED_KEY
from . import _object_events as OE
from . import _task_events as E
from ._deps import ready_now, resolve_deps
from ._inbox import Inbox, carry_out
from ._task_state import Lease, TaskSpec
from ._tasks import OPT_RETRY_EXCEPTIONS, TaskCore

if TYPE_CHECKING:
    from .._runtime import CoreRuntime

__all__ = ["TaskSubmitter"]

logger = logging.getLogger(__name__)


class TaskSubmitter:
    """Owner side of tasks: a :class:`TaskCore` fed on the runtime's loop."""

    def __init__(self, rt: CoreRuntime) -> None:
        self.rt = rt
        cfg = rt.config
        self.core = TaskCore(
            max_in_flight=cfg.max_tasks_in_flight_per_worker,
            linger_s=cfg.lease_linger_s,
            next_rid=next_rid,
        )
        self.inbox = Inbox(rt, self._process)
        self._daemons: dict[bytes, tuple[Any, ...]] = {}  # other nodes' daemons we asked
        self._run: dict[type, Callable[[Any], None]] = {
            E.PushTask: self._push,
            E.TaskDone: self._task_done,
            E.TaskFailed: self._task_failed,
            E.ResolveDeps: self._resolve_deps,
            E.RequestLease: self._request_lease,
            E.ReturnLease: self._return_lease,
            E.StartTimer: self._start_timer,
            E.StealTasks: self._steal,
            E.SendCancel: self._send_cancel,
            E.DiscardResults: self._discard,
            E.NotATask: self._not_a_task,
        }

    def post(self, event: Any) -> None:
        """Hand the core an event; any thread."""
        self.inbox.post(event)

    def _process(self, events: list[Any]) -> None:
        self.rt.objects.catch_up()
        carry_out(self.core.handle(events, time.monotonic()), self._run)

    # --- the API's entry points (any thread) -----------------------------------------------

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
        stream: int = 0,
    ) -> list[Any]:
        rt = self.rt
        prepared = prepare_args(rt, args, kwargs, f"{name}()")
        opts = OPT_RETRY_EXCEPTIONS if retry_exceptions else 0
        ctx = current_task.get()
        parent = ctx.task_id if ctx is not None else None
        spec = TaskSpec(fn, name, prepared, shape, max_retries, opts, num_returns, parent)
        spec.stream = stream
        TE.pending_task(spec.task_id, name, bool(prepared.deps))  # observability hook
        address = rt.address
        # queued quietly: this shell's drain catches the object core up first
        rt.objects.inbox.put_quietly(OE.ObjectsCreated(spec.return_ids, prepared.held))
        if prepared.held:  # its ObjectRef arguments, kept for lineage (actorcore._owner._recovery)
            spec.lineage_deps = list(prepared.deps) if prepared.deps else None
        if prepared.deps and (resolved := ready_now(rt, prepared.deps)) is not None:
            spec.resolved = resolved
            prepared.deps = []  # nothing to wait for (``held`` keeps them alive)
        if stream:  # the stream first: its items may come as soon as the task is pushed
            rt.streams.open(spec.return_ids[0], stream - 1)
        self.post(E.SubmitTask(spec))
        return [ObjectRef(oid, address, _counted=True) for oid in spec.return_ids]

    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        """Cancel the task producing ``oid`` (or, failing that, the actor call)."""
        self.post(E.CancelTask(oid, force, recursive))

    def cancel_children(self, parent: bytes, force: bool) -> None:
        """The task ``parent`` running here was cancelled: cancel the tasks it submitted."""
        self.post(E.CancelChildren(parent, force))

    def revoke(self, worker_id: bytes) -> None:
        self.post(E.LeaseRevoked(worker_id))

    def tasks_returned(self, peer: Any, rids: list[int], blocked: bool) -> None:
        for r in rids:  # the worker will never answer these
            peer.pending.pop(r, None)
        self.post(E.TasksReturned(peer, rids, blocked))

    def peer_closed(self, peer: Any) -> None:
        self.post(E.PeerClosed(peer))

    def node_died(self, node_id: bytes) -> None:
        self._daemons.pop(node_id, None)
        self.post(E.NodeDied(node_id))

    def fail_all(self, err: BaseException) -> None:
        self.post(E.DaemonLost(err))

    def close(self) -> None:
        self.post(E.Close())

    # --- instructions: leases ---------------------------------------------------------------

    def _request_lease(self, ins: E.RequestLease) -> None:
        env = spec_of_shape(ins.shape)
        msg = P.RequestLeaseMsg(ins.rid, ins.shape, env, ins.args)
        cb = functools.partial(self._on_grant, ins.rid)
        if ins.daemon is None:
            self._request_on(self.rt.daemon, msg, cb)
        else:  # a spill: that node's daemon (its leases go back there too)
            # placed there: that node queues it, never sends it on again
            msg = P.RequestLeaseMsg(ins.rid, {**ins.shape, PLACED_KEY: HINT_MARK}, env)
            if ins.node_id is not None:
                self._daemons[ins.node_id] = tuple(ins.daemon)
            self.rt.with_peer(tuple(ins.daemon), lambda p: self._request_on(p, msg, cb))

    def _request_on(self, daemon: Any, msg: Any, cb: Callable[[Any], None]) -> None:
        if isinstance(daemon, BaseException):
            cb(daemon)
            return
        try:
            daemon.request(msg, cb)
        except ConnectionError as e:
            cb(e)

    def _on_grant(self, rid: int, reply: Any) -> None:
        if isinstance(reply, BaseException) or reply.TAG == P.Tag.ERROR_REPLY:
            err = reply if isinstance(reply, BaseException) else _refusal(reply)
            self.post(E.LeaseFailed(rid, err))
            return
        value = reply.value
        if value and value[0] == "redirect":  # [redirect, node id, daemon address]
            self.post(E.LeaseRedirected(rid, bytes(value[1]), tuple(value[2])))
            return
        worker_id, address = value[0], value[1]
        node_id = bytes(value[2]) if len(value) > 2 else self.rt.node.node_id
        self.rt.with_peer(tuple(address), functools.partial(self._leased, rid, worker_id, node_id))

    def _leased(self, rid: int, worker_id: bytes, node_id: bytes, peer: Any) -> None:
        if isinstance(peer, BaseException):
            self.post(E.LeaseUnreachable(rid, worker_id, node_id))
        else:
            self.post(E.LeaseGranted(rid, worker_id, peer, node_id))

    def _return_lease(self, ins: E.ReturnLease) -> None:
        msg = P.ReturnLeaseMsg(ins.worker_id, ins.kill)
        daemon = self._daemons.get(ins.node_id) if ins.node_id is not None else None
        if daemon is None:
            _send_quietly(self.rt.daemon, msg)
        else:
            self.rt.with_peer(daemon, lambda p: _send_quietly(p, msg))

    def _start_timer(self, ins: E.StartTimer) -> None:
        self.rt.loop.call_later(ins.delay, self.post, ins.event)

    def _steal(self, ins: E.StealTasks) -> None:
        _send_quietly(ins.peer, P.StealTasksMsg())

    def _send_cancel(self, ins: E.SendCancel) -> None:
        _send_quietly(ins.peer, P.CancelTaskMsg(ins.task_id, ins.force, ins.recursive))

    def _not_a_task(self, ins: E.NotATask) -> None:
        self.rt.actors.cancel(ins.oid, ins.force)  # an actor call, maybe

    # --- instructions: tasks ------------------------------------------------------------------

    def _resolve_deps(self, ins: E.ResolveDeps) -> None:
        spec = ins.spec
        if not spec.args.deps and spec.lineage_deps:  # resolved at submission: again now
            spec.args.deps = list(spec.lineage_deps)

        def done(resolved: list[Any] | BaseException) -> None:
            if isinstance(resolved, BaseException):
                self.post(E.DepsFailed(spec, resolved))
            else:
                self.post(E.DepsReady(spec, resolved))

        resolve_deps(self.rt, spec.args.deps, done)

    def _push(self, ins: E.PushTask) -> None:
        spec, lease = ins.spec, ins.lease
        peer = lease.peer
        conn = peer.conn
        sent = conn.state.get("fns")
        if sent is None:
            sent = conn.state["fns"] = set()
        fn = spec.fn
        blob = None
        if fn.fn_id not in sent:
            sent.add(fn.fn_id)
            blob = fn.blob
        rid = spec.rid
        msg = P.PushTaskMsg(
            rid,
            spec.task_id,
            fn.fn_id,
            blob,
            spec.name,
            spec.args.payload,
            spec.resolved,
            spec.return_ids,
            list(self.rt.address),
            spec.opts,
            spec.stream,
        )
        try:
            peer.request(msg, functools.partial(self._on_reply, lease, rid))
        except ConnectionError as e:
            sent.discard(fn.fn_id)
            self.post(E.PushFailed(lease, rid, e))

    def _on_reply(self, lease: Lease, rid: int, reply: Any) -> None:
        if isinstance(reply, BaseException):
            self.post(E.PushFailed(lease, rid, reply))
        elif reply.TAG == P.Tag.ERROR_REPLY:
            err = error_from_reply(reply)
            if isinstance(err, ObjectLostError):  # an argument could not be had there
                self.post(E.ArgsLost(lease, rid, err))
            else:
                self.post(E.TaskRejected(lease, rid, err))
        else:
            self.post(E.TaskReplied(lease, rid, reply.results))

    def _task_done(self, ins: E.TaskDone) -> None:
        spec = ins.spec
        if ins.node_id is not None and ins.node_id != self.rt.node.node_id:
            TE.ran_elsewhere(spec.task_id, ins.node_id)  # observability hook
        node_id = ins.node_id
        events: list[Any] = [
            OE.ResultArrived(oid, kind, data, nested, node_id)
            for oid, (kind, data, nested) in zip(spec.return_ids, ins.results, strict=True)
        ]
        if not self.rt.recovery.task_done(spec, ins.results):  # else lineage keeps its args
            self._release_args(spec, events)
        self.rt.objects.post_all(events)

    def _task_failed(self, ins: E.TaskFailed) -> None:
        TE.owner_failed(ins.spec.task_id, ins.spec.name, ins.error)  # observability hook
        error = self.rt.recovery.task_failed(ins.spec, ins.error)
        events: list[Any] = [OE.ObjectsFailed(ins.spec.return_ids, error)]
        self._release_args(ins.spec, events)
        self.rt.objects.post_all(events)

    def release_args(self, spec: TaskSpec) -> None:
        """Let go of a finished task's arguments (its lineage is not kept, or was freed)."""
        events: list[Any] = []
        self._release_args(spec, events)
        if events:
            self.rt.objects.post_all(events)

    def _release_args(self, spec: TaskSpec, events: list[Any]) -> None:
        spec.lineage_deps = None
        held = spec.args.held
        if held:
            spec.args.held = []
            events.append(OE.HeldReleased(held))
        spec.args.store_ref = None

    def _discard(self, ins: E.DiscardResults) -> None:
        nested = [n for _kind, _data, n in ins.results if n]
        if nested:
            self.rt.objects.post(OE.ResultsDiscarded(nested))


def _refusal(reply: Any) -> BaseException:
    """A daemon's refusal of a lease request, as the error its tasks fail with."""
    err = error_from_reply(reply)
    if isinstance(err, ActorCoreError):
        return err
    wrapped = ActorCoreError(str(err))
    wrapped.__cause__ = err
    return wrapped


def _send_quietly(peer: Any, msg: Any) -> None:
    """Send a one-way message; a peer that is gone (or could not be reached) needs none."""
    if isinstance(peer, BaseException):
        return
    try:
        peer.send(msg)
    except ConnectionError:
        pass
