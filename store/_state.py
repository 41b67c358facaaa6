"""The object store's accounting: a synchronous state machine, no I/O.

It decides where an object's bytes go in the arena, who pins them, when they
may be freed, what to spill when the arena is full, and what to restore on
access. The node daemon carries out the I/O it asks for (writing and reading
spill files) and reports back.

Object life: CREATED (a writer holds the range) -> SEALED (readable) ->
SPILLING -> SPILLED -> RESTORING -> SEALED ...; FREED once the owner let go and
no reader pins it. A reader pins an object while any view into its range is
alive; a pinned object is never freed, spilled or moved, so no reader ever
sees another object's bytes.

A reader asking for an object still being written (or being restored) waits:
:meth:`StoreState.wait_sealed` records it, and :meth:`StoreState.handle`
returns :class:`WakeReaders` when the wait ends, with an error when it ends
because the writer died or the object was freed before it was sealed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from ._allocator import ArenaAllocator
from ._entry import _LEGAL, Entry, ObjectState
from ._results import (
    ClientGone,
    Created,
    DeleteFile,
    Free,
    Full,
    Location,
    NeedRestore,
    NeedSpill,
    Refused,
    RestoreDone,
    RevokePins,
    Seal,
    StoreEvent,
    StoreInstruction,
    StoreStats,
    Unknown,
    WakeReaders,
)

__all__ = ["ObjectState", "StoreState"]


class StoreState:
    """Accounting of one node's object store."""

    def __init__(self, capacity: int) -> None:
        self.alloc = ArenaAllocator(capacity)
        self.capacity = self.alloc.capacity
        self.entries: dict[bytes, Entry] = {}
        self._clock = itertools.count(1)
        self.spill_count = 0
        self.restore_count = 0
        self.waiters: dict[bytes, list[Any]] = {}  # readers waiting for a seal or restore

    # --- events -----------------------------------------------------------------------

    def handle(self, event: StoreEvent) -> list[StoreInstruction]:
        """Apply one event; returns what the daemon must carry out."""
        if isinstance(event, Seal):
            return self._on_seal(event)
        if isinstance(event, Free):
            return self._on_free(event)
        if isinstance(event, ClientGone):
            return self._on_client_gone(event.client)
        if isinstance(event, RestoreDone):
            return _files([self.restore_done(event.oid, event.ok)]) + self._wake(event.oid)
        e = self.entries.get(event.oid)
        if e is not None and e.state is ObjectState.CREATED and e.creator != event.writer:
            return [Refused(event.writer, f"object {event.oid.hex()} is not yours to abort")]
        self.abort(event.oid)
        return self._wake(event.oid, "its writer gave up on it before sealing it")

    def wait_sealed(self, oid: bytes, waiter: Any) -> bool:
        """Make ``waiter`` wait until ``oid`` is sealed or restored; False if it need not."""
        e = self.entries.get(oid)
        if e is None or e.freed or e.state not in (ObjectState.CREATED, ObjectState.RESTORING):
            return False
        self.waiters.setdefault(oid, []).append(waiter)
        return True

    def _wake(self, oid: bytes, error: str | None = None) -> list[StoreInstruction]:
        e = self.entries.get(oid)
        if e is not None and e.state in (ObjectState.CREATED, ObjectState.RESTORING):
            if not e.freed:
                return []  # still coming
        waiters = self.waiters.pop(oid, None)
        if not waiters:
            return []
        if e is not None and e.state is not ObjectState.CREATED:
            error = None  # readable (or spilled again): look again
        return [WakeReaders(oid, tuple(waiters), error)]

    def _on_seal(self, ev: Seal) -> list[StoreInstruction]:
        e = self.entries.get(ev.oid)
        if e is None:
            return []
        if e.state is not ObjectState.CREATED or e.creator != ev.writer:
            return [Refused(ev.writer, f"object {ev.oid.hex()} is not yours to seal")]
        self.seal(ev.oid, ev.meta)
        return self._wake(ev.oid)

    def _on_free(self, ev: Free) -> list[StoreInstruction]:
        out: list[StoreInstruction] = []
        refused: list[bytes] = []
        for oid in ev.oids:
            e = self.entries.get(oid)
            if e is None:
                continue
            if e.owner != ev.by:
                refused.append(oid)
                continue
            out += _files([self.free(oid)])
            out += self._wake(oid, "it was freed before it was sealed")
            left = self.entries.get(oid)
            if left is not None and left.pins:  # read caches let go; live views keep it
                out += [RevokePins(c, (oid,)) for c in left.pins]
        if refused:
            names = ", ".join(oid.hex() for oid in refused[:5])
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            out.append(
                Refused(
                    ev.by,
                    f"only an object's owner may free it: {names}{more} not freed "
                    f"(owned by another process)",
                )
            )
        return out

    def _on_client_gone(self, client: Any) -> list[StoreInstruction]:
        writing = [
            oid
            for oid in self.waiters
            if (e := self.entries.get(oid)) is not None
            and e.state is ObjectState.CREATED
            and e.creator == client
        ]
        owned = [e.oid for e in self.entries.values() if e.owner == client and not e.freed]
        out: list[StoreInstruction] = _files(self.client_gone(client))
        why = "the process writing it died before sealing it"
        for oid in writing:
            out += self._wake(oid, why)
        for oid in [o for o in self.waiters if o not in self.entries]:
            out += self._wake(oid, "its owner's process exited")
        # freed with their owner: read caches let go of them too, as after a Free
        # (cached_pins() skips freed objects, so no later revocation would ask)
        revoke: dict[Any, list[bytes]] = {}
        for oid in owned:
            left = self.entries.get(oid)
            if left is not None and left.pins:
                for c in left.pins:
                    revoke.setdefault(c, []).append(oid)
        out += [RevokePins(c, tuple(oids)) for c, oids in revoke.items()]
        return out

    # --- state changes ----------------------------------------------------------------

    def _set_state(self, e: Entry, new: ObjectState) -> None:
        if new not in _LEGAL[e.state]:
            raise AssertionError(f"object {e.oid.hex()}: illegal {e.state.name} -> {new.name}")
        e.state = new

    def _touch(self, e: Entry) -> None:
        e.last_access = next(self._clock)

    # --- writers ------------------------------------------------------------------------

    def create(self, oid: bytes, size: int, creator: Any, owner: Any) -> Created | NeedSpill | Full:
        old = self.entries.get(oid)
        if old is not None:
            # A retried task writes its return value again: the copy a dead worker
            # sealed was never handed to the owner, so nobody reads it. Replace it.
            if (
                old.owner != owner
                or old.pins
                or old.state
                not in (
                    ObjectState.SEALED,
                    ObjectState.SPILLED,
                )
            ):
                raise ValueError(f"object {oid.hex()} already exists in the store")
            self._drop(old)
        if not self.alloc.fits_ever(size):
            return Full(
                f"an object of {size} bytes is larger than the whole object store "
                f"({self.capacity} bytes); raise object_store_memory"
            )
        offset = self.alloc.allocate(size)
        if offset is None:
            victims = self._spill_candidates(size)
            if victims:
                return NeedSpill(victims)
            st = self.alloc.stats()
            return Full(
                f"no room for an object of {size} bytes: {st.used} of {self.capacity} bytes "
                f"in use, largest free range {st.largest_free} bytes, and nothing left to "
                f"spill (every object is pinned by a reader or being written)"
            )
        e = Entry(oid, size, owner, creator, offset=offset)
        self._touch(e)
        self.entries[oid] = e
        return Created(offset)

    def seal(self, oid: bytes, meta: bytes) -> bool:
        """Make a written object readable; False if it was freed meanwhile (and is gone)."""
        e = self.entries[oid]
        e.meta = meta
        self._set_state(e, ObjectState.SEALED)
        if e.freed:
            self._maybe_drop(e)
            return False
        return True

    def abort(self, oid: bytes) -> None:
        """Forget an object that was never sealed; its range is free again."""
        e = self.entries.get(oid)
        if e is not None and e.state is ObjectState.CREATED:
            self._drop(e)

    # --- readers ------------------------------------------------------------------------

    def open(self, oid: bytes, client: Any) -> Location | NeedRestore | Unknown:
        e = self.entries.get(oid)
        if e is None or e.state is ObjectState.CREATED or e.freed:
            return Unknown(oid)
        if e.state in (ObjectState.SPILLED, ObjectState.RESTORING):
            return NeedRestore(oid)
        # SEALED or SPILLING: the bytes are still in memory; a pin cancels the spill.
        assert e.offset is not None
        e.pins[client] = e.pins.get(client, 0) + 1
        self._touch(e)
        return Location(e.offset, e.size, e.meta)

    def release(self, oid: bytes, client: Any, count: int = 1) -> None:
        e = self.entries.get(oid)
        if e is None:
            return
        left = e.pins.get(client, 0) - count
        if left > 0:
            e.pins[client] = left
        else:
            e.pins.pop(client, None)
            self._maybe_drop(e)

    # --- owners ------------------------------------------------------------------------

    def free(self, oid: bytes) -> str | None:
        """The owner let go. Returns a spill file path to delete, if any."""
        e = self.entries.get(oid)
        if e is None:
            return None
        e.freed = True
        path = e.spill_path if e.state is ObjectState.SPILLED else None
        self._maybe_drop(e)
        return path

    def client_gone(self, client: Any) -> list[str]:
        """A process ended: drop its pins, its unsealed objects and the objects it owned.

        Returns spill file paths to delete.
        """
        paths: list[str] = []
        for e in list(self.entries.values()):
            if e.pins.pop(client, None) is not None:
                self._maybe_drop(e)
            if e.oid not in self.entries:
                continue
            if e.state is ObjectState.CREATED and e.creator == client:
                self._drop(e)
            elif e.owner == client:
                path = self.free(e.oid)
                if path:
                    paths.append(path)
        return paths

    # --- spilling -------------------------------------------------------------------------

    def cached_pins(self) -> dict[Any, list[bytes]]:
        """Pinned objects in memory, by client: what read caches may be holding."""
        out: dict[Any, list[bytes]] = {}
        for e in self.entries.values():
            if e.pins and not e.freed and e.state is ObjectState.SEALED:
                for client in e.pins:
                    out.setdefault(client, []).append(e.oid)
        return out

    def _spill_candidates(self, need: int) -> list[bytes]:
        movable = [
            e
            for e in self.entries.values()
            if e.state is ObjectState.SEALED and not e.pins and not e.freed
        ]
        movable.sort(key=lambda e: (e.primary, e.last_access))  # secondary copies first, LRU
        out: list[bytes] = []
        got = 0
        for e in movable:
            out.append(e.oid)
            got += e.size
            if got >= need:
                break
        return out

    def begin_spill(self, oid: bytes) -> tuple[int, int] | None:
        """Start spilling; returns ``(offset, size)`` to write out, or None to skip."""
        e = self.entries.get(oid)
        if e is None or e.state is not ObjectState.SEALED or e.pins or e.freed:
            return None
        self._set_state(e, ObjectState.SPILLING)
        assert e.offset is not None
        return e.offset, e.size

    def spill_done(self, oid: bytes, path: str | None) -> str | None:
        """The bytes are on disk at ``path`` (None: the write failed).

        Returns a path to delete when the spill turned out useless.
        """
        e = self.entries.get(oid)
        if e is None:
            return path
        if path is None or e.pins or e.freed:
            # failed, or a reader arrived meanwhile: keep it in memory
            self._set_state(e, ObjectState.SEALED)
            self._maybe_drop(e)
            return path
        assert e.offset is not None
        self.alloc.free(e.offset)
        e.offset = None
        e.spill_path = path
        self._set_state(e, ObjectState.SPILLED)
        self.spill_count += 1
        return None

    def begin_restore(self, oid: bytes) -> Created | NeedSpill | Full | None:
        """Find room to bring a spilled object back; None if it is not spilled."""
        e = self.entries.get(oid)
        if e is None or e.state is not ObjectState.SPILLED:
            return None
        offset = self.alloc.allocate(e.size)
        if offset is None:
            victims = [v for v in self._spill_candidates(e.size) if v != oid]
            if victims:
                return NeedSpill(victims)
            st = self.alloc.stats()
            return Full(
                f"no room to restore a spilled object of {e.size} bytes: {st.used} of "
                f"{self.capacity} bytes in use, largest free range {st.largest_free} bytes, "
                f"and every object in memory is pinned by a reader"
            )
        e.offset = offset
        self._set_state(e, ObjectState.RESTORING)
        return Created(offset)

    def restore_done(self, oid: bytes, ok: bool) -> str | None:
        """The bytes were read back (or not). Returns the spill file to delete."""
        e = self.entries.get(oid)
        if e is None or e.state is not ObjectState.RESTORING:
            return None
        assert e.offset is not None
        if not ok:
            self.alloc.free(e.offset)
            e.offset = None
            self._set_state(e, ObjectState.SPILLED)
            if e.freed and not e.pins:  # freed while we tried: nobody needs the file
                path = e.spill_path
                self._drop(e)
                return path
            return None
        self._set_state(e, ObjectState.SEALED)
        self.restore_count += 1
        path, e.spill_path = e.spill_path, None
        self._maybe_drop(e)
        return path

    # --- dropping -------------------------------------------------------------------------

    def _maybe_drop(self, e: Entry) -> None:
        if not e.freed or e.pins:
            return
        if e.state in (ObjectState.SEALED, ObjectState.SPILLED):
            self._drop(e)
        # CREATED / SPILLING / RESTORING: dropped when that step ends

    def _drop(self, e: Entry) -> None:
        if e.offset is not None:
            self.alloc.free(e.offset)
            e.offset = None
        self.entries.pop(e.oid, None)

    # --- views ------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        entries = self.entries.values()
        spilled = [e for e in entries if e.state is ObjectState.SPILLED]
        return StoreStats(
            capacity=self.capacity,
            used=self.alloc.used_bytes,
            objects=len(self.entries),
            sealed=sum(1 for e in entries if e.state is ObjectState.SEALED),
            spilled=len(spilled),
            spilled_bytes=sum(e.size for e in spilled),
            pinned=sum(1 for e in entries if e.pins),
            spill_count=self.spill_count,
            restore_count=self.restore_count,
        )

    def listing(self) -> list[dict[str, Any]]:
        return [
            {
                "object_id": e.oid.hex(),
                "size": e.size,
                "state": e.state.value,
                "owner": e.owner,
                "pins": sum(e.pins.values()),
                "spilled": e.state is ObjectState.SPILLED,
            }
            for e in self.entries.values()
        ]

    def validate(self) -> None:
        self.alloc.validate()
        in_memory = sum(1 for e in self.entries.values() if e.offset is not None)
        assert in_memory == self.alloc.stats().blocks, "allocated ranges != objects in memory"
        for e in self.entries.values():
            assert (e.offset is None) == (e.state is ObjectState.SPILLED), e


def _files(paths: Sequence[str | None]) -> list[StoreInstruction]:
    return [DeleteFile(p) for p in paths if p]
