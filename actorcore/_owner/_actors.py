"""The owner's actor core: calls in caller order, locating hosts, restarts. No I/O.

One :class:`ActorClient` per actor this process calls. Calls leave in the order
they were made, straight to the worker hosting the actor (its address comes
from the node daemon once the actor is placed); one connection per worker
keeps them in order on the wire. A call whose top-level ObjectRef arguments
are not ready holds the calls behind it.

When the host dies, calls in flight fail with ActorDiedError, or go again
(in the order they were first sent) after the restart while
``max_task_retries`` allows; the client asks the daemon for the next
incarnation and carries on, or learns that the actor is dead. A named
creation answered with an existing actor's id moves the client to that id.
``NodeDied`` treats the actors hosted on that node like a lost connection.

Fencing (issue 10 item 2): every call remembers the incarnation (``epoch``)
it was sent to, and its reply counts only while that is the client's
incarnation. Once the owner learns that a newer one runs (located or
connected) or that the host's node died, the calls in flight to the old one
are lost there (retried per ``max_task_retries`` or failed), so whatever the
old instance answers later (a frozen node resumed) is dropped. The worker
refuses calls stamped with another incarnation than its own, and stops
answering once its daemon stops vouching for it (:mod:`actorcore._fencing`).

:class:`ActorCore` is driven by ``handle(events) -> instructions``; the shell
(:mod:`._actor_shell`) feeds it on the runtime's loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ActorDiedError, TaskCancelledError
from . import _actor_events as E
from ._actor_state import ActorClient, ActorState, CallSpec, Creation

__all__ = ["ActorCore"]

logger = logging.getLogger(__name__)

ALIVE, DEAD, RESOLVING = ActorState.ALIVE, ActorState.DEAD, ActorState.RESOLVING


class ActorCore:
    """The caller's side of actors as a state machine: ``handle(events)``."""

    def __init__(self, *, next_rid: Callable[[], int]) -> None:
        self.next_rid = next_rid
        self.clients: dict[bytes, ActorClient] = {}
        self.by_return: dict[bytes, CallSpec] = {}  # (its ``client`` is set)
        self._out: list[Any] = []
        self._touched: set[ActorClient] = set()  # clients whose ``direct`` may be stale
        self.dead_nodes: set[bytes] = set()  # declared dead: nothing there answers any more
        self._handlers: dict[type, Callable[[Any], None]] = {
            E.SubmitActorCall: self._on_submit,
            CallSpec: self._on_submit_bare,
            E.CallSentDirect: self._on_sent_direct,
            E.ArgsReady: self._on_args_ready,
            E.ArgsFailed: self._on_args_failed,
            E.CallReplied: self._on_replied,
            E.CallRejected: self._on_rejected,
            E.CallLost: self._on_lost,
            E.SendFailed: self._on_send_failed,
            E.CreateActor: self._on_create,
            E.ActorRegistered: self._on_registered,
            E.ActorCreateFailed: self._on_create_failed,
            E.ActorLocated: self._on_located,
            E.ActorConnected: self._on_connected,
            E.ActorUnreachable: self._on_unreachable,
            E.ActorDied: self._on_died,
            E.PeerClosed: self._on_peer_closed,
            E.NodeDied: self._on_node_died,
            E.CancelCall: self._on_cancel,
            E.ActorOutOfScope: self._on_out_of_scope,
        }

    def handle(self, events: Iterable[Any]) -> list[Any]:
        """Apply ``events`` in order; returns the instructions to carry out."""
        out = self._out = []
        handlers = self._handlers
        for ev in events:
            handlers[type(ev)](ev)
        self._out = []
        touched = self._touched
        while touched:
            c = touched.pop()
            # published for callers on other threads: where a call may go straight away
            open_ = c.state is ALIVE and not c.queue and not c.kill_when_idle
            c.direct = c.peer if open_ else None
        return out

    def client(self, actor_id: bytes, class_name: str, max_task_retries: int) -> ActorClient:
        c = self.clients.get(actor_id)
        if c is None:
            c = self.clients[actor_id] = ActorClient(actor_id, class_name, max_task_retries)
        return c

    # --- creation ----------------------------------------------------------------------

    def _on_create(self, ev: E.CreateActor) -> None:
        c = self.client(ev.actor_id, ev.class_name, ev.max_task_retries)
        c.locating = True  # nothing to locate before the daemon has it
        c.held = ev.args.held
        creation = Creation(ev.actor_id, ev.spec, ev.notify)
        if ev.args.deps:
            self._out.append(E.ResolveArgs(creation, ev.args.deps))
        else:
            self._out.append(E.SendCreate(creation, []))

    def _on_registered(self, ev: E.ActorRegistered) -> None:
        c = self.clients.get(ev.actor_id)
        if c is None:
            return
        c.locating = False
        if ev.real_id != c.actor_id:  # get_if_exists found it: call that one
            c.actor_id = ev.real_id
            self.clients.setdefault(ev.real_id, c)
        self._locate(c)

    def _on_create_failed(self, ev: E.ActorCreateFailed) -> None:
        c = self.clients.get(ev.actor_id)
        if c is not None:
            c.locating = False
            self._dead(c, ActorDiedError(f"{c.describe()} could not be created: {ev.error}"))

    # --- locating the host --------------------------------------------------------------

    def _locate(self, c: ActorClient) -> None:
        if not c.locating and c.state is not DEAD:
            c.locating = True
            self._out.append(E.LocateActor(c, c.epoch + 1))

    def _on_located(self, ev: E.ActorLocated) -> None:
        c = ev.client
        if ev.state != "ALIVE":
            c.locating = False
            self._dead(c, ActorDiedError(f"{c.describe()} died: {ev.cause}"))
        elif ev.node_id in self.dead_nodes:
            self._stale_host(c, ev.epoch)
        elif c.state is not DEAD:  # still locating until connected
            self._fence(c, ev.epoch)
            self._out.append(E.ConnectActor(c, ev.address, ev.epoch, ev.node_id))

    def _stale_host(self, c: ActorClient, epoch: int) -> None:
        """Incarnation ``epoch`` is on a node declared dead (a record not moved yet):
        never call it there; wait for the next incarnation (or the actor's death)."""
        logger.debug(
            "%s: incarnation %d is on a dead node; waiting for the next", c.describe(), epoch
        )
        c.locating = False
        if c.state is DEAD:
            return
        c.epoch = max(c.epoch, epoch)
        self._fence(c, epoch + 1)
        self._locate(c)

    def _on_connected(self, ev: E.ActorConnected) -> None:
        c = ev.client
        c.locating = False
        if c.state is DEAD:
            return
        if ev.node_id in self.dead_nodes:  # it died while this process connected
            self._stale_host(c, ev.epoch)
            return
        c.peer = ev.peer
        c.epoch = ev.epoch
        c.node_id = ev.node_id
        c.state = ALIVE
        self._touched.add(c)
        self._fence(c, ev.epoch)
        self._drain(c)

    def _on_unreachable(self, ev: E.ActorUnreachable) -> None:
        # the host died between placement and now: wait for the next incarnation
        c = ev.client
        c.locating = False
        c.epoch = ev.epoch
        self._fence(c, ev.epoch)
        self._locate(c)

    def _fence(self, c: ActorClient, epoch: int) -> None:
        """Incarnation ``epoch`` replaced the older ones (the cluster declared them dead):
        the calls in flight to those are lost there; their late answers are dropped."""
        stale = [s for s in c.in_flight.values() if s.epoch < epoch]
        if stale:
            logger.debug(
                "%s: %d call(s) in flight to an older incarnation than %d are lost",
                c.describe(),
                len(stale),
                epoch,
            )
            self._lose(c, None, stale, ConnectionError(f"incarnation {epoch} replaced it"))

    def _on_died(self, ev: E.ActorDied) -> None:
        ev.client.locating = False
        self._dead(ev.client, ActorDiedError(f"{ev.client.describe()} is unreachable: {ev.error}"))

    def _dead(self, c: ActorClient, err: BaseException) -> None:
        self._touched.add(c)
        c.state = DEAD
        c.death = err
        c.peer = None
        while c.queue:
            self._fail(c.queue.popleft(), err)
        for spec in list(c.in_flight.values()):
            self._fail(spec, err)
        c.in_flight.clear()
        self._release_held(c)

    def _release_held(self, c: ActorClient) -> None:
        if c.held:
            self._out.append(E.ReleaseHeld(c.held))
            c.held = []

    # --- calls ---------------------------------------------------------------------------

    def _on_submit(self, ev: E.SubmitActorCall) -> None:
        self._submit(ev.spec, self.client(ev.actor_id, ev.class_name, ev.max_task_retries))

    def _on_submit_bare(self, spec: CallSpec) -> None:
        """A :class:`CallSpec` posted bare is its own submission (``spec.actor_id``; its
        ``retries_left`` untouched yet: the handle's max_task_retries). One object fewer
        per call than a :class:`SubmitActorCall`."""
        c = self.clients.get(spec.actor_id)
        if c is None:
            c = self.client(spec.actor_id, spec.class_name, spec.retries_left)
        self._submit(spec, c)

    def _submit(self, spec: CallSpec, c: ActorClient) -> None:
        self._touched.add(c)
        spec.client = c
        for oid in spec.return_ids:
            self.by_return[oid] = spec
        if c.state is DEAD:
            self._fail(spec, c.death or ActorDiedError(f"{c.describe()} is dead"))
            return
        if spec.args.deps:
            spec.waiting = True
            self._out.append(E.ResolveArgs(spec, spec.args.deps))
        if c.state is ALIVE and not c.queue and not spec.waiting:
            spec.rid = rid = self.next_rid()  # (_send, inline)
            spec.peer = peer = c.peer
            spec.epoch = c.epoch
            c.in_flight[rid] = spec
            self._out.append(E.SendActorCall(c, spec, peer))
            return
        c.queue.append(spec)
        if c.state is RESOLVING:
            self._locate(c)

    def _on_sent_direct(self, ev: E.CallSentDirect) -> None:
        """A caller's thread sent a call itself (the way was open): track it."""
        c, spec = ev.client, ev.spec
        spec.client = c
        for oid in spec.return_ids:
            self.by_return[oid] = spec
        if c.state is DEAD:  # it died meanwhile: whatever the host answers is ignored
            self._fail(spec, c.death or ActorDiedError(f"{c.describe()} is dead"))
            return
        c.in_flight[spec.rid] = spec
        if c.peer is not spec.peer or spec.epoch != c.epoch:  # the host changed meanwhile
            self._lose(c, spec.peer, [spec], ConnectionError("the host changed"))
            self._after(c)  # (alive at a new host: it goes there now)

    def _on_args_ready(self, ev: E.ArgsReady) -> None:
        item = ev.item
        if isinstance(item, Creation):
            self._out.append(E.SendCreate(item, ev.resolved))
            return
        found = self.by_return.get(item.return_ids[0])
        if found is not None:
            item.resolved = ev.resolved
            item.waiting = False
            self._drain(found.client)

    def _on_args_failed(self, ev: E.ArgsFailed) -> None:
        item = ev.item
        if isinstance(item, Creation):  # an argument failed: so does the actor
            self._out.append(E.CreationFailed(item, ev.error))
            self._on_create_failed(E.ActorCreateFailed(item.actor_id, ev.error))
            return
        found = self.by_return.get(item.return_ids[0])
        if found is not None:
            c = found.client
            if item in c.queue:
                c.queue.remove(item)
            self._fail(item, ev.error)
            self._drain(c)

    def _drain(self, c: ActorClient) -> None:
        self._touched.add(c)
        queue = c.queue
        while queue and c.state is ALIVE:
            if queue[0].waiting:
                break
            self._send(c, queue.popleft())
        if c.kill_when_idle and not queue and not c.in_flight:
            self._kill_now(c)

    def _send(self, c: ActorClient, spec: CallSpec) -> None:
        spec.rid = rid = self.next_rid()
        spec.peer = c.peer
        spec.epoch = c.epoch
        c.in_flight[rid] = spec
        self._out.append(E.SendActorCall(c, spec, c.peer))

    def _on_send_failed(self, ev: E.SendFailed) -> None:
        # never sent: it waits for the actor's next address, its retries untouched
        c, spec = ev.client, ev.spec
        if c.in_flight.get(spec.rid) is not spec:
            return
        del c.in_flight[spec.rid]
        self._requeue(c, [spec])
        self._host_gone(c, ev.peer)

    def _requeue(self, c: ActorClient, specs: list[CallSpec]) -> None:
        """Put calls sent before back at the front, in the order they were first sent."""
        if not specs:
            return
        self._touched.add(c)
        queue = c.queue
        sent = []
        while queue and queue[0].rid:  # calls put back earlier: also sent before
            sent.append(queue.popleft())
        sent.extend(specs)
        sent.sort(key=lambda s: s.rid)
        queue.extendleft(reversed(sent))

    def _host_gone(self, c: ActorClient, peer: Any) -> None:
        self._touched.add(c)
        if c.peer is peer and c.state is ALIVE:
            c.state = RESOLVING
            c.peer = None
        if c.state is RESOLVING and (c.queue or c.in_flight):
            self._locate(c)

    def _on_peer_closed(self, ev: E.PeerClosed) -> None:
        for c in {id(c): c for c in self.clients.values()}.values():
            if c.peer is ev.peer:
                self._host_gone(c, ev.peer)

    def _on_node_died(self, ev: E.NodeDied) -> None:
        err = ActorDiedError(f"node {ev.node_id.hex()} died")
        self.dead_nodes.add(ev.node_id)  # (node ids are never reused: a node back is a new one)
        for c in {id(c): c for c in self.clients.values()}.values():
            # (every call in flight went to incarnation ``c.epoch``, on ``c.node_id``)
            if c.node_id == ev.node_id and (c.state is ALIVE or c.in_flight):
                self._lose(c, c.peer, list(c.in_flight.values()), err)
                self._after(c)

    # --- results ------------------------------------------------------------------------

    def _answered(self, c: ActorClient, rid: int, peer: Any) -> Any:
        """The call in flight that an answer (``rid`` on ``peer``) is for, taken out;
        None for an answer from another incarnation or connection, or a late one."""
        spec = c.in_flight.pop(rid, None)
        if spec is None or spec.epoch != c.epoch or (peer is not None and spec.peer is not peer):
            self._late(c, rid, spec, peer)
            return None
        return spec

    def replied(self, c: ActorClient, rid: int, peer: Any) -> CallSpec | None:
        """The fast path of :class:`CallReplied` for the plain case: the answer that
        counts (from where the call went) to a client alive with nothing queued,
        not to be ended. Takes the call out and returns it; its results are the
        caller's to complete, as for a :class:`CallDone`. Anything else returns
        None, having changed nothing: hand the event to :meth:`handle`.

        (``handle`` would do the same, and then find nothing to send and the way
        as open as it was published.)
        """
        spec = c.in_flight.get(rid)
        if (
            spec is None
            or spec.peer is not peer
            or spec.epoch != c.epoch
            or c.state is not ALIVE
            or c.queue
            or c.kill_when_idle
        ):
            return None
        del c.in_flight[rid]
        by_return = self.by_return
        for oid in spec.return_ids:
            by_return.pop(oid, None)
        return spec

    def _on_replied(self, ev: E.CallReplied) -> None:
        c = ev.client
        spec = self._answered(c, ev.rid, ev.peer)
        if spec is not None:
            for oid in spec.return_ids:
                self.by_return.pop(oid, None)
            self._out.append(E.CallDone(spec, ev.results, c.node_id))
            self._after(c)

    def _on_rejected(self, ev: E.CallRejected) -> None:
        spec = self._answered(ev.client, ev.rid, ev.peer)
        if spec is not None:
            self._fail(spec, ev.error)
            self._after(ev.client)

    def _late(self, c: ActorClient, rid: int, spec: CallSpec | None, peer: Any) -> None:
        """An answer that does not count, dropped: to a call already failed or sent again,
        or not from the instance (connection, incarnation) the call went to."""
        logger.debug("%s: dropped a late or stray answer to call %d (%r)", c.describe(), rid, spec)
        if spec is None:
            return
        c.in_flight[rid] = spec  # still waits for its own instance's answer
        if peer is not None and spec.peer is not peer:
            return
        # an older incarnation than the client's (it moved on without _fence: cannot happen)
        self._lose(c, None, [spec], ConnectionError("an older incarnation answered"))
        self._after(c)

    def _on_lost(self, ev: E.CallLost) -> None:
        c = ev.client
        if ev.rid in c.in_flight:
            lost = [s for s in c.in_flight.values() if s.peer is ev.peer or s.rid == ev.rid]
            self._lose(c, ev.peer, lost, ev.error)
            self._after(c)

    def _lose(self, c: ActorClient, peer: Any, lost: list[CallSpec], err: BaseException) -> None:
        """The host went away (or lost the actor): retry or fail what was sent there."""
        self._touched.add(c)
        retry = []
        for s in sorted(lost, key=lambda s: s.rid):
            del c.in_flight[s.rid]
            if s.retries_left != 0:
                s.retries_left -= 1
                retry.append(s)
            else:
                self._fail(
                    s, ActorDiedError(f"{c.describe()} died while running {s.method}(): {err}")
                )
        self._requeue(c, retry)
        if c.peer is peer and c.state is ALIVE:
            c.state = RESOLVING
            c.peer = None
        if c.state is RESOLVING:
            self._locate(c)

    def _after(self, c: ActorClient) -> None:
        if c.state is ALIVE:
            self._drain(c)
        if c.kill_when_idle and not c.queue and not c.in_flight:
            self._kill_now(c)

    def _fail(self, spec: CallSpec, err: BaseException) -> None:
        for oid in spec.return_ids:
            self.by_return.pop(oid, None)
        self._out.append(E.CallFailed(spec, err))

    # --- cancel and lifetime ----------------------------------------------------------------

    def _on_cancel(self, ev: E.CancelCall) -> None:
        spec = self.by_return.get(ev.oid)
        if spec is None:
            return
        c = spec.client
        if spec in c.queue:
            c.queue.remove(spec)
            self._fail(spec, TaskCancelledError(f"call {spec.method}() was cancelled"))
            self._drain(c)
        elif c.peer is not None:
            self._out.append(E.SendCancel(c.peer, spec.task_id))

    def _on_out_of_scope(self, ev: E.ActorOutOfScope) -> None:
        """No handle to an actor this process owns is left: end it once its calls are done."""
        c = self.clients.get(ev.actor_id)
        if c is None:
            self._out.append(E.KillActor(ev.actor_id))
        elif c.queue or c.in_flight or (c.locating and c.epoch < 0):
            c.kill_when_idle = True  # calls still to finish, or not created yet
            self._touched.add(c)
        else:
            self._kill_now(c)

    def _kill_now(self, c: ActorClient) -> None:
        c.kill_when_idle = False
        c.state = DEAD  # this process let go of it: nothing more goes there
        self._touched.add(c)
        self.clients.pop(c.actor_id, None)
        self._out.append(E.KillActor(c.actor_id))
        self._release_held(c)

    # --- checks ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check the invariants (tests switch this on)."""
        for c in self.clients.values():
            for rid, spec in c.in_flight.items():
                assert spec.rid == rid, (c, spec)
                assert spec.epoch == c.epoch, (c, spec)  # older ones were fenced
            if c.state is DEAD:
                assert not c.queue and not c.in_flight, c
            if c.state is ALIVE:
                assert c.peer is not None, c
        for oid, spec in self.by_return.items():
            assert oid in spec.return_ids
