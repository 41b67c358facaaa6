"""The local side of two-level scheduling: run here, or spill to the placer. No I/O.

A node asks :meth:`SpillPolicy.decide` for every work item submitted on it.
Work runs locally when it fits the node's free resources now, or when the
node's queue is short and young; it spills to the global placer when the node
is busy past a threshold (queue length per CPU, or the oldest queued item's
wait) and always when the node can never satisfy it. Work that the placer sent
here is queued locally and never asked about again (no ping-pong).

The defaults come from ``bench/sim_scheduler.py`` (1,000 nodes, up to
1,000,000 tasks with bursts and skew; ``bench/RESULTS.md``, "Scheduling
simulation"): see ``SpillConfig``.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from . import _placer_msgs as M

__all__ = ["Decision", "LocalView", "SpillConfig", "SpillPolicy"]

_EPS = 1e-9


class Decision(enum.Enum):
    LOCAL = "local"  # run now, or queue here
    SPILL = "spill"  # hand to the placer


@dataclass(frozen=True, slots=True)
class SpillConfig:
    """When a node hands work to the placer.

    The defaults (all 0) spill whatever cannot start here now. In the
    simulation every positive threshold tried (0.25-2 queued items per CPU,
    10-500 ms of wait) gave a worse p99 queue wait (+18% to +390%); up to 0.5
    per CPU they did not even keep more work local, and only the largest
    (2 per CPU, 0.5 s) saved placer decisions (up to a third): work queued
    behind a busy node cannot move any more, while the placer finds a node
    with room for it about a millisecond away. Raise them when tasks are as
    short as the hop to the placer (a few ms), where queueing here is cheaper
    than asking, or when the placer is the bottleneck.

    Attributes:
        queue_per_cpu: spill once the local queue holds this many items per CPU
            of the node (and at least ``min_queue``).
        max_wait_s: spill once the oldest queued item has waited this long.
        min_queue: the queue-length threshold is never below this (with
            ``queue_per_cpu`` also 0, work spills whenever it cannot start now).
    """

    queue_per_cpu: float = 0.0
    max_wait_s: float = 0.0
    min_queue: int = 0

    def __post_init__(self) -> None:
        if self.queue_per_cpu < 0 or self.max_wait_s < 0 or self.min_queue < 0:
            raise ValueError("spill thresholds must be >= 0")


class LocalView:
    """What the policy reads of the node; the owner updates it in place.

    Attributes:
        node_id: this node.
        total: the node's resources.
        available: free now.
        queue_len: items queued here, waiting for resources.
        oldest_enqueued_at: when the oldest queued item was queued (any clock
            the caller also uses for ``now``); meaningless when the queue is empty.
    """

    __slots__ = ("available", "node_id", "oldest_enqueued_at", "queue_len", "total")

    def __init__(
        self,
        node_id: Hashable,
        total: Mapping[str, float],
        available: Mapping[str, float] | None = None,
        queue_len: int = 0,
        oldest_enqueued_at: float = 0.0,
    ) -> None:
        self.node_id = node_id
        self.total = dict(total)
        self.available = dict(total if available is None else available)
        self.queue_len = queue_len
        self.oldest_enqueued_at = oldest_enqueued_at


class SpillPolicy:
    """Decides local vs spill for one node's submissions."""

    __slots__ = ("config",)

    def __init__(self, config: SpillConfig | None = None) -> None:
        self.config = config or SpillConfig()

    def decide(
        self,
        shape: Mapping[str, float],
        view: LocalView,
        now: float,
        strategy: M.Strategy = M.DEFAULT,
    ) -> Decision:
        """LOCAL or SPILL for work of ``shape`` submitted on ``view``'s node at ``now``."""
        if strategy != M.DEFAULT:
            return self._by_strategy(shape, view, now, strategy)
        total = view.total
        for k, v in shape.items():
            if total.get(k, 0.0) + _EPS < v:
                return Decision.SPILL  # can never run here
        qlen = view.queue_len
        if qlen == 0:
            avail = view.available
            for k, v in shape.items():
                if avail.get(k, 0.0) + _EPS < v:
                    break
            else:
                return Decision.LOCAL  # runs now
        return Decision.SPILL if self.busy(view, now) else Decision.LOCAL

    def busy(self, view: LocalView, now: float) -> bool:
        """Whether the node's queue is past a threshold."""
        c = self.config
        qlen = view.queue_len
        if qlen >= max(c.min_queue, c.queue_per_cpu * view.total.get("CPU", 1.0)):
            return True
        return qlen > 0 and now - view.oldest_enqueued_at >= c.max_wait_s

    def _by_strategy(
        self, shape: Mapping[str, float], view: LocalView, now: float, strategy: M.Strategy
    ) -> Decision:
        if isinstance(strategy, M.NodeAffinity):
            if strategy.node_id != view.node_id:
                return Decision.SPILL
            if not strategy.soft:
                # hard: wait here whatever the queue; the placer fails what never fits
                fits = all(view.total.get(k, 0.0) + _EPS >= v for k, v in shape.items())
                return Decision.LOCAL if fits else Decision.SPILL
            return self.decide(shape, view, now)
        # SPREAD and placement-group bundles need the cluster-wide view.
        return Decision.SPILL
