"""Placement groups on one node: bundles of resources reserved together. No I/O.

A created group takes its bundles out of the node's free resources and offers
them again under renamed resources, so work scheduled into the group competes
only for what the group holds: bundle ``i`` of group ``G`` offers
``CPU_group_i_G`` (that bundle) and ``CPU_group_G`` (any bundle of the group),
plus a ``bundle_group_...`` marker so work asking for no resources can still
be pinned to a bundle. Removing a group stops the work running in it and gives
the resources back. This module decides; it returns :class:`ResourceChange`
values that :class:`~actorcore.scheduler.LocalScheduler` applies to its own
accounting (it never touches the scheduler's fields).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _resources as R

__all__ = [
    "BUNDLE_MARKER",
    "GroupInfeasible",
    "GroupState",
    "PlacementGroupReady",
    "PlacementGroups",
    "ResourceChange",
    "bundle_shape",
]

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

    def need(self) -> dict[str, float]:
        """The node's own resources the bundles take together."""
        need: dict[str, float] = {}
        for b in self.bundles:
            R.add(need, b)
        return need


@dataclass(frozen=True, slots=True)
class GroupInfeasible:
    """The group asks for more than this node has (warned once)."""

    pg_id: bytes
    missing: dict[str, float]


def _offer(g: Group) -> dict[str, float]:
    """The renamed resources a created group offers to the work placed in it."""
    pg = g.pg_id.hex()
    offered: dict[str, float] = {}
    for i, b in enumerate(g.bundles):
        for k, v in b.items():
            offered[_indexed(k, i, pg)] = offered.get(_indexed(k, i, pg), 0.0) + v
            offered[_wild(k, pg)] = offered.get(_wild(k, pg), 0.0) + v
        offered[_indexed("bundle", i, pg)] = BUNDLE_MARKER
    offered[_wild("bundle", pg)] = BUNDLE_MARKER * len(g.bundles)
    return offered


@dataclass(frozen=True, slots=True)
class ResourceChange:
    """What a placement group does to the node's resources; the scheduler applies it.

    ``available -= reserve``; ``total += offer``; ``available += offer``. A group
    being created reserves its bundles and offers them under renamed resources;
    a group being removed gives them back (both fields negated). Before
    resources are withdrawn (``offer`` negative), work holding any of them is
    stopped.
    """

    pg_id: bytes
    reserve: dict[str, float]
    offer: dict[str, float]

    @property
    def withdraws(self) -> bool:
        return any(v < 0 for v in self.offer.values())


class PlacementGroups:
    """The placement groups of one node: decides, and returns resource changes."""

    def __init__(self) -> None:
        self.groups: dict[bytes, Group] = {}

    def create(
        self, pg_id: bytes, bundles: list[dict[str, float]], strategy: str, name: str
    ) -> None:
        """Add a pending group (reserved by :meth:`reserve` once it fits).

        Raises:
            ValueError: for a bad strategy, no bundles, an empty bundle or a known id.
        """
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

    def reserve(
        self, total: Mapping[str, float], available: Mapping[str, float]
    ) -> list[ResourceChange | PlacementGroupReady | GroupInfeasible]:
        """Reserve every pending group that fits now (in creation order)."""
        free = dict(available)
        out: list[ResourceChange | PlacementGroupReady | GroupInfeasible] = []
        for g in self.groups.values():
            if g.state is not GroupState.PENDING:
                continue
            need = g.need()
            miss = R.missing(total, need)
            if g.strategy == "STRICT_SPREAD" and len(g.bundles) > 1:
                miss = {"nodes": float(len(g.bundles) - 1)}
            if miss:
                if not g.warned:
                    g.warned = True
                    out.append(GroupInfeasible(g.pg_id, miss))
                continue
            if not R.fits(free, need):
                continue
            R.subtract(free, need)
            g.offered = _offer(g)
            g.state = GroupState.CREATED
            out += [ResourceChange(g.pg_id, need, dict(g.offered)), PlacementGroupReady(g.pg_id)]
        return out

    def remove(self, pg_id: bytes) -> ResourceChange | None:
        """End a group; the change gives its resources back (None: nothing held)."""
        g = self.groups.pop(pg_id, None)
        if g is None:
            return None
        was = g.state
        g.state = GroupState.REMOVED
        if was is not GroupState.CREATED:
            return None
        need = g.need()
        return ResourceChange(
            pg_id, {k: -v for k, v in need.items()}, {k: -v for k, v in g.offered.items()}
        )

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
