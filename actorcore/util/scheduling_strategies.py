"""Scheduling strategies, passed as ``.options(scheduling_strategy=...)``.

``"DEFAULT"`` and ``"SPREAD"`` are accepted as strings. On one node they
place work the same way; the cluster's global placer tells them apart.
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
    """Run on the node ``node_id`` (hex); ``soft=True`` allows another node if it cannot."""

    node_id: str
    soft: bool = False
