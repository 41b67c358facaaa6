"""The shell of the owner's object core: feeds it on the runtime loop, carries it out.

Any thread hands the core events (:meth:`ObjectShell.post`); refs made and
dropped are queued without waking the loop (:meth:`ObjectShell.note`), the
next drain or the runtime's flush picks them up, in order with everything
else. The task and actor shells drain this inbox before each of their own
batches (:meth:`ObjectShell.catch_up`), so objects a submission created exist
before its task does anything. Waiters run here, on the loop, with no lock
held.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _protocol as P
from .._refcount import PENDING, wake
from .._rpc import error_from_reply, next_rid
from . import _object_events as E
from ._inbox import Inbox, carry_out
from ._objects import ObjectCore

if TYPE_CHECKING:
    from .._runtime import CoreRuntime

__all__ = ["ObjectShell"]

logger = logging.getLogger(__name__)


class ObjectShell:
    """The runtime's :class:`ObjectCore`, fed through one :class:`Inbox`."""

    def __init__(self, rt: CoreRuntime) -> None:
        self.rt = rt
        self.core = ObjectCore(rt.my_id)
        self.table = self.core.table  # other threads read it (published values only)
        self.inbox = Inbox(rt, self._process)
        # watches queued quietly and not handled yet (id -> event): a caller that read
        # a reply itself looks here to see whether another waiter needs the loop now
        self.quiet_watches: dict[int, Any] = {}
        self._queue = self.inbox.put_quietly
        self._run: dict[type, Callable[[Any], None]] = {
            E.FreeStore: self._free,
            E.ReleaseBorrow: self._release,
            E.ActorOutOfScope: self._out_of_scope,
            E.Wake: self._wake,
            E.WakeEach: self._wake_each,
            E.Answer: self._answer,
            E.SendAddBorrower: self._send_add_borrower,
            E.FetchValue: self._fetch,
            E.SetEvent: self._set_event,
        }

    def bind(self, address: tuple[Any, ...]) -> None:
        """This process listens at ``address`` now (it names us to owners as borrower)."""
        self.core.address = address

    # --- events (any thread) ---------------------------------------------------------------

    def post(self, event: Any) -> None:
        self.inbox.post(event)

    def post_all(self, events: list[Any]) -> None:
        self.inbox.post_all(events)

    def results_arrived(
        self, oids: list[bytes], results: list[Any], node_id: bytes | None, held: list[bytes]
    ) -> None:
        """A call's results are in (``[kind, data, nested]`` per return id) and its
        arguments ``held`` may go (as :class:`ResultArrived` and :class:`HeldReleased`);
        any thread. On the loop with no drain under way they are handled at once
        (what is queued comes first), without making events; else posted."""
        inbox, rt = self.inbox, self.rt
        if (
            threading.get_ident() != rt.loop_thread_id
            or rt.handed_conns
            or not inbox.caught_up()  # (what is queued first)
        ):
            events: list[Any] = [
                E.ResultArrived(oid, kind, data, nested, node_id)
                for oid, (kind, data, nested) in zip(oids, results, strict=True)
            ]
            if held:
                events.append(E.HeldReleased(held))
            inbox.post_all(events)
            return
        out: list[Any] = []
        core = self.core
        core.results_arrived(oids, results, node_id, out)
        if held:
            out.extend(core.handle([E.HeldReleased(held)]))
        run = self._run
        for ins in out:
            if type(ins) is E.Wake:  # (the commonest: straight to the waiters)
                wake(ins.waiters, ins.entry)
                continue
            try:
                run[type(ins)](ins)
            except Exception:
                logger.exception("carrying out %s failed", type(ins).__name__)

    def note(self, event: Any) -> None:
        """Queue a count change without waking the loop: the runtime's next flush (armed
        here if need be) or any earlier drain handles it, in order. ``event`` may be a
        bare one (see :mod:`._object_events`)."""
        self._queue(event)
        rt = self.rt
        if not rt._flush_scheduled:
            rt._schedule_flush()

    def watch(self, refs: list[tuple[bytes, Any]], cb: Callable[[Any], None]) -> None:
        """``cb(entry)`` on the loop once each object's value is there (see :class:`Watch`)."""
        self.post(E.Watch(refs, cb))

    def watch_owned(self, refs: list[tuple[bytes, Any]], cb: Callable[[Any], None]) -> None:
        """:meth:`watch` for objects this process owns, from another thread than the loop's,
        without waking the loop when it need not be.

        An owned object still PENDING (or whose creation is still queued) completes
        through an event queued after this one, and queuing that event drains the
        inbox: the watch is handled first. Only an object published meanwhile (its
        completion drained before this event was queued) needs a drain now. The
        runtime's flush is armed as a backstop either way.
        """
        ev = E.Watch(refs, cb)
        self.quiet_watches[id(ev)] = ev  # (before it is queued: see _own_reply)
        self.note(ev)
        if self.rt.handed_conns:  # a value read off a connection may be among them
            self.inbox.wake()
            return
        entries = self.table.entries
        for oid, _owner in refs:
            e = entries.get(oid)
            if e is not None and e.state != PENDING:
                self.inbox.wake()
                return

    def unwatch(self, oids: list[bytes], cb: Callable[[Any], None]) -> None:
        self.post(E.Unwatch(oids, cb))

    def location(
        self, oid: bytes, node_id: bytes, any_entry: bool = False, free_if_gone: bool = False
    ) -> None:
        """A store copy of ``oid`` is on ``node_id`` (see :class:`LocationAdded`)."""
        self.post(E.LocationAdded(oid, node_id, any_entry, free_if_gone))

    def catch_up(self) -> None:
        """Handle what is queued, unless a drain is under way (on the loop)."""
        self.inbox.drain_if_idle()

    def ask(self, make: Callable[[Callable[[Any], None]], Any], timeout: float = 30.0) -> Any:
        """The answer to the event ``make(answer)`` (a consistent read); any thread."""
        box: list[Any] = []
        done = threading.Event()

        def answer(value: Any) -> None:
            box.append(value)
            done.set()

        event = make(answer)
        rt = self.rt
        if rt.on_loop_thread():
            self.inbox.drain_if_idle()
            carry_out(self.core.handle([event]), self._run)  # the loop cannot wait
        else:
            self.post(event)
            if not done.wait(timeout):
                raise TimeoutError("the runtime loop did not answer in time")
        return box[0]

    def _process(self, events: list[Any]) -> None:
        try:
            carry_out(self.core.handle(events), self._run)
        finally:
            if self.quiet_watches:  # (handled: registered, or woken)
                for ev in events:
                    self.quiet_watches.pop(id(ev), None)

    # --- instructions ----------------------------------------------------------------------

    def _free(self, ins: E.FreeStore) -> None:
        self.rt._frees.append(ins)  # (with the nodes holding its copies)
        self.rt._schedule_flush()
        for spec in self.rt.recovery.freed([ins.oid]):  # lineage nobody needs any more:
            self.rt.submitter.release_args(spec)  # its arguments go too

    def _release(self, ins: E.ReleaseBorrow) -> None:
        self.rt._releases.setdefault(tuple(ins.owner), []).append(ins.oid)
        self.rt._schedule_flush()

    def _out_of_scope(self, ins: E.ActorOutOfScope) -> None:
        self.rt.actors.out_of_scope(ins.actor_id)

    def _wake(self, ins: E.Wake) -> None:
        wake(ins.waiters, ins.entry)

    def _wake_each(self, ins: E.WakeEach) -> None:
        cb = ins.waiter
        for e in ins.entries:
            try:
                cb(e)
            except Exception:  # one that fails does not keep the others waiting
                logger.exception("a waiter of object %s failed", e.oid.hex())

    def _answer(self, ins: E.Answer) -> None:
        ins.fn(ins.value)

    def _set_event(self, ins: E.SetEvent) -> None:
        ins.event.set()

    def _send_add_borrower(self, ins: E.SendAddBorrower) -> None:
        msg = P.AddBorrowerMsg(next_rid(), ins.oid, list(ins.borrower))
        acked = functools.partial(self._acked, ins.token)
        self.rt.with_peer(ins.owner, functools.partial(_request_or_fail, msg=msg, cb=acked))

    def _acked(self, token: Any, _reply: Any) -> None:
        self.post(E.BorrowAcked(token))

    def _fetch(self, ins: E.FetchValue) -> None:
        oid = ins.oid
        got = functools.partial(self._fetched, oid)
        msg = P.GetObjectMsg(next_rid(), oid)
        self.rt.with_peer(ins.owner, functools.partial(_request_or_fail, msg=msg, cb=got))

    def _fetched(self, oid: bytes, reply: Any) -> None:
        if not isinstance(reply, BaseException):
            reply = error_from_reply(reply) if reply.TAG == P.Tag.ERROR_REPLY else reply.value
        self.post(E.Fetched(oid, reply))


def _request_or_fail(peer: Any, msg: Any, cb: Callable[[Any], None]) -> None:
    if isinstance(peer, BaseException):
        cb(peer)
        return
    try:
        peer.request(msg, cb)
    except ConnectionError as e:
        cb(e)
