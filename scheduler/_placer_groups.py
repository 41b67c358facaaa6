"""Choosing nodes for placement-group bundles: pure functions, no I/O, no state.

``assign`` answers "where would these bundles go now" from the nodes' free
resources; ``infeasible`` answers "could they ever go anywhere" from the nodes'
totals, and says what is missing. Both are greedy (largest bundle first, least
loaded node first), which is what Ray's bundle scheduling does too; a greedy
STRICT_SPREAD can miss a matching that exists when bundle shapes differ a lot.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

from . import _resources as R
from ._placer_view import NodeView

__all__ = ["assign", "infeasible"]

Bundles = Sequence[tuple[int, Mapping[str, float]]]
Capacity = Callable[[NodeView], dict[str, float]]


def _total(bundles: Bundles) -> dict[str, float]:
    need: dict[str, float] = {}
    for _, b in bundles:
        R.add(need, b)
    return need


def _free(n: NodeView) -> dict[str, float]:
    return n.free_map()


def _totals(n: NodeView) -> dict[str, float]:
    return dict(n.totals)


def assign(
    strategy: str,
    bundles: Bundles,
    fixed: Mapping[int, Hashable],
    nodes: Sequence[NodeView],
    capacity: Capacity = _free,
) -> dict[int, Hashable] | None:
    """Nodes for ``bundles`` given bundles already placed (``fixed``); None: no fit."""
    order = sorted(nodes, key=lambda n: (n.score, n.ordinal))
    room = {n.node_id: capacity(n) for n in order}
    used = set(fixed.values())
    if strategy == "STRICT_PACK":
        return _one_node(bundles, order, room, used if used else None)
    if strategy == "PACK":
        one = _one_node(bundles, order, room, used if used else None)
        if one is not None:
            return one
        return _greedy(bundles, order, room, used, prefer_used=True, distinct=False)
    if strategy == "SPREAD":
        return _greedy(bundles, order, room, used, prefer_used=False, distinct=False)
    if strategy == "STRICT_SPREAD":
        return _greedy(bundles, order, room, used, prefer_used=False, distinct=True)
    raise ValueError(f"unknown placement-group strategy {strategy!r}")


def _one_node(
    bundles: Bundles,
    order: Sequence[NodeView],
    room: dict[Hashable, dict[str, float]],
    only: set[Hashable] | None,
) -> dict[int, Hashable] | None:
    need = _total(bundles)
    for n in order:
        if only is not None and n.node_id not in only:
            continue
        if R.fits(room[n.node_id], need):
            return {i: n.node_id for i, _ in bundles}
    return None


def _greedy(
    bundles: Bundles,
    order: Sequence[NodeView],
    room: dict[Hashable, dict[str, float]],
    used: set[Hashable],
    *,
    prefer_used: bool,
    distinct: bool,
) -> dict[int, Hashable] | None:
    used = set(used)
    out: dict[int, Hashable] = {}
    biggest_first = sorted(bundles, key=lambda ib: (-sum(ib[1].values()), ib[0]))
    for i, b in biggest_first:
        pick = _pick(b, order, room, used, prefer_used=prefer_used, distinct=distinct)
        if pick is None:
            return None
        R.subtract(room[pick], b)
        used.add(pick)
        out[i] = pick
    return out


def _pick(
    b: Mapping[str, float],
    order: Sequence[NodeView],
    room: dict[Hashable, dict[str, float]],
    used: set[Hashable],
    *,
    prefer_used: bool,
    distinct: bool,
) -> Hashable | None:
    fallback: Hashable | None = None
    for n in order:
        nid = n.node_id
        if not R.fits(room[nid], b):
            continue
        if (nid in used) == prefer_used:
            return nid
        if not distinct and fallback is None:
            fallback = nid
    return fallback


def infeasible(
    strategy: str,
    bundles: Bundles,
    fixed: Mapping[int, Hashable],
    nodes: Sequence[NodeView],
) -> dict[str, float]:
    """What no node could ever give these bundles ({}: they fit an empty cluster)."""
    if assign(strategy, bundles, fixed, nodes, capacity=_totals) is not None:
        return {}
    if strategy == "STRICT_PACK":
        need = _total(bundles)
        return _worst_missing([need], nodes)
    miss = _worst_missing([b for _, b in bundles], nodes)
    if miss or strategy != "STRICT_SPREAD":
        return miss or {"nodes": 1.0}
    distinct = len({n.node_id for n in nodes} - set(fixed.values()))
    return {"nodes": float(len(bundles) - distinct) if len(bundles) > distinct else 1.0}


def _worst_missing(
    shapes: Sequence[Mapping[str, float]], nodes: Sequence[NodeView]
) -> dict[str, float]:
    """For the first shape no node fits, what the closest node lacks."""
    for shape in shapes:
        if any(R.fits(n.totals, shape) for n in nodes):
            continue
        best: dict[str, float] | None = None
        for n in nodes:
            m = R.missing(n.totals, shape)
            if best is None or sum(m.values()) < sum(best.values()):
                best = m
        return best if best is not None else dict(shape)
    return {}
