"""Placement-group bundles held by one node for a cluster-wide group: the
participant's side of the two-phase reservation. No I/O.

The group's coordinator (see ``actorcore._cluster_pg``) asks each chosen node
to *prepare* some bundles of the group: the node takes them out of its free
resources at once, or refuses when they do not fit now. A prepared bundle is
held but offers nothing: no work can use it. *Commit* offers the node's
prepared bundles of that attempt under renamed resources (the same names as a
single-node group's, see :mod:`._placement`), so work scheduled into bundle
``i`` of group ``G`` finds ``CPU_group_i_G`` on this node. *Release* gives
bundles back (prepared or committed); withdrawn offers stop the work holding
them. A prepared bundle whose coordinator is gone is released by
:meth:`BundleHolds.coordinator_gone` (a committed one stays: the group's
record says where it lives).

Methods return :class:`~._placement.ResourceChange` values that
:class:`~actorcore.scheduler.LocalScheduler` applies to its own accounting.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _resources as R
from ._placement import BUNDLE_MARKER, ResourceChange, _indexed, _wild

__all__ = ["BundleHolds", "Hold", "HoldState"]


class HoldState(enum.Enum):
    PREPARED = "PREPARED"
    COMMITTED = "COMMITTED"


@dataclass(slots=True)
class Hold:
    """One bundle of a group held by this node."""

    pg_id: bytes
    index: int
    shape: dict[str, float]
    attempt: int
    coordinator: Hashable
    state: HoldState = HoldState.PREPARED


def _offer_of(holds: Iterable[Hold]) -> dict[str, float]:
    """The renamed resources these (committed) bundles offer, all of one group."""
    offered: dict[str, float] = {}
    for h in holds:
        pg = h.pg_id.hex()
        for k, v in h.shape.items():
            offered[_indexed(k, h.index, pg)] = offered.get(_indexed(k, h.index, pg), 0.0) + v
            offered[_wild(k, pg)] = offered.get(_wild(k, pg), 0.0) + v
        offered[_indexed("bundle", h.index, pg)] = BUNDLE_MARKER
        offered[_wild("bundle", pg)] = offered.get(_wild("bundle", pg), 0.0) + BUNDLE_MARKER
    return offered


def _need(holds: Iterable[Hold]) -> dict[str, float]:
    need: dict[str, float] = {}
    for h in holds:
        R.add(need, h.shape)
    return need


def _neg(d: Mapping[str, float]) -> dict[str, float]:
    return {k: -v for k, v in d.items()}


class BundleHolds:
    """The bundles of cluster-wide groups this node prepared or committed."""

    def __init__(self) -> None:
        self.holds: dict[tuple[bytes, int], Hold] = {}

    def prepare(
        self,
        pg_id: bytes,
        attempt: int,
        bundles: Iterable[tuple[int, Mapping[str, float]]],
        available: Mapping[str, float],
        coordinator: Hashable,
    ) -> ResourceChange | None:
        """Hold ``bundles`` now if they fit in ``available``; None: refused.

        Asking again for bundles already held for the same attempt agrees
        without holding more (a retried message).

        Raises:
            ValueError: a bundle that asks for nothing or for a negative amount.
        """
        todo: list[Hold] = []
        for index, shape in bundles:
            clean = R.normalize(dict(shape))
            if not clean or any(v < 0 for v in clean.values()):
                raise ValueError(f"bad bundle {index} of group {pg_id.hex()}: {dict(shape)!r}")
            old = self.holds.get((pg_id, int(index)))
            if old is not None:
                if old.attempt == attempt:
                    continue
                return None  # held for another attempt: the coordinator must release it first
            todo.append(Hold(pg_id, int(index), clean, attempt, coordinator))
        need = _need(todo)
        if not R.fits(dict(available), need):
            return None
        for h in todo:
            self.holds[(pg_id, h.index)] = h
        return ResourceChange(pg_id, need, {})

    def commit(self, pg_id: bytes, attempt: int) -> ResourceChange | None:
        """Offer the bundles prepared for ``attempt``; None: nothing prepared for it."""
        mine = [h for h in self._of(pg_id) if h.attempt == attempt]
        if not mine:
            return None
        fresh = [h for h in mine if h.state is HoldState.PREPARED]
        for h in fresh:
            h.state = HoldState.COMMITTED
        return ResourceChange(pg_id, {}, _offer_of(fresh))

    def release(self, pg_id: bytes, indexes: Iterable[int] = ()) -> ResourceChange | None:
        """Give back bundles ``indexes`` of a group (none given: all of them)."""
        wanted = set(indexes)
        gone = [h for h in self._of(pg_id) if not wanted or h.index in wanted]
        return self._drop(pg_id, gone)

    def coordinator_gone(self, coordinator: Hashable) -> list[ResourceChange]:
        """Release the prepared (never committed) bundles ``coordinator`` asked for."""
        by_group: dict[bytes, list[Hold]] = {}
        for h in self.holds.values():
            if h.coordinator == coordinator and h.state is HoldState.PREPARED:
                by_group.setdefault(h.pg_id, []).append(h)
        out = [self._drop(pg, holds) for pg, holds in by_group.items()]
        return [c for c in out if c is not None]

    def _drop(self, pg_id: bytes, gone: list[Hold]) -> ResourceChange | None:
        if not gone:
            return None
        for h in gone:
            del self.holds[(pg_id, h.index)]
        # offers add up, so a group's wildcard offers shrink by what these held
        offer = _offer_of(h for h in gone if h.state is HoldState.COMMITTED)
        return ResourceChange(pg_id, _neg(_need(gone)), _neg(offer))

    def _of(self, pg_id: bytes) -> list[Hold]:
        return [h for (pg, _), h in self.holds.items() if pg == pg_id]

    def groups(self) -> set[bytes]:
        return {pg for pg, _ in self.holds}

    def reserved(self) -> dict[str, float]:
        """What the held bundles take out of the node's own resources."""
        return _need(self.holds.values())

    def table(self) -> list[dict[str, Any]]:
        return [
            {
                "placement_group_id": h.pg_id.hex(),
                "bundle_index": h.index,
                "state": h.state.value,
                "shape": dict(h.shape),
            }
            for h in self.holds.values()
        ]
