"""Utilities users of Ray expect: an actor pool and a cluster-wide queue."""

from ._actor_pool import ActorPool
from ._queue import Empty, Full, Queue

__all__ = ["ActorPool", "Empty", "Full", "Queue"]
