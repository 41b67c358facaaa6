"""Pulling objects from other nodes: the receiving node's sans-IO state machine.

A node that needs an object another node holds asks :class:`PullState` with a
:class:`PullEvent`; the state machine answers with instructions that the
node's transfer service carries out, and is told what happened through more
events. It never does I/O and reads no clock: every event carries ``now``.

Life of one pull::

    OPENING     ask up to ``open_fanout`` holders for the object's size and
                layout (each answer also pins the copy at that holder)
    ALLOCATING  the first answer gives the size: make room in the local store
    FETCHING    request chunks from every holder that answered, the least
                loaded first, within the pull's and the node's byte windows
    -> Complete (seal the local copy) or Fail (no holder left)

Several requests for one object merge into one pull (each request is a
waiter). A holder node whose requests make no progress for
``stall_timeout_s`` is disconnected and dropped from every pull; its chunks
go to the other holders, and the next known holder is asked. When no holder
is left the pull fails with the reason each holder was dropped.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ._pull_events import (
    Allocate,
    AllocatedEvent,
    AllocationFailedEvent,
    ChunkDoneEvent,
    Complete,
    Disconnect,
    Fail,
    FetchChunk,
    Holder,
    HoldersAddedEvent,
    NodeFailedEvent,
    OpenAt,
    OpenedEvent,
    OpenFailedEvent,
    PullConfig,
    PullEvent,
    ReleaseAt,
    TickEvent,
)

__all__ = [
    "Allocate",
    "AllocatedEvent",
    "AllocationFailedEvent",
    "ChunkDoneEvent",
    "Complete",
    "Disconnect",
    "Fail",
    "FetchChunk",
    "HoldersAddedEvent",
    "NodeFailedEvent",
    "OpenAt",
    "OpenFailedEvent",
    "OpenedEvent",
    "PullConfig",
    "PullEvent",
    "PullPhase",
    "PullState",
    "ReleaseAt",
    "TickEvent",
]

# --- state -------------------------------------------------------------------------------


class PullPhase(enum.Enum):
    OPENING = "opening"
    ALLOCATING = "allocating"
    FETCHING = "fetching"


class HolderPhase(enum.Enum):
    KNOWN = "known"  # not asked yet
    OPENING = "opening"  # asked for size and layout
    OPEN = "open"  # answered; chunks may be asked of it


@dataclass(slots=True)
class _Pull:
    oid: bytes
    owner: Any
    waiters: list[Any]
    phase: PullPhase = PullPhase.OPENING
    holders: dict[Holder, HolderPhase] = field(default_factory=dict)  # in preference order
    dropped: dict[Holder, str] = field(default_factory=dict)  # holder -> why
    size: int = -1
    meta: bytes = b""
    allocated: bool = False
    nchunks: int = 0
    todo: deque[int] = field(default_factory=deque)
    inflight: dict[int, Holder] = field(default_factory=dict)
    inflight_bytes: int = 0
    done: int = 0

    def using(self) -> int:
        return sum(1 for ph in self.holders.values() if ph is not HolderPhase.KNOWN)


@dataclass(slots=True)
class _Node:
    """One holder node as seen by this receiver (across all pulls)."""

    inflight_bytes: int = 0
    outstanding: int = 0  # requests (opens and chunks) not answered yet
    last_progress: float = 0.0


class PullState:
    """Every pull of one receiving node."""

    def __init__(self, config: PullConfig | None = None) -> None:
        self.config = config or PullConfig()
        self.pulls: dict[bytes, _Pull] = {}
        self.nodes: dict[Holder, _Node] = {}
        self.inflight_bytes = 0
        self._chunks: dict[tuple[bytes, int], tuple[Holder, int]] = {}  # -> holder, length
        self._fetching: deque[bytes] = deque()  # round-robin order of FETCHING pulls
        self._table: dict[type, Callable[[Any], list[Any]]] = {
            PullEvent: self._on_pull,
            HoldersAddedEvent: self._on_holders_added,
            OpenedEvent: self._on_opened,
            OpenFailedEvent: self._on_open_failed,
            AllocatedEvent: self._on_allocated,
            AllocationFailedEvent: self._on_allocation_failed,
            ChunkDoneEvent: self._on_chunk_done,
            NodeFailedEvent: self._on_node_failed,
            TickEvent: self._on_tick,
        }

    def handle(self, event: Any) -> list[Any]:
        """Apply one event; returns the instructions to carry out, in order."""
        return self._table[type(event)](event)

    # --- requests ---------------------------------------------------------------------

    def _on_pull(self, ev: PullEvent) -> list[Any]:
        p = self.pulls.get(ev.oid)
        if p is not None:
            p.waiters.append(ev.waiter)
            return self._add_holders(p, ev.holders, ev.now)
        p = _Pull(ev.oid, ev.owner, [ev.waiter])
        self.pulls[ev.oid] = p
        for h in ev.holders:
            p.holders.setdefault(h, HolderPhase.KNOWN)
        return self._open_more(p, ev.now)

    def _on_holders_added(self, ev: HoldersAddedEvent) -> list[Any]:
        p = self.pulls.get(ev.oid)
        return [] if p is None else self._add_holders(p, ev.holders, ev.now)

    def _add_holders(self, p: _Pull, holders: Iterable[Holder], now: float) -> list[Any]:
        for h in holders:
            if h not in p.dropped:
                p.holders.setdefault(h, HolderPhase.KNOWN)
        return self._open_more(p, now) + self._pump(now)

    def _open_more(self, p: _Pull, now: float) -> list[Any]:
        """Ask known holders until ``open_fanout`` are in use; fail when none is left."""
        out: list[Any] = []
        for h, phase in p.holders.items():
            if p.using() >= self.config.open_fanout:
                break
            if phase is HolderPhase.KNOWN:
                p.holders[h] = HolderPhase.OPENING
                self._asked(h, now)
                out.append(OpenAt(p.oid, h))
        if not p.using() and p.phase is not PullPhase.ALLOCATING:
            out += self._fail(p)  # (while allocating: fails once the range is there)
        return out

    # --- answers to opens and allocation ----------------------------------------------------

    def _on_opened(self, ev: OpenedEvent) -> list[Any]:
        self._answered(ev.holder, ev.now)
        p = self.pulls.get(ev.oid)
        if p is None or p.holders.get(ev.holder) is not HolderPhase.OPENING:
            return [ReleaseAt(ev.oid, ev.holder)]  # too late: the pull ended or dropped it
        if p.size >= 0 and (ev.size, ev.meta) != (p.size, p.meta):
            out: list[Any] = [ReleaseAt(ev.oid, ev.holder)]
            why = f"its copy has {ev.size} bytes, another has {p.size}"
            return out + self._drop_holder(p, ev.holder, why, ev.now) + self._pump(ev.now)
        p.holders[ev.holder] = HolderPhase.OPEN
        if p.phase is PullPhase.OPENING:
            p.size, p.meta = ev.size, ev.meta
            p.phase = PullPhase.ALLOCATING
            return [Allocate(p.oid, p.size, p.owner)]
        return self._pump(ev.now)

    def _on_open_failed(self, ev: OpenFailedEvent) -> list[Any]:
        self._answered(ev.holder, ev.now)
        p = self.pulls.get(ev.oid)
        if p is None or p.holders.get(ev.holder) is not HolderPhase.OPENING:
            return []
        return self._drop_holder(p, ev.holder, ev.reason, ev.now)

    def _on_allocated(self, ev: AllocatedEvent) -> list[Any]:
        p = self.pulls[ev.oid]
        assert p.phase is PullPhase.ALLOCATING, p.phase
        p.phase = PullPhase.FETCHING
        p.allocated = True
        step = self.config.chunk_bytes
        p.nchunks = (p.size + step - 1) // step
        p.todo = deque(range(p.nchunks))
        if not p.using():
            return self._fail(p)  # every holder went away while we made room
        if not p.nchunks:
            return self._complete(p)
        self._fetching.append(p.oid)
        return self._pump(ev.now)

    def _on_allocation_failed(self, ev: AllocationFailedEvent) -> list[Any]:
        p = self.pulls[ev.oid]
        if ev.no_room:
            return self._fail(p, f"no room in this node's object store: {ev.reason}", True)
        return self._fail(p, f"this node's object store refused it: {ev.reason}")

    # --- chunks --------------------------------------------------------------------------

    def _pump(self, now: float) -> list[Any]:
        """Request chunks, round-robin over pulls, while the windows allow."""
        out: list[Any] = []
        cfg = self.config
        progress = True
        while progress:
            progress = False
            for _ in range(len(self._fetching)):
                oid = self._fetching[0]
                self._fetching.rotate(-1)
                p = self.pulls[oid]
                if not p.todo:
                    continue
                length = min(cfg.chunk_bytes, p.size - p.todo[0] * cfg.chunk_bytes)
                if self.inflight_bytes + length > cfg.node_window:
                    return out
                if p.inflight_bytes + length > cfg.pull_window:
                    continue
                h = self._least_loaded(p, length)
                if h is None:
                    continue
                out.append(self._request_chunk(p, h, length, now))
                progress = True
        return out

    def _least_loaded(self, p: _Pull, length: int) -> Holder | None:
        """The open holder with the fewest bytes in flight that has room for ``length``."""
        best: Holder | None = None
        best_load = -1
        for h, phase in p.holders.items():
            if phase is HolderPhase.OPEN:
                load = self.nodes[h].inflight_bytes
                if load + length > self.config.holder_window:
                    continue
                if best is None or load < best_load:
                    best, best_load = h, load
        return best

    def _request_chunk(self, p: _Pull, h: Holder, length: int, now: float) -> FetchChunk:
        index = p.todo.popleft()
        p.inflight[index] = h
        p.inflight_bytes += length
        self.inflight_bytes += length
        self._asked(h, now)
        self.nodes[h].inflight_bytes += length
        self._chunks[(p.oid, index)] = (h, length)
        return FetchChunk(p.oid, h, index, index * self.config.chunk_bytes, length)

    def _on_chunk_done(self, ev: ChunkDoneEvent) -> list[Any]:
        rec = self._chunks.get((ev.oid, ev.index))
        if rec is None or rec[0] != ev.holder:
            return []  # the chunk was given to another holder meanwhile
        del self._chunks[(ev.oid, ev.index)]
        length = rec[1]
        self._answered(ev.holder, ev.now)
        self.nodes[ev.holder].inflight_bytes -= length
        self.inflight_bytes -= length
        p = self.pulls[ev.oid]
        del p.inflight[ev.index]
        p.inflight_bytes -= length
        p.done += 1
        out = self._complete(p) if p.done == p.nchunks else []
        return out + self._pump(ev.now)

    # --- holders that fail -------------------------------------------------------------

    def _on_node_failed(self, ev: NodeFailedEvent) -> list[Any]:
        return self._drop_node(ev.holder, ev.reason, ev.now)

    def _on_tick(self, ev: TickEvent) -> list[Any]:
        out: list[Any] = []
        limit = self.config.stall_timeout_s
        for h, node in list(self.nodes.items()):
            if node.outstanding and ev.now - node.last_progress > limit:
                why = f"no answer for {ev.now - node.last_progress:.1f} s"
                out.append(Disconnect(h, why))
                out += self._drop_node(h, why, ev.now)
        return out

    def _drop_node(self, h: Holder, why: str, now: float) -> list[Any]:
        """``h`` is gone for every pull: its chunks go back to the queue."""
        self.nodes.pop(h, None)
        for key, (holder, length) in list(self._chunks.items()):
            if holder == h:
                del self._chunks[key]
                self.inflight_bytes -= length
                p = self.pulls[key[0]]
                del p.inflight[key[1]]
                p.inflight_bytes -= length
                p.todo.appendleft(key[1])
        out: list[Any] = []
        for p in list(self.pulls.values()):
            if h in p.holders:
                out += self._drop_holder(p, h, why, now)
        return out + self._pump(now)

    def _drop_holder(self, p: _Pull, h: Holder, why: str, now: float) -> list[Any]:
        del p.holders[h]
        p.dropped[h] = why
        return self._open_more(p, now)

    # --- ends -------------------------------------------------------------------------------

    def _complete(self, p: _Pull) -> list[Any]:
        self._forget(p)
        out: list[Any] = [Complete(p.oid, p.size, p.meta, tuple(p.waiters))]
        return out + [ReleaseAt(p.oid, h) for h, ph in p.holders.items() if ph is HolderPhase.OPEN]

    def _fail(self, p: _Pull, why: str = "", no_room: bool = False) -> list[Any]:
        assert not p.inflight, "a pull fails only when no holder has a chunk in flight"
        self._forget(p)
        if not why:
            reasons = "; ".join(f"{h}: {r}" for h, r in p.dropped.items())
            why = f"every node holding it failed ({reasons})" if reasons else "no node holds a copy"
        reason = f"object {p.oid.hex()} could not be fetched: {why}"
        out: list[Any] = [Fail(p.oid, reason, tuple(p.waiters), p.allocated, no_room)]
        return out + [ReleaseAt(p.oid, h) for h, ph in p.holders.items() if ph is HolderPhase.OPEN]

    def _forget(self, p: _Pull) -> None:
        del self.pulls[p.oid]
        if p.oid in self._fetching:
            self._fetching.remove(p.oid)

    # --- nodes' progress -----------------------------------------------------------------

    def _asked(self, h: Holder, now: float) -> None:
        node = self.nodes.setdefault(h, _Node())
        if not node.outstanding:
            node.last_progress = now  # the stall clock starts with the first request
        node.outstanding += 1

    def _answered(self, h: Holder, now: float) -> None:
        node = self.nodes.get(h)
        if node is not None:
            node.outstanding -= 1
            node.last_progress = now

    # --- checks -------------------------------------------------------------------------

    def validate(self) -> None:
        """Check invariants (tests switch this on)."""
        per_node: dict[Holder, int] = {}
        for (oid, index), (h, length) in self._chunks.items():
            p = self.pulls[oid]
            assert p.inflight[index] == h
            assert p.holders[h] is HolderPhase.OPEN, (oid, h)
            per_node[h] = per_node.get(h, 0) + length
        for h, node in self.nodes.items():
            assert node.inflight_bytes == per_node.get(h, 0), h
            assert node.inflight_bytes <= self.config.holder_window
            assert node.outstanding >= 0
        assert self.inflight_bytes == sum(per_node.values())
        assert self.inflight_bytes <= self.config.node_window
        for p in self.pulls.values():
            assert p.inflight_bytes <= self.config.pull_window
            assert (p.phase is PullPhase.FETCHING) == (p.oid in self._fetching)
            if p.phase is PullPhase.FETCHING:
                assert set(p.todo).isdisjoint(p.inflight)
                assert p.done + len(p.todo) + len(p.inflight) == p.nchunks
            assert p.using() <= self.config.open_fanout
