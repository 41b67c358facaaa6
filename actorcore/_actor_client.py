"""Calling actors: the caller's side.

Each process keeps one :class:`ActorClient` per actor it calls. Calls leave in
the order they were made, straight to the worker hosting the actor (its
address comes from the node daemon once the actor is placed); one connection
per worker keeps them in order on the wire. A call whose top-level ObjectRef
arguments are not ready holds the calls behind it.

When the hosting worker dies, calls in flight fail with ActorDiedError, or go
again after the restart while ``max_task_retries`` allows; the client asks the
daemon for the next incarnation and carries on, or learns the actor is dead.
"""

from __future__ import annotations

import collections
import enum
import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from . import _task_events as TE
from ._args import PreparedArgs, prepare_args, resolve_dep
from ._ids import new_id
from ._ref import ObjectRef
from ._refcount import ACTOR, ERROR, FAILED, ObjectEntry, wake
from ._rpc import error_from_reply, next_rid
from .errors import ActorDiedError, TaskCancelledError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = ["ActorClient", "ActorClients", "ActorState"]

logger = logging.getLogger(__name__)


class ActorState(enum.Enum):
    RESOLVING = "resolving"
    ALIVE = "alive"
    DEAD = "dead"


class CallSpec:
    __slots__ = (
        "args",
        "method",
        "peer",
        "resolved",
        "retries_left",
        "return_ids",
        "rid",
        "task_id",
        "unresolved",
    )

    def __init__(self, method: str, args: PreparedArgs, retries: int) -> None:
        self.method = method
        self.args = args
        self.task_id = new_id()
        self.return_ids: list[bytes] = []
        self.resolved: list[Any] = []
        self.unresolved = 0
        self.retries_left = retries
        self.rid = 0
        self.peer: Any = None  # where it was sent last


class ActorClient:
    __slots__ = (
        "actor_id",
        "class_name",
        "death",
        "epoch",
        "held",
        "in_flight",
        "kill_when_idle",
        "max_task_retries",
        "peer",
        "queue",
        "resolving",
        "state",
    )

    def __init__(self, actor_id: bytes, class_name: str, max_task_retries: int) -> None:
        self.actor_id = actor_id
        self.class_name = class_name
        self.max_task_retries = max_task_retries
        self.state = ActorState.RESOLVING
        self.peer: Any = None
        self.epoch = -1
        self.queue: collections.deque[CallSpec] = collections.deque()
        self.in_flight: dict[int, CallSpec] = {}
        self.death: BaseException | None = None
        self.resolving = False
        self.kill_when_idle = False
        self.held: list[bytes] = []  # constructor arguments, kept for restarts

    def describe(self) -> str:
        return f"actor {self.class_name} ({self.actor_id.hex()})"


class ActorClients:
    """All actors this process calls; every method runs under ``rt.lock``."""

    def __init__(self, rt: CoreRuntime) -> None:
        self.rt = rt
        self.clients: dict[bytes, ActorClient] = {}
        self.by_return: dict[bytes, tuple[ActorClient, CallSpec]] = {}

    def client(self, actor_id: bytes, class_name: str, max_task_retries: int) -> ActorClient:
        c = self.clients.get(actor_id)
        if c is None:
            c = self.clients[actor_id] = ActorClient(actor_id, class_name, max_task_retries)
        return c

    # --- creation ----------------------------------------------------------------------

    def create(
        self,
        actor_id: bytes,
        class_name: str,
        spec: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        max_task_retries: int,
        wait_registered: bool,
    ) -> bytes:
        """Create an actor; returns its id (an existing one for get_if_exists)."""
        rt = self.rt
        prepared = prepare_args(rt, args, kwargs, f"{class_name}.__init__()")
        spec["args"] = prepared.payload
        registered: list[Any] = []
        done = threading.Event()
        with rt.lock:
            e = rt.table.create_owned(actor_id, rt.address)
            rt.table.complete(e, ACTOR, None)
            c = self.client(actor_id, class_name, max_task_retries)
            c.resolving = True
            c.held = prepared.held
            rt.table.add_submitted(prepared.held)
            if spec.get("detached") or spec.get("name"):
                rt.persistent_actors.add(actor_id)

        def registered_cb(reply: Any) -> None:
            registered.append(reply)
            self._on_registered(c, reply)
            done.set()

        def send(resolved: list[Any] | BaseException) -> None:
            if isinstance(resolved, BaseException):  # an argument failed: so does the actor
                registered_cb(resolved)
                return
            spec["resolved"] = resolved
            try:
                rt.daemon.request(P.CreateActorMsg(next_rid(), actor_id, spec), registered_cb)
            except ConnectionError as err:
                registered_cb(err)

        self._when_resolved(prepared, send)
        if wait_registered:
            done.wait()
            reply = registered[0]
            if isinstance(reply, BaseException):
                raise reply
            if reply.TAG == P.Tag.ERROR_REPLY:
                raise error_from_reply(reply)
            return bytes(reply.value[0])
        return actor_id

    def _when_resolved(self, prepared: PreparedArgs, then: Any) -> None:
        deps = prepared.deps
        if not deps:
            then([])
            return
        resolved: list[Any] = [None] * len(deps)
        left = [len(deps)]
        table = self.rt.table

        def ready(i: int, e: ObjectEntry) -> None:
            with self.rt.lock:
                if left[0] <= 0:
                    return  # already failed
                if e.state == FAILED:
                    left[0] = 0
                    then(e.data)
                    return
                resolved[i] = [i, *resolve_dep(e)]
                left[0] -= 1
                if left[0] == 0:
                    then(resolved)

        with self.rt.lock:
            for i, ref in enumerate(deps):
                e = table.entries[ref.id]
                cb = functools.partial(ready, i)
                if not table.add_waiter(e, cb):
                    cb(e)
                elif not e.owned:
                    self.rt.fetch(e)

    def _on_registered(self, c: ActorClient, reply: Any) -> None:
        with self.rt.lock:
            c.resolving = False
            if isinstance(reply, BaseException) or reply.TAG == P.Tag.ERROR_REPLY:
                err = reply if isinstance(reply, BaseException) else error_from_reply(reply)
                self._dead(c, ActorDiedError(f"{c.describe()} could not be created: {err}"))
                return
            self._resolve(c)

    # --- resolving the host --------------------------------------------------------------

    def _resolve(self, c: ActorClient) -> None:
        if c.resolving or c.state is ActorState.DEAD:
            return
        c.resolving = True
        rid = next_rid()
        msg = P.WaitActorMsg(rid, c.actor_id, c.epoch + 1)
        try:
            self.rt.daemon.request(msg, functools.partial(self._on_located, c))
        except ConnectionError as e:
            self._on_located(c, e)

    def _on_located(self, c: ActorClient, reply: Any) -> None:
        with self.rt.lock:
            c.resolving = False
            if isinstance(reply, BaseException) or reply.TAG == P.Tag.ERROR_REPLY:
                err = reply if isinstance(reply, BaseException) else error_from_reply(reply)
                self._dead(c, ActorDiedError(f"{c.describe()} is unreachable: {err}"))
                return
            state, address, epoch, cause = reply.value
            if state != "ALIVE":
                self._dead(c, ActorDiedError(f"{c.describe()} died: {cause}"))
                return
            self.rt.with_peer(tuple(address), functools.partial(self._connected, c, epoch))

    def _connected(self, c: ActorClient, epoch: int, peer: Any) -> None:
        with self.rt.lock:
            if isinstance(peer, BaseException):
                # the host died between placement and now: wait for the next incarnation
                c.epoch = epoch
                self._resolve(c)
                return
            c.peer = peer
            c.epoch = epoch
            c.state = ActorState.ALIVE
            self._drain(c)

    def _dead(self, c: ActorClient, err: BaseException) -> None:
        c.state = ActorState.DEAD
        c.death = err
        c.peer = None
        while c.queue:
            self._fail(c, c.queue.popleft(), err)
        for spec in list(c.in_flight.values()):
            self._fail(c, spec, err)
        c.in_flight.clear()
        if c.held:
            instrs = self.rt.table.remove_submitted(c.held)
            c.held = []
            self.rt.execute(instrs)

    # --- calls ---------------------------------------------------------------------------

    def call(
        self,
        c: ActorClient,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        num_returns: int,
    ) -> list[Any]:
        rt = self.rt
        prepared = prepare_args(rt, args, kwargs, f"{c.class_name}.{method}()")
        spec = CallSpec(method, prepared, c.max_task_retries)
        TE.pending_actor_call(  # observability hook
            spec.task_id, f"{c.class_name}.{method}", c.actor_id, bool(prepared.deps)
        )
        address = rt.address
        spec.return_ids = ids = [new_id() for _ in range(num_returns)]
        with rt.lock:
            table = rt.table
            for oid in ids:
                e = table.create_owned(oid, address)
                e.local = 1
                self.by_return[oid] = (c, spec)
            if prepared.held:
                table.add_submitted(prepared.held)
            if c.state is ActorState.DEAD:
                self._fail(c, spec, c.death or ActorDiedError(f"{c.describe()} is dead"))
            else:
                if prepared.deps:
                    self._resolve_deps(c, spec)
                if spec.unresolved < 0:
                    pass  # an argument had failed: the call failed with it, nothing to send
                elif c.state is ActorState.ALIVE and not c.queue and spec.unresolved == 0:
                    self._send(c, spec)
                else:
                    c.queue.append(spec)
                    if c.state is ActorState.RESOLVING:
                        self._resolve(c)
        return [ObjectRef(oid, address, _counted=True) for oid in ids]

    def _resolve_deps(self, c: ActorClient, spec: CallSpec) -> None:
        deps = spec.args.deps
        spec.resolved = [None] * len(deps)
        spec.unresolved = len(deps)
        table = self.rt.table
        for i, ref in enumerate(deps):
            e = table.entries[ref.id]
            cb = functools.partial(self._dep_ready, c, spec, i)
            if not table.add_waiter(e, cb):
                cb(e)
            elif not e.owned:
                self.rt.fetch(e)

    def _dep_ready(self, c: ActorClient, spec: CallSpec, i: int, e: ObjectEntry) -> None:
        with self.rt.lock:
            if e.state == FAILED:
                spec.unresolved = -1
                if spec in c.queue:
                    c.queue.remove(spec)
                self._fail(c, spec, e.data)
                self._drain(c)
                return
            spec.resolved[i] = [i, *resolve_dep(e)]
            spec.unresolved -= 1
            if spec.unresolved == 0:
                self._drain(c)

    def _drain(self, c: ActorClient) -> None:
        queue = c.queue
        while queue and c.state is ActorState.ALIVE:
            head = queue[0]
            if head.unresolved > 0:
                break
            queue.popleft()
            if head.unresolved < 0:
                continue
            self._send(c, head)
        if c.kill_when_idle and not queue and not c.in_flight:
            self._kill_now(c)

    def _send(self, c: ActorClient, spec: CallSpec) -> None:
        rt = self.rt
        spec.rid = rid = next_rid()
        msg = P.ActorCallMsg(
            rid,
            c.actor_id,
            spec.method,
            spec.task_id,
            spec.args.payload,
            spec.resolved,
            spec.return_ids,
            list(rt.address),
        )
        peer = c.peer
        try:
            peer.request(msg, functools.partial(self._on_reply, c, spec, peer, rid))
        except ConnectionError:
            # never sent: it waits for the actor's next address, its retries untouched
            c.queue.appendleft(spec)
            self._host_gone(c, peer)
            return
        spec.peer = peer
        c.in_flight[rid] = spec

    def peer_closed(self, peer: Any) -> None:
        """A connection ended: actors hosted behind it must be located again."""
        with self.rt.lock:
            for c in list(self.clients.values()):
                if c.peer is peer:
                    self._host_gone(c, peer)

    def _host_gone(self, c: ActorClient, peer: Any) -> None:
        if c.peer is peer and c.state is ActorState.ALIVE:
            c.state = ActorState.RESOLVING
            c.peer = None
        if c.state is ActorState.RESOLVING and (c.queue or c.in_flight):
            self._resolve(c)

    def _on_reply(self, c: ActorClient, spec: CallSpec, peer: Any, rid: int, reply: Any) -> None:
        with self.rt.lock:
            if c.in_flight.get(rid) is not spec:
                return  # a late reply for a call that was already failed or sent again
            del c.in_flight[rid]
            if isinstance(reply, BaseException):
                self._lost(c, peer, spec, reply)
            elif reply.TAG == P.Tag.ERROR_REPLY:
                err = error_from_reply(reply)
                if isinstance(err, ActorDiedError):
                    self._lost(c, peer, spec, err)
                else:
                    self._fail(c, spec, err)
            else:
                self._complete(c, spec, reply.results)
            if c.state is ActorState.ALIVE:
                self._drain(c)
            if c.kill_when_idle and not c.queue and not c.in_flight:
                self._kill_now(c)

    def _lost(self, c: ActorClient, peer: Any, spec: CallSpec, err: BaseException) -> None:
        """The host went away (or no longer has the actor): retry or fail what was sent."""
        lost = [s for s in c.in_flight.values() if s.peer is peer]
        for s in lost:
            del c.in_flight[s.rid]
        failed = sorted([spec, *lost], key=lambda s: s.rid)  # retried in the order they were sent
        retry = []
        for s in failed:
            if s.retries_left != 0:
                s.retries_left -= 1
                retry.append(s)
            else:
                self._fail(
                    c, s, ActorDiedError(f"{c.describe()} died while running {s.method}(): {err}")
                )
        c.queue.extendleft(reversed(retry))
        if c.peer is peer and c.state is ActorState.ALIVE:
            c.state = ActorState.RESOLVING
            c.peer = None
        if c.state is ActorState.RESOLVING:
            self._resolve(c)
        elif c.state is ActorState.ALIVE:
            self._drain(c)

    def _complete(self, c: ActorClient, spec: CallSpec, results: list[Any]) -> None:
        for oid, (kind, data, nested) in zip(spec.return_ids, results, strict=True):
            self.by_return.pop(oid, None)
            self.rt.adopt_result(oid, kind, data, nested)
        self._release(spec)

    def _fail(self, c: ActorClient, spec: CallSpec, err: BaseException) -> None:
        TE.owner_failed(spec.task_id, f"{c.class_name}.{spec.method}", err)  # observability hook
        table = self.rt.table
        for oid in spec.return_ids:
            self.by_return.pop(oid, None)
            e = table.entries.get(oid)
            if e is not None:
                wake(table.complete(e, ERROR, err), e)
        self._release(spec)

    def _release(self, spec: CallSpec) -> None:
        held = spec.args.held
        if held:
            spec.args.held = []
            self.rt.execute(self.rt.table.remove_submitted(held))

    # --- cancel, kill, lifetime ----------------------------------------------------------------

    def cancel(self, oid: bytes, force: bool) -> bool:
        with self.rt.lock:
            found = self.by_return.get(oid)
            if found is None:
                return False
            c, spec = found
            if spec in c.queue:
                c.queue.remove(spec)
                self._fail(c, spec, TaskCancelledError(f"call {spec.method}() was cancelled"))
                self._drain(c)
                return True
            peer = c.peer
        if peer is not None:
            try:
                peer.send(P.CancelTaskMsg(spec.task_id, False))
            except ConnectionError:
                pass
        return True

    def kill(self, actor_id: bytes, no_restart: bool) -> None:
        rt = self.rt
        done = threading.Event()
        try:
            rt.daemon.request(
                P.KillActorMsg(next_rid(), actor_id, no_restart), lambda _r: done.set()
            )
        except ConnectionError:
            return
        if not rt.on_loop_thread():
            done.wait(10.0)

    def out_of_scope(self, actor_id: bytes) -> None:
        """No handle to an actor this process owns is left: end it once its calls are done."""
        rt = self.rt
        if actor_id in rt.persistent_actors or rt.closing:
            return
        with rt.lock:
            c = self.clients.get(actor_id)
            if c is not None and (c.queue or c.in_flight or (c.resolving and c.epoch < 0)):
                # calls still to finish, or not created yet: end it once it is idle
                c.kill_when_idle = True
                return
            if c is not None:
                self._kill_now(c)
            else:
                self._send_kill(actor_id)

    def _kill_now(self, c: ActorClient) -> None:
        c.kill_when_idle = False
        self.clients.pop(c.actor_id, None)
        self._send_kill(c.actor_id)
        if c.held:
            instrs = self.rt.table.remove_submitted(c.held)
            c.held = []
            self.rt.execute(instrs)

    def _send_kill(self, actor_id: bytes) -> None:
        try:
            self.rt.daemon.send(P.KillActorMsg(0, actor_id, True))
        except ConnectionError:
            pass
