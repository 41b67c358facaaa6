"""Placement groups on one node: bundles of resources reserved together. No I/O.

A created group takes its bundles out of the node's free resources and offers
them again under renamed resources, so work scheduled into the group competes
only for what the group holds: bundle ``i`` of group ``G`` offers
``CPU_group_i_G`` (that bundle) and ``CPU_group_G`` (any bundle of the group),
plus a ``bundle_group_...`` marker so work asking for no resources can still
be pinned to a bundle. Removing a group stops the work running in it and gives
the resources back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _resources as R

if TYPE_CHECKING:
    from ._local import LocalScheduler

__all__ = ["BUNDLE_MARKER", "GroupState", "PlacementGroupReady", "PlacementGroups", "bundle_shape"]

BUNDLE_MARKER = 1000.0
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def _wild(key: str, pg: str) -> str:
    return f"{key}_group_{pg}"


def _indexed(key: str, index: int, pg: str) -> str:
    return f"{key}_group_{index}_{pg}"


def bundle_shape(shape: dict[str, float], pg_hex: str, index: int) -> dict[str, float]:
    """The resource request of work placed into bundle ``index`` (-1: any bundle)."""
    if index < 0:
        out = {_wild(k, pg_hex): v for k, v in shape.items()}
        out[_wild("bundle", pg_hex)] = 0.001
    else:
        out = {_indexed(k, index, pg_hex): v for k, v in shape.items()}
        out[_indexed("bundle", index, pg_hex)] = 0.001
    return out


class GroupState(enum.Enum):
    PENDING = "PENDING"
    CREATED = "CREATED"
    REMOVED = "REMOVED"


@dataclass(frozen=True, slots=True)
class PlacementGroupReady:
    pg_id: bytes


@dataclass(slots=True)
class Group:
    pg_id: bytes
    bundles: list[dict[str, float]]
    strategy: str
    name: str
    state: GroupState = GroupState.PENDING
    offered: dict[str, float] = field(default_factory=dict)  # renamed resources
    warned: bool = False


class PlacementGroups:
    """The placement groups of one node, kept inside its LocalScheduler."""

    def __init__(self, sched: LocalScheduler) -> None:
        self.sched = sched
        self.groups: dict[bytes, Group] = {}

    def create(
        self, pg_id: bytes, bundles: list[dict[str, float]], strategy: str, name: str
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        if not bundles:
            raise ValueError("a placement group needs at least one bundle")
        clean = [R.normalize(b) for b in bundles]
        if any(not b for b in clean):
            raise ValueError("every bundle must ask for some resource")
        if pg_id in self.groups:
            raise ValueError(f"placement group {pg_id.hex()} exists already")
        self.groups[pg_id] = Group(pg_id, clean, strategy, name)

    def reserve(self, out: list[Any]) -> None:
        """Reserve every pending group that fits now (in creation order)."""
        from ._local import Infeasible

        s = self.sched
        for g in self.groups.values():
            if g.state is not GroupState.PENDING:
                continue
            need: dict[str, float] = {}
            for b in g.bundles:
                R.add(need, b)
            miss = R.missing(s.total, need)
            if g.strategy == "STRICT_SPREAD" and len(g.bundles) > 1:
                miss = {"nodes": float(len(g.bundles) - 1)}
            if miss:
                if not g.warned:
                    g.warned = True
                    out.append(Infeasible(g.pg_id, miss))
                continue
            if not R.fits(s.available, need):
                continue
            R.subtract(s.available, need)
            pg = g.pg_id.hex()
            offered: dict[str, float] = {}
            for i, b in enumerate(g.bundles):
                for k, v in b.items():
                    offered[_indexed(k, i, pg)] = offered.get(_indexed(k, i, pg), 0.0) + v
                    offered[_wild(k, pg)] = offered.get(_wild(k, pg), 0.0) + v
                offered[_indexed("bundle", i, pg)] = BUNDLE_MARKER
            offered[_wild("bundle", pg)] = BUNDLE_MARKER * len(g.bundles)
            R.add(s.total, offered)
            R.add(s.available, offered)
            g.offered = offered
            g.state = GroupState.CREATED
            out.append(PlacementGroupReady(g.pg_id))

    def remove(self, pg_id: bytes) -> list[Any]:
        """End a group: stop the work in it, give its resources back."""
        from ._local import StopWorker, WorkerRole

        g = self.groups.pop(pg_id, None)
        if g is None:
            return []
        s = self.sched
        out: list[Any] = []
        if g.state is GroupState.CREATED:
            for w in list(s.workers.values()):
                if w.role in (WorkerRole.LEASED, WorkerRole.DEDICATED) and any(
                    k in g.offered for k in w.shape
                ):
                    # give its share back now; its death (which follows) reports its actors
                    s._release(w)
                    out.append(StopWorker(w.worker_id))
            for k, v in g.offered.items():
                s.total[k] = s.total.get(k, 0.0) - v
                s.available[k] = s.available.get(k, 0.0) - v
                if abs(s.total[k]) < 1e-9:
                    del s.total[k]
                    s.available.pop(k, None)
            for b in g.bundles:
                R.add(s.available, b)
        g.state = GroupState.REMOVED
        return out

    def reserved(self) -> dict[str, float]:
        """What created groups hold out of the node's own resources."""
        out: dict[str, float] = {}
        for g in self.groups.values():
            if g.state is GroupState.CREATED:
                for b in g.bundles:
                    R.add(out, b)
        return out

    def state(self, pg_id: bytes) -> GroupState | None:
        g = self.groups.get(pg_id)
        return g.state if g is not None else None

    def by_name(self, name: str) -> Group | None:
        for g in self.groups.values():
            if g.name == name:
                return g
        return None

    def table(self) -> list[dict[str, Any]]:
        return [
            {
                "placement_group_id": g.pg_id.hex(),
                "name": g.name,
                "strategy": g.strategy,
                "state": g.state.value,
                "bundles": {i: b for i, b in enumerate(g.bundles)},
            }
            for g in self.groups.values()
        ]
