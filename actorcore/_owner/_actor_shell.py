"""The shell of the owner's actor core: carries its instructions out on the runtime loop.

Any thread may create an actor or call one: it prepares the arguments,
creates the return objects and hands the core an event through an
:class:`Inbox`. The core's state is only touched on the loop. Creation of a
named actor waits for the daemon's answer, except on the runtime's loop
(which cannot wait): there the handle learns the actor's id afterwards.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _protocol as P
from .. import _task_events as TE
from .._args import NO_ARGS, prepare_args
from .._ref import ObjectRef
from .._refcount import ACTOR
from .._rpc import error_from_reply, next_rid
from ..errors import ActorDiedError
from . import _actor_events as E
from . import _object_events as OE
from ._actor_state import ActorClient, CallSpec, Creation
from ._actors import ActorCore
from ._deps import ready_now, resolve_deps
from ._inbox import Inbox, carry_out
from ._own_reply import last_call

if TYPE_CHECKING:
    from .._runtime import CoreRuntime

__all__ = ["ActorClients"]

logger = logging.getLogger(__name__)

_new_msg = tuple.__new__
HAND_OVER = 100  # calls queued by a caller thread: it lets the loop send them
HAND_OVER_WAIT_S = 0.005
assert len(P.ActorCallMsg._fields) == 10  # (see _call_msg)


class ActorClients:
    """The caller's side of actors: an :class:`ActorCore` fed on the runtime's loop."""

    def __init__(self, rt: CoreRuntime) -> None:
        self.rt = rt
        self.core = ActorCore(next_rid=next_rid)
        self.inbox = Inbox(rt, self._process)
        # calls caller threads sent themselves, for the core (ahead of the inbox's events)
        self._sent: collections.deque[E.CallSentDirect] = collections.deque()
        self._owner: tuple[Any, list[Any]] = (None, [])  # rt.address, as calls carry it
        self._run: dict[type, Callable[[Any], None]] = {
            E.SendActorCall: self._send_call,
            E.CallDone: self._call_done,
            E.CallFailed: self._call_failed,
            E.ResolveArgs: self._resolve_args,
            E.SendCreate: self._send_create,
            E.CreationFailed: self._creation_failed,
            E.LocateActor: self._locate,
            E.ConnectActor: self._connect,
            E.SendCancel: self._send_cancel,
            E.KillActor: self._kill_actor,
            E.ReleaseHeld: self._release_held,
        }

    def post(self, event: Any) -> None:
        """Hand the core an event; any thread."""
        self.inbox.post(event)

    def _process(self, events: list[Any]) -> None:
        self.rt.objects.catch_up()
        sent = self._sent
        if sent:
            first = []
            while sent:
                first.append(sent.popleft())
            events = first + events
        instructions = self.core.handle(events)
        if len(instructions) == 1:
            carry_out(instructions, self._run)
        else:
            self._carry_out(instructions)

    def _carry_out(self, instructions: list[Any]) -> None:
        """:func:`carry_out`, sending consecutive calls to one host in one write."""
        run = self._run
        calls: list[E.SendActorCall] = []
        for ins in instructions:
            if type(ins) is E.SendActorCall:
                if calls and calls[0].peer is not ins.peer:
                    self._send_calls(calls)
                    calls = []
                calls.append(ins)
                continue
            if calls:
                self._send_calls(calls)
                calls = []
            try:
                run[type(ins)](ins)
            except Exception:
                logger.exception("carrying out %s failed", type(ins).__name__)
        if calls:
            self._send_calls(calls)

    # --- the API's entry points (any thread) -----------------------------------------------

    def create(
        self,
        actor_id: bytes,
        class_name: str,
        spec: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        max_task_retries: int,
        wait_registered: bool,
        on_id: Callable[[bytes], None] | None = None,
    ) -> bytes:
        """Create an actor; returns its id (an existing one for get_if_exists).

        Without ``wait_registered`` (on the runtime's loop, which cannot block)
        ``actor_id`` is returned at once; should the daemon answer with another
        actor (a named one that exists), calls made meanwhile go to that one
        and ``on_id`` is called with its id.
        """
        rt = self.rt
        prepared = prepare_args(rt, args, kwargs, f"{class_name}.__init__()")
        spec["args"] = prepared.payload
        rt.objects.inbox.put_quietly(
            OE.ValueOwned(actor_id, ACTOR, None, held=prepared.held, local=0)
        )  # (this shell's drain catches the object core up first)
        if spec.get("detached") or spec.get("name"):
            rt.persistent_actors.add(actor_id)
        answer = _Answer(on_id)
        self.post(E.CreateActor(actor_id, class_name, max_task_retries, spec, prepared, answer))
        if not wait_registered:
            return actor_id
        answer.done.wait()
        reply = answer.reply
        if isinstance(reply, BaseException):
            raise reply
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        return bytes(reply.value[0])

    def call(
        self,
        actor_id: bytes,
        class_name: str,
        max_task_retries: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        num_returns: int,
        stream: int = 0,
    ) -> list[Any]:
        rt = self.rt
        if args or kwargs:
            prepared = prepare_args(rt, args, kwargs, f"{class_name}.{method}()")
        else:
            prepared = NO_ARGS  # (shared: never changed)
        spec = CallSpec(method, prepared, max_task_retries, num_returns)
        spec.stream = stream
        spec.label = label = f"{class_name}.{method}"
        TE.pending_actor_call(spec.task_id, label, actor_id, bool(prepared.deps))  # observability
        address = rt.address
        # queued quietly: the reply (or this shell's drain) catches the object core up first
        # (the bare list: ObjectsCreated with nothing held, one object fewer per call)
        held = prepared.held
        rt.objects.inbox.put_quietly(
            OE.ObjectsCreated(spec.return_ids, held) if held else spec.return_ids
        )
        if prepared.deps and (resolved := ready_now(rt, prepared.deps)) is not None:
            spec.resolved = resolved
            prepared.deps = []  # nothing to wait for (``held`` keeps them alive)
        if stream:  # the stream first: its items may come as soon as the call is sent
            rt.streams.open(spec.return_ids[0], stream - 1)
        if prepared.deps or not self._send_direct(actor_id, spec):
            spec.actor_id = actor_id
            spec.class_name = class_name
            if self.inbox.post(spec) == HAND_OVER:  # (bare: its own SubmitActorCall)
                self._hand_over()  # (a caller thread's burst: 0 on the loop's)
        ids = spec.return_ids
        if len(ids) == 1:
            return [ObjectRef(ids[0], address, _counted=True)]
        return [ObjectRef(oid, address, _counted=True) for oid in ids]

    def _hand_over(self) -> None:
        """A burst of calls from this thread: let the loop send what is queued now.

        The loop thread was woken by the first of them but waits for the GIL,
        which this thread holds while it makes calls (up to the interpreter's
        switch interval, 5 ms: a thousand calls). Waiting here until the loop
        has drained the inbox (a callback queued behind that drain) sends these
        calls now, so the actor works while this thread makes the next ones.
        The wait is short (what the loop would spend on them anyway, under the
        same GIL) and bounded.
        """
        if asyncio._get_running_loop() is not None:
            return  # (a thread running an event loop never waits)
        done = _thread.allocate_lock()  # (a bare lock: an Event is Python code)
        done.acquire()
        try:
            self.rt.loop.call_soon_threadsafe(done.release)
        except RuntimeError:
            return  # the loop is closed
        done.acquire(timeout=HAND_OVER_WAIT_S)  # (released by the loop; late: harmless)

    def _send_direct(self, actor_id: bytes, spec: CallSpec) -> bool:
        """Send a call from this thread when the core says the way is open; else False.

        Only off the loop (on it, the core runs at once anyway) and only when
        the core has handled everything queued before, so this caller's
        earlier calls are all on their way: its order holds.
        """
        if threading.get_ident() == self.rt.loop_thread_id or not self.inbox.quiet():
            return False
        last = last_call()
        if self._sent and not last.answered:
            return False  # a burst of calls: the loop sends the rest, in batches
        c = self.core.clients.get(actor_id)
        peer = None if c is None else c.direct  # one read: the loop may change it
        if c is None or peer is None:
            return False
        spec.rid = rid = next_rid()
        spec.peer = peer
        spec.epoch = c.epoch  # read after ``direct``: never older than the peer's
        # not through the inbox: the core sees it before the reply (which wakes the
        # loop), and this thread's next call may go straight away too
        self._sent.append(E.CallSentDirect(c, spec))
        self._send_call(E.SendActorCall(c, spec, peer))
        last.answered = False
        last.call = (spec.return_ids[0], peer, rid) if len(spec.return_ids) == 1 else None
        if spec.stream:
            last.call = None
        return True

    def cancel(self, oid: bytes, force: bool) -> None:
        self.post(E.CancelCall(oid, force))

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
        if actor_id not in self.rt.persistent_actors and not self.rt.closing:
            self.post(E.ActorOutOfScope(actor_id))

    def peer_closed(self, peer: Any) -> None:
        self.post(E.PeerClosed(peer))

    def node_died(self, node_id: bytes) -> None:
        self.post(E.NodeDied(node_id))

    # --- instructions: creation and locating --------------------------------------------------

    def _resolve_args(self, ins: E.ResolveArgs) -> None:
        item = ins.item

        def done(resolved: list[Any] | BaseException) -> None:
            if isinstance(resolved, BaseException):
                self.post(E.ArgsFailed(item, resolved))
            else:
                self.post(E.ArgsReady(item, resolved))

        resolve_deps(self.rt, ins.deps, done)

    def _send_create(self, ins: E.SendCreate) -> None:
        creation = ins.creation
        creation.spec["resolved"] = ins.resolved
        msg = P.CreateActorMsg(next_rid(), creation.actor_id, creation.spec)
        cb = functools.partial(self._created, creation)
        try:
            self.rt.daemon.request(msg, cb)
        except ConnectionError as err:
            cb(err)

    def _created(self, creation: Creation, reply: Any) -> None:
        if isinstance(reply, BaseException) or reply.TAG == P.Tag.ERROR_REPLY:
            err = reply if isinstance(reply, BaseException) else error_from_reply(reply)
            self.post(E.ActorCreateFailed(creation.actor_id, err))
        else:
            real = bytes(reply.value[0])
            if real != creation.actor_id and creation.actor_id in self.rt.persistent_actors:
                self.rt.persistent_actors.add(real)
            self.post(E.ActorRegistered(creation.actor_id, real))
        creation.notify(reply)

    def _creation_failed(self, ins: E.CreationFailed) -> None:
        ins.creation.notify(ins.error)

    def _locate(self, ins: E.LocateActor) -> None:
        c = ins.client
        msg = P.WaitActorMsg(next_rid(), c.actor_id, ins.min_epoch)
        cb = functools.partial(self._located, c)
        try:
            self.rt.daemon.request(msg, cb)
        except ConnectionError as e:
            cb(e)

    def _located(self, c: ActorClient, reply: Any) -> None:
        if isinstance(reply, BaseException) or reply.TAG == P.Tag.ERROR_REPLY:
            err = reply if isinstance(reply, BaseException) else error_from_reply(reply)
            self.post(E.ActorDied(c, err))
            return
        value = reply.value
        state, address, epoch, cause = value[:4]
        node_id = bytes(value[4]) if len(value) > 4 and value[4] else self.rt.node.node_id
        self.post(E.ActorLocated(c, state, address, epoch, cause, node_id))

    def _connect(self, ins: E.ConnectActor) -> None:
        cb = functools.partial(self._connected, ins.client, ins.epoch, ins.node_id)
        self.rt.with_peer(tuple(ins.address), cb)

    def _connected(self, c: ActorClient, epoch: int, node_id: bytes | None, peer: Any) -> None:
        if isinstance(peer, BaseException):
            self.post(E.ActorUnreachable(c, epoch))
        else:
            self.post(E.ActorConnected(c, epoch, peer, node_id))

    # --- instructions: calls ------------------------------------------------------------------

    def _call_msg(self, c: ActorClient, spec: CallSpec) -> P.ActorCallMsg:
        address = self.rt.address
        cached = self._owner  # (one read: caller threads send calls too)
        if cached[0] is not address:
            cached = self._owner = (address, list(address))  # (shared: never changed)
        owner = cached[1]
        # every field, in order: built in C (the NamedTuple's __new__ is Python code)
        return _new_msg(
            P.ActorCallMsg,
            (
                spec.rid,
                c.actor_id,
                spec.method,
                spec.task_id,
                spec.args.payload,
                spec.resolved,
                spec.return_ids,
                owner,
                spec.stream,
                spec.epoch,
            ),
        )

    def _send_call(self, ins: E.SendActorCall) -> None:
        c, spec, peer = ins.client, ins.spec, ins.peer
        msg = self._call_msg(c, spec)
        try:
            peer.request(msg, functools.partial(self._on_reply, c, spec.rid, peer))
        except ConnectionError:
            self.post(E.SendFailed(c, spec, peer))

    def _send_calls(self, calls: list[E.SendActorCall]) -> None:
        """Several :class:`SendActorCall` to one host, in order, in one write."""
        if len(calls) == 1:
            self._run_one(calls[0])
            return
        peer = calls[0].peer
        on_reply = self._on_reply
        partial = functools.partial
        msgs = []
        callbacks = []
        for ins in calls:
            c, spec = ins.client, ins.spec
            msgs.append(self._call_msg(c, spec))
            callbacks.append(partial(on_reply, c, spec.rid, peer))
        try:
            peer.request_all(msgs, callbacks)
        except ConnectionError:
            for ins in calls:
                self.post(E.SendFailed(ins.client, ins.spec, peer))
        except Exception:  # (a message over the limits): each on its own, as ever
            for ins in calls:
                self._run_one(ins)

    def _run_one(self, ins: E.SendActorCall) -> None:
        try:
            self._send_call(ins)
        except Exception:
            logger.exception("carrying out %s failed", type(ins).__name__)

    def _on_reply(self, c: ActorClient, rid: int, peer: Any, reply: Any) -> None:
        if isinstance(reply, BaseException):
            self.post(E.CallLost(c, rid, peer, reply))
        elif reply.TAG == P.Tag.ERROR_REPLY:
            err = error_from_reply(reply)
            if isinstance(err, ActorDiedError):
                self.post(E.CallLost(c, rid, peer, err))
            else:
                self.post(E.CallRejected(c, rid, err, peer))
        else:
            node = c.node_id
            if node is not None and node != self.rt.node.node_id:  # observability hook:
                spec = c.in_flight.get(rid)  # the actor's node has the run's record
                if spec is not None:
                    TE.ran_elsewhere(spec.task_id, node)
            if not self.inbox.draining and threading.get_ident() == self.rt.loop_thread_id:
                # The plain case needs no event. The core has the call (or replied()
                # says no); what is still queued for it (other calls, their sends)
                # does not bear on this answer, nor this answer on them: the core
                # sees the same as if the answer had come a moment earlier.
                spec = self.core.replied(c, rid, peer)
                if spec is not None:
                    held = spec.args.held  # (_results, inline)
                    if held:
                        spec.args.held = []
                    self.rt.objects.results_arrived(spec.return_ids, reply.results, node, held)
                    return
            self.post(E.CallReplied(c, rid, reply.results, peer))

    def _call_done(self, ins: E.CallDone) -> None:
        self._results(ins.spec, ins.results, ins.node_id)

    def _results(self, spec: CallSpec, results: list[Any], node_id: bytes | None) -> None:
        """Complete the call's objects (store results are on ``node_id``, the actor's
        node), release its arguments."""
        held = spec.args.held
        if held:
            spec.args.held = []
        self.rt.objects.results_arrived(spec.return_ids, results, node_id, held)

    def _call_failed(self, ins: E.CallFailed) -> None:
        TE.owner_failed(ins.spec.task_id, ins.spec.label, ins.error)  # observability hook
        events: list[Any] = [OE.ObjectsFailed(ins.spec.return_ids, ins.error)]
        if ins.spec.args.held:
            events.append(OE.HeldReleased(ins.spec.args.held))
            ins.spec.args.held = []
        self.rt.objects.post_all(events)

    def _release(self, held: list[bytes]) -> None:
        if held:
            self.rt.objects.post(OE.HeldReleased(held))

    def _release_held(self, ins: E.ReleaseHeld) -> None:
        self._release(ins.held)

    def _send_cancel(self, ins: E.SendCancel) -> None:
        try:
            ins.peer.send(P.CancelTaskMsg(ins.task_id, False))
        except ConnectionError:
            pass

    def _kill_actor(self, ins: E.KillActor) -> None:
        try:
            self.rt.daemon.send(P.KillActorMsg(0, ins.actor_id, True))
        except ConnectionError:
            pass


class _Answer:
    """The daemon's answer to a creation, for a thread that waits for it."""

    __slots__ = ("done", "on_id", "reply")

    def __init__(self, on_id: Callable[[bytes], None] | None) -> None:
        self.done = threading.Event()
        self.reply: Any = None
        self.on_id = on_id

    def __call__(self, reply: Any) -> None:
        self.reply = reply
        self.done.set()
        ok = not isinstance(reply, BaseException) and reply.TAG != P.Tag.ERROR_REPLY
        if ok and self.on_id is not None:
            self.on_id(bytes(reply.value[0]))
