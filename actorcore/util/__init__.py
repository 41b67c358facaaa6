"""Utilities users of Ray expect: an actor pool, a cluster-wide queue, placement groups."""

from . import scheduling_strategies
from ._actor_pool import ActorPool
from ._placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ._queue import Empty, Full, Queue

__all__ = [
    "ActorPool",
    "Empty",
    "Full",
    "PlacementGroup",
    "Queue",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
    "scheduling_strategies",
]
