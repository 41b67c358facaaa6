"""The owner's object core: reference counts, borrowing, values and waiters. No I/O.

``ObjectCore.handle(events, now) -> instructions`` keeps one process's
:class:`~actorcore._refcount.ObjectTable`: refs made and dropped, owned
objects created and completed, borrowers that register and let go (and die),
this process registering as a borrower of refs it unpickled and lending refs
it returns, values fetched from their owners, store copies' locations and
callers waiting for values. It runs only on the runtime's loop; other threads
hand it events through an :class:`~actorcore._owner._inbox.Inbox`, and read
the table without a lock only where a value is published (an entry's
``kind`` and ``data`` are set before its ``state`` leaves PENDING).

Waiters are never run inside ``handle``: they come out as :class:`Wake`
instructions, carried out by the shell after the core's state is consistent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._ids import new_id
from .._refcount import ERROR, INLINE, PENDING, READY, STORE, ObjectEntry, ObjectTable
from .._serialization import load_error
from ..errors import ObjectLostError, OwnerDiedError
from . import _object_events as E

__all__ = ["ObjectCore"]

Owner = tuple[Any, ...]


class _Acks:
    """ADD_BORROWER requests of one registration (or one lending) still unanswered."""

    __slots__ = ("container", "done", "left")

    def __init__(self, left: int, container: bytes | None, done: Any) -> None:
        self.left = left
        self.container = container
        self.done = done


class ObjectCore:
    """The object table of one process, changed only through :meth:`handle`."""

    def __init__(self, my_id: bytes, address: Owner | None = None) -> None:
        self.my_id = my_id
        self.address: Owner = address if address is not None else (my_id, "", 0)
        self.table = ObjectTable(my_id)
        self._handlers: dict[type, Callable[[Any, list[Any]], None]] = {
            E.RefAdded: self._ref_added,
            E.RefsAdded: self._refs_added,
            E.RefsDropped: self._refs_dropped,
            bytes: self._one_dropped,  # the bare forms (see _object_events)
            tuple: self._one_added,
            list: self._created_bare,
            E.ObjectsCreated: self._objects_created,
            E.ValueOwned: self._value_owned,
            E.ValueSet: self._value_set,
            E.HeldAdded: self._held_added,
            E.HeldReleased: self._held_released,
            E.ResultArrived: self._result_arrived,
            E.ResultsDiscarded: self._results_discarded,
            E.ObjectsFailed: self._objects_failed,
            E.BorrowerAdded: self._borrower_added,
            E.BorrowersRemoved: self._borrowers_removed,
            E.BorrowerGone: self._borrower_gone,
            E.RegisterBorrows: self._register_borrows,
            E.LendRefs: self._lend_refs,
            E.BorrowAcked: self._borrow_acked,
            E.Watch: self._watch,
            E.Unwatch: self._unwatch,
            E.ValueRequested: self._value_requested,
            E.Fetched: self._fetched,
            E.LocationAdded: self._location_added,
            E.NodeGone: self._node_gone,
            E.Query: self._query,
        }

    def handle(self, events: list[Any], now: float = 0.0) -> list[Any]:
        """Apply ``events`` in order; the instructions to carry out, in order."""
        out: list[Any] = []
        handlers = self._handlers
        for ev in events:
            handlers[type(ev)](ev, out)
        return out

    # --- counts ------------------------------------------------------------------------------

    def _ref_added(self, ev: E.RefAdded, out: list[Any]) -> None:
        self.table.add_local(ev.oid, ev.owner)

    def _refs_added(self, ev: E.RefsAdded, out: list[Any]) -> None:
        add = self.table.add_local
        for oid, owner in ev.refs:
            add(oid, owner)

    def _refs_dropped(self, ev: E.RefsDropped, out: list[Any]) -> None:
        out.extend(self.table.remove_local(ev.oids))

    def _one_added(self, ev: tuple[bytes, Owner], out: list[Any]) -> None:
        self.table.add_local(ev[0], ev[1])

    def _one_dropped(self, oid: bytes, out: list[Any]) -> None:
        entries = self.table.entries
        e = entries.get(oid)
        if e is not None:
            e.local -= 1
            if e.local <= 0 and e.total() <= 0:
                if e.owned and e.kind == INLINE and e.nested is None:
                    del entries[oid]  # (what _drop does for it: nothing else to let go)
                    e.waiters = None
                else:
                    out.extend(self.table.remove_local_last(e))

    def _objects_created(self, ev: E.ObjectsCreated, out: list[Any]) -> None:
        table, address = self.table, self.address
        for oid in ev.oids:
            table.create_owned(oid, address).local = 1
        if ev.held:
            table.add_submitted(ev.held)

    def _created_bare(self, oids: list[bytes], out: list[Any]) -> None:
        entries, address = self.table.entries, self.address
        for oid in oids:
            e = entries[oid] = ObjectEntry(oid, address, True)  # (create_owned, inline)
            e.local = 1

    def _value_owned(self, ev: E.ValueOwned, out: list[Any]) -> None:
        table = self.table
        e = table.create_owned(ev.oid, self.address)
        e.local = ev.local
        if ev.node_id is not None:
            e.locations = {ev.node_id}
        if ev.nested:  # (before the value: a reader that sees it sees its refs too)
            table.set_nested(ev.oid, ev.nested, registered=True)
        if ev.kind is not None:
            table.complete(e, ev.kind, ev.data)
        if ev.held:
            table.add_submitted(ev.held)

    def _value_set(self, ev: E.ValueSet, out: list[Any]) -> None:
        e = self.table.entries.get(ev.oid)
        if e is None:
            if ev.kind == STORE:
                out.append(E.FreeStore(ev.oid))  # every ref died while it was written
            return
        self._complete(e, ev.kind, ev.data, out)

    def _held_added(self, ev: E.HeldAdded, out: list[Any]) -> None:
        self.table.add_submitted(ev.oids)

    def _held_released(self, ev: E.HeldReleased, out: list[Any]) -> None:
        out.extend(self.table.remove_submitted(ev.oids))

    def _complete(self, e: ObjectEntry, kind: int, data: Any, out: list[Any]) -> None:
        waiters = self.table.complete(e, kind, data)
        if waiters:
            out.append(E.Wake(waiters, e))

    # --- results -------------------------------------------------------------------------------

    def _result_arrived(self, ev: E.ResultArrived, out: list[Any]) -> None:
        """Take a result. The refs nested in it live as long as it does; the worker
        registered us as their borrower before replying (so no release could
        overtake the reply), and for refs we own that registration is dropped
        again, the containment counting for it. A result nobody wants any more
        goes through a stand-in entry dropped at once, which frees its store
        copy and releases its nested refs the usual way."""
        self._arrived(ev.oid, ev.kind, ev.data, ev.nested, ev.node_id, ev.create, out)

    def results_arrived(
        self, oids: list[bytes], results: list[Any], node_id: bytes | None, out: list[Any]
    ) -> None:
        """A call's results (``[kind, data, nested]`` per return id): what as many
        :class:`ResultArrived` events do, without making them (the actor shell's
        fast path; on the loop, with nothing queued before)."""
        if len(results) != len(oids):
            raise ValueError(f"{len(results)} results for {len(oids)} return ids")
        entries = self.table.entries
        for oid, (kind, data, nested) in zip(oids, results, strict=False):  # (checked)
            e = entries.get(oid)
            if e is not None and kind == INLINE and not nested and e.state == PENDING:
                # the common case: ObjectTable.complete() inline (the state set last:
                # other threads read the value once they see it)
                e.kind = INLINE
                e.data = data
                e.fetching = False
                e.state = READY
                waiters = e.waiters
                if waiters is not None:
                    e.waiters = None
                    if type(waiters) is not list:
                        waiters = [waiters]  # type: ignore[list-item]
                    out.append(E.Wake(waiters, e))
            else:
                self._arrived(oid, kind, data, nested, node_id, False, out)

    def _arrived(
        self,
        oid: bytes,
        kind: int,
        data: Any,
        nested: Any,
        node_id: bytes | None,
        create: bool,
        out: list[Any],
    ) -> None:
        table = self.table
        e = table.entries.get(oid)
        unwanted = e is None and not create
        if e is None:
            e = table.create_owned(oid, self.address)
            e.local = 1
        if kind == ERROR:
            data = load_error(data)
        if nested:  # (before the value: a reader that sees it sees its refs too)
            pairs = [(bytes(n[0]), tuple(n[1])) for n in nested]
            table.set_nested(oid, pairs, registered=True)
        self._complete(e, kind, data, out)
        if kind == STORE and node_id is not None:
            table.add_location(oid, node_id)
        if nested:
            mine = [inner for inner, owner in pairs if owner[0] == self.my_id]
            if mine:
                out.extend(table.remove_borrower(mine, self.my_id))
        if unwanted:
            out.extend(table.remove_local([oid]))

    def _results_discarded(self, ev: E.ResultsDiscarded, out: list[Any]) -> None:
        for nested in ev.nested:
            if nested:
                self._result_arrived(E.ResultArrived(new_id(), INLINE, b"", nested), out)

    def _objects_failed(self, ev: E.ObjectsFailed, out: list[Any]) -> None:
        entries = self.table.entries
        for oid in ev.oids:
            e = entries.get(oid)
            if e is not None:
                self._complete(e, ERROR, ev.error, out)

    # --- borrowing: the owner's side ----------------------------------------------------------

    def _borrower_added(self, ev: E.BorrowerAdded, out: list[Any]) -> None:
        ok = self.table.add_borrower(ev.oid, ev.peer)
        if ev.answer is not None:
            out.append(E.Answer(ev.answer, ok))

    def _borrowers_removed(self, ev: E.BorrowersRemoved, out: list[Any]) -> None:
        out.extend(self.table.remove_borrower(ev.oids, ev.peer))

    def _borrower_gone(self, ev: E.BorrowerGone, out: list[Any]) -> None:
        out.extend(self.table.peer_gone(ev.peer))

    # --- borrowing: the borrower's and lender's side ---------------------------------------------

    def _register_borrows(self, ev: E.RegisterBorrows, out: list[Any]) -> None:
        """The container stays pinned while the registrations are in flight."""
        entries = self.table.entries
        todo = []
        for oid, _owner in ev.refs:
            e = entries.get(oid)
            if e is not None and not e.registered:
                e.registered = True
                todo.append(e)
        if not todo:
            out.append(E.SetEvent(ev.done))
            return
        if ev.container is not None:
            self.table.add_submitted([ev.container])
        acks = _Acks(len(todo), ev.container, ev.done)
        for e in todo:
            out.append(E.SendAddBorrower(e.owner, e.oid, self.address, acks))

    def _lend_refs(self, ev: E.LendRefs, out: list[Any]) -> None:
        foreign = []
        for oid, owner in ev.refs:
            if owner[0] == self.my_id:
                self.table.add_borrower(oid, ev.borrower[0])
            else:
                foreign.append((oid, owner))
        if not foreign:
            if ev.done is not None:
                out.append(E.SetEvent(ev.done))
            return
        acks = _Acks(len(foreign), None, ev.done)
        for oid, owner in foreign:
            out.append(E.SendAddBorrower(owner, oid, ev.borrower, acks))

    def _borrow_acked(self, ev: E.BorrowAcked, out: list[Any]) -> None:
        acks: _Acks = ev.token
        acks.left -= 1
        if acks.left:
            return
        if acks.container is not None:
            out.extend(self.table.remove_submitted([acks.container]))
        if acks.done is not None:
            out.append(E.SetEvent(acks.done))

    # --- values and waiters ---------------------------------------------------------------------

    def _watch(self, ev: E.Watch, out: list[Any]) -> None:
        table = self.table
        entries = table.entries
        cb = ev.cb
        ready: list[ObjectEntry] = []
        for oid, owner in ev.refs:
            e = entries.get(oid)
            if e is None:
                if owner[0] == self.my_id:  # ours, and gone (or from before a restart)
                    e = ObjectEntry(oid, owner, True)
                    table.complete(e, ERROR, ObjectLostError(f"object {oid.hex()} is unknown here"))
                    ready.append(e)
                    continue
                e = table.add_local(oid, owner)  # a ref from before a restart
                e.local -= 1
            if e.state != PENDING:
                ready.append(e)
                continue
            if e.waiters is None:  # (add_waiter's commonest case, inline)
                e.waiters = cb
            else:
                table.add_waiter(e, cb)
            if not e.owned and not e.fetching:
                e.fetching = True
                out.append(E.FetchValue(e.owner, oid))
        if len(ready) == 1:
            out.append(E.Wake([cb], ready[0]))
        elif ready:
            out.append(E.WakeEach(cb, ready))

    def _unwatch(self, ev: E.Unwatch, out: list[Any]) -> None:
        entries = self.table.entries
        for oid in ev.oids:
            e = entries.get(oid)
            if e is not None:
                self.table.remove_waiter(e, ev.cb)

    def _value_requested(self, ev: E.ValueRequested, out: list[Any]) -> None:
        e = self.table.entries.get(ev.oid)
        if e is None:
            out.append(E.Answer(ev.answer, None))
        elif not self.table.add_waiter(e, ev.answer):
            out.append(E.Answer(ev.answer, e))

    def _fetched(self, ev: E.Fetched, out: list[Any]) -> None:
        """The owner's answer for a borrowed entry: ``[kind, payload, nested, locations]``."""
        e = self.table.entries.get(ev.oid)
        if e is None:
            return
        reply = ev.reply
        if isinstance(reply, BaseException):
            # the owner cannot be reached: it died (an error reply is its own answer)
            died = isinstance(reply, ConnectionError | OSError)
            what = "died or cannot be reached" if died else "could not provide it"
            err = (OwnerDiedError if died else ObjectLostError)(
                f"object {e.oid.hex()} is lost: its owner {bytes(e.owner[0]).hex()} "
                f"(the process that created it) {what} ({reply})"
            )
            self._complete(e, ERROR, err, out)
            return
        kind, data, _nested, *rest = reply
        if kind == ERROR:
            data = load_error(data)
        if rest and rest[0]:  # the nodes holding its store copies
            e.locations = {bytes(n) for n in rest[0]}
        self._complete(e, kind, data, out)

    # --- locations ----------------------------------------------------------------------------

    def _location_added(self, ev: E.LocationAdded, out: list[Any]) -> None:
        if not ev.any_entry:
            if ev.free_if_gone and ev.oid not in self.table.entries:
                out.append(E.FreeStore(ev.oid, (bytes(ev.node_id),)))  # a copy made too late
                return
            self.table.add_location(ev.oid, ev.node_id)
            return
        e = self.table.entries.get(ev.oid)
        if e is not None:
            if e.locations is None:
                e.locations = {ev.node_id}
            else:
                e.locations.add(ev.node_id)

    def _node_gone(self, ev: E.NodeGone, out: list[Any]) -> None:
        lost = self.table.node_gone(ev.node_id)
        if ev.answer is not None:
            out.append(E.Answer(ev.answer, lost))

    def _query(self, ev: E.Query, out: list[Any]) -> None:
        out.append(E.Answer(ev.answer, ev.fn(self.table)))

    def validate(self) -> None:
        self.table.validate()
