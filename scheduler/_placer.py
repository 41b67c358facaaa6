"""The global placer: a sans-IO state machine, ``handle(event) -> list[Instruction]``.

Nodes run what they can locally and spill the rest here (see ``_spill``). The
placer keeps a near-real-time view of every node's load (``LoadReport``s sent
straight to it) and picks a node for each spilled work item: feasible first,
then the node holding the most bytes of the work's arguments when it has room,
then the least loaded (the last report plus what the placer sent there since).
``SPREAD`` round-robins over feasible nodes; ``NodeAffinity`` pins (hard) or
prefers (soft). Placement groups are reserved in two phases (prepare on every
chosen node, then commit; any failure releases what was prepared).

Work that no node can run waits, with one ``Infeasible`` warning per distinct
missing shape, and is placed when a fitting node joins. A placer that has just
taken over starts empty: it learns nodes from their next reports and holds
spilled work until then (no warning before ``warmup_s`` has passed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _placer_msgs as M
from . import _resources as R
from ._placer_pg import GroupTable
from ._placer_view import ClusterView, NodeView

__all__ = ["Placer", "PlacerConfig"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlacerConfig:
    """Tunables of the placer.

    Attributes:
        warmup_s: after start, how long to wait for reports before judging work
            infeasible or a hard-affinity node unknown (a few report periods).
        prepare_timeout_s: a placement-group prepare or commit not answered by
            then counts as failed (the group's reservations are released).
        retry_s: delay before a failed or not-yet-fitting group is tried again.
        hold_when_full: default-strategy work that no feasible node has room for
            now waits here and goes to the first node that reports room, instead
            of the least loaded node's queue (where it could not move any more).
            A node daemon's placer holds (owners keep one lease request per shape
            in flight: one parked behind a busy node would stop it asking).
    """

    warmup_s: float = 1.0
    prepare_timeout_s: float = 5.0
    retry_s: float = 0.2
    hold_when_full: bool = False

    def __post_init__(self) -> None:
        for name in ("warmup_s", "prepare_timeout_s", "retry_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


class Placer:
    """Chooses nodes for spilled work and placement groups. No I/O."""

    def __init__(self, config: PlacerConfig | None = None, *, now: float = 0.0) -> None:
        self.config = config or PlacerConfig()
        self.view = ClusterView()
        self.now = now
        self._warm_at = now + self.config.warmup_s
        self._held: dict[Hashable, M.SpillRequest] = {}  # waiting for a node or a group
        self._infeasible: dict[Hashable, M.SpillRequest] = {}  # waiting for a fitting node
        self._warned_shapes: set[tuple[tuple[str, float], ...]] = set()
        self._inflight: dict[Hashable, tuple[M.SpillRequest, Hashable]] = {}
        self._warned: set[tuple[tuple[str, float], ...]] = set()
        self._rr: list[Hashable] = []  # round-robin order for SPREAD
        self._gone: set[Hashable] = set()  # left or died: late reports must not revive them
        self._rr_pos = 0
        self.groups = GroupTable(self)
        self.decisions = 0
        self._table: dict[type, Callable[[Any], list[M.Instruction]]] = {
            M.NodeJoined: self._on_joined,
            M.NodeLeft: self._on_left,
            M.NodeDied: self._on_died,
            M.LoadReport: self._on_report,
            M.SpillRequest: self._on_spill,
            M.WorkAccepted: self._on_accepted,
            M.WorkRejected: self._on_rejected,
            M.PlacementGroupRequest: self.groups.on_request,
            M.PrepareReplied: self.groups.on_prepared,
            M.CommitReplied: self.groups.on_committed,
            M.RemovePlacementGroup: self.groups.on_remove,
            M.Tick: self._on_tick,
        }

    @property
    def warm(self) -> bool:
        """Whether the view has had time to fill (judgements of "never" allowed)."""
        return self.now >= self._warm_at

    def handle(self, *events: M.Event) -> list[M.Instruction]:
        """Feed events; return what the shell must do, in order."""
        out: list[M.Instruction] = []
        for ev in events:
            out += self._table[type(ev)](ev)
        return out

    # --- nodes ---------------------------------------------------------------------

    def _on_joined(self, ev: M.NodeJoined) -> list[M.Instruction]:
        self._gone.discard(ev.node_id)
        self._add_node(ev.node_id, ev.totals, ev.labels, None)
        return self._retry_infeasible() + self._retry_held() + self.groups.retry_pending()

    def _add_node(
        self,
        node_id: Hashable,
        totals: Mapping[str, float],
        labels: Mapping[str, str],
        available: Mapping[str, float] | None,
    ) -> NodeView:
        old = self.view.nodes.get(node_id)
        n = self.view.add(node_id, totals, labels, available)
        if old is not None:
            n.seq, n.reported = old.seq, old.reported
        else:
            self._rr.append(node_id)
        return n

    def _on_left(self, ev: M.NodeLeft) -> list[M.Instruction]:
        return self._lose_node(ev.node_id)

    def _on_died(self, ev: M.NodeDied) -> list[M.Instruction]:
        return self._lose_node(ev.node_id)

    def _lose_node(self, node_id: Hashable) -> list[M.Instruction]:
        self._gone.add(node_id)
        if self.view.remove(node_id) is None:
            return []
        self._rr = [x for x in self._rr if x != node_id]
        out = self.groups.node_lost(node_id)
        lost = [req for req, nid in self._inflight.values() if nid == node_id]
        for req in lost:
            del self._inflight[req.work_id]
        for req in lost:
            out += self._place(req)
        for req in [r for r in self._held.values() if _hard_target(r) == node_id]:
            del self._held[req.work_id]
            out.append(M.WorkFailed(req.work_id, f"node {node_id!r} (hard affinity) died"))
        return out

    def _on_report(self, ev: M.LoadReport) -> list[M.Instruction]:
        n = self.view.nodes.get(ev.node_id)
        if (n is not None and ev.seq <= n.seq) or ev.node_id in self._gone:
            return []  # stale or reordered, or sent before the node died
        out: list[M.Instruction] = []
        if n is None or (ev.totals is not None and R.normalize(ev.totals) != n.totals):
            if ev.totals is None:
                return []  # a node we do not know and cannot size: wait for NodeJoined
            labels = ev.labels if ev.labels is not None else (n.labels if n else {})
            n = self._add_node(ev.node_id, ev.totals, labels, None)
            n.seq = ev.seq
            self.view.report(n, ev.available, ev.queue_len, ev.queue_wait_s)
            out += self._retry_infeasible()
        else:
            n.seq = ev.seq
            self.view.report(n, ev.available, ev.queue_len, ev.queue_wait_s)
        if self._held or self.groups.pending:
            out += self._retry_held() + self.groups.retry_pending()
        return out

    def _on_tick(self, ev: M.Tick) -> list[M.Instruction]:
        was_warm = self.warm
        self.now = max(self.now, ev.now)
        out = self.groups.on_tick()
        if self._held:
            out += self._retry_held()
        if self.warm and not was_warm:
            out += self._retry_infeasible()  # now it may warn
        return out

    # --- work ----------------------------------------------------------------------

    def _on_spill(self, ev: M.SpillRequest) -> list[M.Instruction]:
        return self._place(ev)

    def _on_accepted(self, ev: M.WorkAccepted) -> list[M.Instruction]:
        self._inflight.pop(ev.work_id, None)
        return []

    def _on_rejected(self, ev: M.WorkRejected) -> list[M.Instruction]:
        entry = self._inflight.pop(ev.work_id, None)
        if entry is None:
            return []
        req, nid = entry
        n = self.view.nodes.get(nid)
        if n is not None:
            self.view.charge(n, req.shape, -1.0)
        return self._place(req)

    def _retry_held(self) -> list[M.Instruction]:
        held, self._held = self._held, {}
        out: list[M.Instruction] = []
        for req in held.values():
            out += self._place(req)
        return out

    def _retry_infeasible(self) -> list[M.Instruction]:
        held, self._infeasible = self._infeasible, {}
        out: list[M.Instruction] = []
        for req in held.values():
            out += self._place(req)
        return out

    def _place(self, req: M.SpillRequest) -> list[M.Instruction]:
        """Decide for one work item: place it, hold it, or fail it."""
        self.decisions += 1
        strategy = req.strategy
        if isinstance(strategy, M.NodeAffinity):
            return self._place_affinity(req, strategy)
        if isinstance(strategy, M.PlacementGroupTarget):
            return self._place_in_group(req, strategy)
        shape = req.shape
        if not self.view.feasible_classes(shape):
            return self._hold_infeasible(req)
        if strategy == M.SPREAD:
            n = self._spread(shape)
        else:
            n = self._by_locality(req) or self.view.least_loaded(shape)
            if self.config.hold_when_full and n is not None and not n.has_room(shape):
                return self._hold(req)  # until a report shows room somewhere
        assert n is not None  # a feasible class always has members
        return self._send(req, n)

    def _send(self, req: M.SpillRequest, n: NodeView) -> list[M.Instruction]:
        self.view.charge(n, req.shape)
        self._inflight[req.work_id] = (req, n.node_id)
        return [M.PlaceOn(req.work_id, n.node_id)]

    def _hold(self, req: M.SpillRequest) -> list[M.Instruction]:
        self._held[req.work_id] = req
        return []

    def _hold_infeasible(self, req: M.SpillRequest) -> list[M.Instruction]:
        self._infeasible[req.work_id] = req
        if not self.warm:
            return []
        key = tuple(sorted(req.shape.items()))
        if key in self._warned_shapes:
            return []  # judged already: skip the scan of the nodes
        self._warned_shapes.add(key)
        nodes = list(self.view)
        miss = _closest_missing(req.shape, nodes)
        return self.warn_infeasible(req.work_id, miss)

    def warn_infeasible(self, key: Hashable, miss: Mapping[str, float]) -> list[M.Instruction]:
        """One Infeasible per distinct missing shape, ever (for this placer)."""
        sig = tuple(sorted(miss.items()))
        if sig in self._warned:
            return []
        self._warned.add(sig)
        offer = self.view.largest_offer(miss)
        logger.warning(
            "work %r cannot run on any node: missing %s; the largest node offers %s",
            key,
            dict(miss),
            offer,
        )
        return [M.Infeasible(key, dict(miss), offer)]

    def _by_locality(self, req: M.SpillRequest) -> NodeView | None:
        best: NodeView | None = None
        best_bytes = 0
        for nid, size in req.arg_locations.items():
            if size > best_bytes:
                n = self.view.nodes.get(nid)
                if n is not None and n.has_room(req.shape):
                    best, best_bytes = n, size
        return best

    def _spread(self, shape: Mapping[str, float]) -> NodeView | None:
        """Next feasible node in round-robin order, preferring one with room now."""
        rr, nodes = self._rr, self.view.nodes
        count = len(rr)
        first_feasible: tuple[int, NodeView] | None = None
        for step in range(count):
            i = (self._rr_pos + step) % count
            n = nodes[rr[i]]
            if not R.fits(n.totals, shape):
                continue
            if n.has_room(shape):
                self._rr_pos = i + 1
                return n
            if first_feasible is None:
                first_feasible = (i, n)
        if first_feasible is None:
            return None
        self._rr_pos = first_feasible[0] + 1
        return first_feasible[1]

    def _place_affinity(self, req: M.SpillRequest, aff: M.NodeAffinity) -> list[M.Instruction]:
        n = self.view.nodes.get(aff.node_id)
        if aff.soft:
            if n is not None and n.has_room(req.shape):
                return self._send(req, n)
            fallback = M.SpillRequest(
                req.work_id, req.shape, M.DEFAULT, req.arg_locations, req.origin_node
            )
            return self._place(fallback)
        if n is None:
            if not self.warm:
                return self._hold(req)
            return [
                M.WorkFailed(
                    req.work_id, f"node {aff.node_id!r} (hard affinity) is dead or unknown"
                )
            ]
        if not R.fits(n.totals, req.shape):
            miss = R.missing(n.totals, req.shape)
            return [
                M.WorkFailed(req.work_id, f"node {aff.node_id!r} can never fit it: lacks {miss}")
            ]
        return self._send(req, n)

    def _place_in_group(
        self, req: M.SpillRequest, target: M.PlacementGroupTarget
    ) -> list[M.Instruction]:
        g = self.groups.get(target.pg_id)
        if g is None:
            return [
                M.WorkFailed(req.work_id, f"placement group {target.pg_id.hex()} does not exist")
            ]
        node_id = g.node_for(target.bundle_index, self.view)
        if node_id is None:
            return self._hold(req)  # not ready yet, or its bundle is being re-placed
        return self._send(req, self.view.nodes[node_id])

    def fail_group_work(self, pg_id: bytes, reason: str) -> list[M.Instruction]:
        """Fail the held work that targets a removed group."""
        out: list[M.Instruction] = []
        for req in list(self._held.values()):
            s = req.strategy
            if isinstance(s, M.PlacementGroupTarget) and s.pg_id == pg_id:
                del self._held[req.work_id]
                out.append(M.WorkFailed(req.work_id, reason))
        return out

    # --- introspection -------------------------------------------------------------

    def held(self) -> list[Hashable]:
        return [*self._held, *self._infeasible]

    def inflight(self) -> dict[Hashable, Hashable]:
        return {w: nid for w, (_, nid) in self._inflight.items()}

    def validate(self) -> None:
        """Check invariants (tests switch this on)."""
        assert not set(self._held) & set(self._inflight), "work both held and in flight"
        assert not set(self._infeasible) & set(self._inflight), "work both held and in flight"
        for _, nid in self._inflight.values():
            assert nid in self.view.nodes, f"work in flight to unknown node {nid!r}"
        assert set(self._rr) == set(self.view.nodes), "round-robin order out of sync"
        self.groups.validate()


def _hard_target(req: M.SpillRequest) -> Hashable | None:
    s = req.strategy
    return s.node_id if isinstance(s, M.NodeAffinity) and not s.soft else None


def _closest_missing(shape: Mapping[str, float], nodes: list[NodeView]) -> dict[str, float]:
    best: dict[str, float] | None = None
    for n in nodes:
        m = R.missing(n.totals, shape)
        if best is None or sum(m.values()) < sum(best.values()):
            best = m
    return best if best is not None else dict(R.normalize(shape))
