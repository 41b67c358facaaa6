"""Placement groups across nodes, inside the placer: two-phase reservation. No I/O.

A group moves PENDING -> PREPARING -> COMMITTING -> READY. Preparing asks
every chosen node to reserve its bundles; when all agree, each is told to
commit. A refusal, a timeout or the death of a chosen node aborts the attempt:
every node that may hold a reservation of it is told to release it, and the
group goes back to PENDING and is tried again (after ``retry_s``, or at once
when a node died). Bundles of a READY group lost with their node are reported
(``BundlesLost``) and placed again the same way, the others staying put.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _placer_msgs as M
from . import _resources as R
from ._placer_groups import assign, infeasible
from ._placer_view import ClusterView

if TYPE_CHECKING:
    from ._placer import Placer

__all__ = ["Group", "GroupState", "GroupTable"]

logger = logging.getLogger(__name__)


class GroupState(enum.Enum):
    PENDING = "PENDING"
    PREPARING = "PREPARING"
    COMMITTING = "COMMITTING"
    READY = "READY"


_NEXT: dict[GroupState, tuple[GroupState, ...]] = {
    GroupState.PENDING: (GroupState.PREPARING,),
    GroupState.PREPARING: (GroupState.COMMITTING, GroupState.PENDING),
    GroupState.COMMITTING: (GroupState.READY, GroupState.PENDING),
    GroupState.READY: (GroupState.PENDING,),
}


@dataclass(slots=True)
class Group:
    pg_id: bytes
    bundles: tuple[dict[str, float], ...]
    strategy: str
    state: GroupState = GroupState.PENDING
    placement: dict[int, Hashable] = field(default_factory=dict)  # committed bundles
    proposed: dict[int, Hashable] = field(default_factory=dict)  # this attempt's bundles
    attempt: int = 0
    asked: set[Hashable] = field(default_factory=set)
    replied: set[Hashable] = field(default_factory=set)
    deadline: float = 0.0
    retry_at: float = 0.0

    def set_state(self, new: GroupState) -> None:
        if new not in _NEXT[self.state]:
            raise AssertionError(f"group {self.pg_id.hex()}: {self.state} -> {new} is illegal")
        self.state = new

    def node_for(self, index: int, view: ClusterView) -> Hashable | None:
        """Where work for bundle ``index`` (-1: any) goes now; None: not placed."""
        if self.state is not GroupState.READY and not self.placement:
            return None
        if index >= 0:
            return self.placement.get(index)
        nodes = [view.nodes[n] for n in set(self.placement.values()) if n in view.nodes]
        if not nodes:
            return None
        return min(nodes, key=lambda n: (n.score, n.ordinal)).node_id

    def indexes_on(self, bundles: Mapping[int, Hashable], node_id: Hashable) -> tuple[int, ...]:
        return tuple(sorted(i for i, n in bundles.items() if n == node_id))


class GroupTable:
    """Every placement group the placer is reserving or holds."""

    def __init__(self, placer: Placer) -> None:
        self.placer = placer
        self.groups: dict[bytes, Group] = {}
        self.pending: set[bytes] = set()

    def get(self, pg_id: bytes) -> Group | None:
        return self.groups.get(pg_id)

    def on_request(self, ev: M.PlacementGroupRequest) -> list[M.Instruction]:
        if ev.pg_id in self.groups:
            return []
        if ev.strategy not in M.PG_STRATEGIES:
            return [M.PlacementGroupFailed(ev.pg_id, f"unknown strategy {ev.strategy!r}")]
        try:
            bundles = tuple(R.normalize(b) for b in ev.bundles)
        except (TypeError, ValueError) as e:
            return [M.PlacementGroupFailed(ev.pg_id, str(e))]
        if not bundles or any(not b for b in bundles):
            return [M.PlacementGroupFailed(ev.pg_id, "every bundle must ask for some resource")]
        g = self.groups[ev.pg_id] = Group(ev.pg_id, bundles, ev.strategy)
        self.pending.add(g.pg_id)
        return self._try(g)

    def adopt(
        self,
        pg_id: bytes,
        bundles: tuple[Mapping[str, float], ...],
        strategy: str,
        placement: Mapping[int, Hashable],
    ) -> list[M.Instruction]:
        """Take over a group another placer reserved (it died): its bundles on live
        nodes stay where they are, the others are placed again."""
        if pg_id in self.groups:
            return []
        g = Group(pg_id, tuple(R.normalize(b) for b in bundles), strategy)
        g.placement = {i: n for i, n in placement.items() if n in self.placer.view.nodes}
        self.groups[pg_id] = g
        if len(g.placement) == len(g.bundles):
            g.state = GroupState.READY  # adopted as it is: not a transition of this placer
            placed = tuple(g.placement[i] for i in range(len(g.bundles)))
            return [M.PlacementGroupReady(pg_id, placed)]
        self.pending.add(pg_id)
        return self._try(g)

    def _try(self, g: Group) -> list[M.Instruction]:
        """Start an attempt if the bundles not yet placed fit somewhere now."""
        p = self.placer
        todo = [(i, b) for i, b in enumerate(g.bundles) if i not in g.placement]
        nodes = list(p.view)
        chosen = assign(g.strategy, todo, g.placement, nodes) if nodes else None
        if chosen is None:
            miss = infeasible(g.strategy, todo, g.placement, nodes) if nodes else dict(todo[0][1])
            if miss and p.warm:
                return p.warn_infeasible(g.pg_id, miss)
            return []
        g.set_state(GroupState.PREPARING)
        self.pending.discard(g.pg_id)
        g.attempt += 1
        g.proposed = chosen
        g.asked = set(chosen.values())
        g.replied = set()
        g.deadline = p.now + p.config.prepare_timeout_s
        out: list[M.Instruction] = []
        for nid in sorted(g.asked, key=repr):
            idx = g.indexes_on(chosen, nid)
            for i in idx:
                p.view.charge(p.view.nodes[nid], g.bundles[i])
            out.append(M.Prepare(nid, g.pg_id, g.attempt, tuple((i, g.bundles[i]) for i in idx)))
        out.append(M.RetryAt(g.deadline))
        return out

    def on_prepared(self, ev: M.PrepareReplied) -> list[M.Instruction]:
        g = self._current(ev.pg_id, ev.attempt, ev.node_id, GroupState.PREPARING)
        if g is None:
            return []
        if not ev.ok:
            return self._abort(g, {ev.node_id}, f"node {ev.node_id!r} refused to prepare")
        g.replied.add(ev.node_id)
        if g.replied != g.asked:
            return []
        g.set_state(GroupState.COMMITTING)
        g.replied = set()
        g.deadline = self.placer.now + self.placer.config.prepare_timeout_s
        out: list[M.Instruction] = [
            M.Commit(nid, g.pg_id, g.attempt) for nid in sorted(g.asked, key=repr)
        ]
        return [*out, M.RetryAt(g.deadline)]

    def on_committed(self, ev: M.CommitReplied) -> list[M.Instruction]:
        g = self._current(ev.pg_id, ev.attempt, ev.node_id, GroupState.COMMITTING)
        if g is None:
            return []
        if not ev.ok:
            return self._abort(g, set(), f"node {ev.node_id!r} refused to commit")
        g.replied.add(ev.node_id)
        if g.replied != g.asked:
            return []
        g.placement.update(g.proposed)
        g.proposed, g.asked, g.replied = {}, set(), set()
        g.set_state(GroupState.READY)
        placement = tuple(g.placement[i] for i in range(len(g.bundles)))
        return [M.PlacementGroupReady(g.pg_id, placement), *self.placer._retry_held()]

    def _current(
        self, pg_id: bytes, attempt: int, node_id: Hashable, state: GroupState
    ) -> Group | None:
        g = self.groups.get(pg_id)
        if g is None or g.state is not state or g.attempt != attempt or node_id not in g.asked:
            return None  # a late reply to an attempt that is over
        return g

    def _abort(self, g: Group, refused: set[Hashable], reason: str) -> list[M.Instruction]:
        """End the attempt: release every reservation it may have made; retry later."""
        logger.info("placement group %s: attempt %d aborted: %s", g.pg_id.hex(), g.attempt, reason)
        out: list[M.Instruction] = [
            M.Release(nid, g.pg_id, g.indexes_on(g.proposed, nid))
            for nid in sorted(g.asked - refused, key=repr)
            if nid in self.placer.view.nodes
        ]
        g.proposed, g.asked, g.replied = {}, set(), set()
        g.set_state(GroupState.PENDING)
        self.pending.add(g.pg_id)
        g.retry_at = self.placer.now + self.placer.config.retry_s
        out.append(M.RetryAt(g.retry_at))
        return out

    def retry_pending(self) -> list[M.Instruction]:
        out: list[M.Instruction] = []
        now = self.placer.now
        for pg_id in sorted(self.pending):
            g = self.groups[pg_id]
            if g.retry_at <= now:
                out += self._try(g)
        return out

    def on_tick(self) -> list[M.Instruction]:
        now = self.placer.now
        out: list[M.Instruction] = []
        for g in list(self.groups.values()):
            busy = g.state in (GroupState.PREPARING, GroupState.COMMITTING)
            if busy and g.deadline <= now:
                out += self._abort(
                    g, set(), f"no answer within {self.placer.config.prepare_timeout_s} s"
                )
        return out + self.retry_pending()

    def on_remove(self, ev: M.RemovePlacementGroup) -> list[M.Instruction]:
        g = self.groups.pop(ev.pg_id, None)
        if g is None:
            return []
        self.pending.discard(g.pg_id)
        out: list[M.Instruction] = []
        held = {**g.proposed, **g.placement}
        for nid in sorted(set(held.values()), key=repr):
            if nid in self.placer.view.nodes:
                out.append(M.Release(nid, g.pg_id, g.indexes_on(held, nid)))
        if g.state is not GroupState.READY:
            out.append(M.PlacementGroupFailed(g.pg_id, "removed before it was ready"))
        return out + self.placer.fail_group_work(g.pg_id, "placement group was removed")

    def node_lost(self, node_id: Hashable) -> list[M.Instruction]:
        out: list[M.Instruction] = []
        for g in list(self.groups.values()):
            lost = g.indexes_on(g.placement, node_id)
            busy = g.state in (GroupState.PREPARING, GroupState.COMMITTING)
            if not lost and not (busy and node_id in g.asked):
                continue
            if busy:
                out += self._abort(g, {node_id}, f"node {node_id!r} died")
            if lost:
                for i in lost:
                    del g.placement[i]
                out.append(M.BundlesLost(g.pg_id, node_id, lost))
                if g.state is GroupState.READY:
                    g.set_state(GroupState.PENDING)
                    self.pending.add(g.pg_id)
            g.retry_at = self.placer.now  # another node may take them right away
            out += self._try(g)
        return out

    def validate(self) -> None:
        for pg_id in self.pending:
            assert self.groups[pg_id].state is GroupState.PENDING, pg_id
        for g in self.groups.values():
            for nid in g.placement.values():
                assert nid in self.placer.view.nodes, f"bundle on unknown node {nid!r}"
            if g.state is GroupState.READY:
                assert len(g.placement) == len(g.bundles)
