"""Scheduling strategies, passed as ``.options(scheduling_strategy=...)``.

``"DEFAULT"`` and ``"SPREAD"`` are accepted as strings. ``"DEFAULT"`` runs work
on the node where it is submitted while it has room (pack) and spills it to the
cluster's global placer when that node is busy (spread when busy). ``"SPREAD"``
(tasks and actors) asks the placer every time, which round-robins over the
nodes that fit, those with room first; an owner runs one SPREAD task per
worker at a time (no pipelining), so its tasks spread too. On one node both
place work the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run inside bundle ``placement_group_bundle_index`` of a group (-1: any bundle)."""

    placement_group: Any
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool = False


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex).

    ``soft=False``: only there; the work waits while that node is busy, and fails
    with a clear error if the node is dead or unknown. ``soft=True``: there if it
    has room now, else wherever the default policy puts it (Ray's
    ``_spill_on_unavailable=True``); a dead node is no error.
    """

    node_id: str
    soft: bool = False
