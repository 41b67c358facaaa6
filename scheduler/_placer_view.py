"""The placer's view of the cluster: per-node load and a least-loaded index. No I/O.

A node's load is what its last report said, minus what the placer itself has
sent there since (so a burst spread over many nodes before the next report
arrives, instead of all landing on the node that looked idlest). Nodes with
the same totals and labels form a class; each class keeps a lazy min-heap of
its nodes by load score, so picking the least loaded node that fits costs a
few heap operations, not a scan of the cluster.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator, Mapping

from . import _resources as R

__all__ = ["ClusterView", "NodeView"]

_EPS = 1e-9
# How many least-loaded members without room to look past before giving up on a
# class: bounds a decision's cost when the cluster is saturated.
_PROBE = 16


class NodeView:
    """What the placer believes about one node."""

    __slots__ = (
        "avail",
        "cpu_total",
        "klass",
        "labels",
        "node_id",
        "ordinal",
        "placed",
        "placed_n",
        "queue_len",
        "queue_wait",
        "reported",
        "score",
        "seq",
        "totals",
        "version",
    )

    def __init__(
        self,
        node_id: Hashable,
        totals: Mapping[str, float],
        labels: Mapping[str, str],
        ordinal: int,
    ) -> None:
        self.node_id = node_id
        self.totals = R.normalize(totals)
        self.labels = dict(labels)
        self.ordinal = ordinal
        self.avail: dict[str, float] = dict(self.totals)
        self.placed: dict[str, float] = {}
        self.placed_n = 0
        self.queue_len = 0
        self.queue_wait = 0.0
        self.seq = -1
        self.reported = False
        self.version = 0
        self.cpu_total = max(self.totals.get("CPU", 0.0), 1.0)
        self.klass: NodeClass | None = None
        self.score = 0.0

    def free(self, key: str) -> float:
        """Effective free amount: last report minus what was sent here since."""
        return self.avail.get(key, 0.0) - self.placed.get(key, 0.0)

    def has_room(self, shape: Mapping[str, float]) -> bool:
        for k, v in shape.items():
            if self.avail.get(k, 0.0) - self.placed.get(k, 0.0) + _EPS < v:
                return False
        return True

    def free_map(self) -> dict[str, float]:
        out = dict(self.avail)
        for k, v in self.placed.items():
            out[k] = out.get(k, 0.0) - v
        return out

    def compute_score(self) -> float:
        """CPU utilization while the node has a free CPU; once full, 1 + what is
        oversubscribed and queued per CPU (so the shortest backlog wins)."""
        used = self.cpu_total - self.free("CPU")
        util = used / self.cpu_total
        if util < 1.0 - _EPS:
            return util
        return 1.0 + (used - self.cpu_total + self.queue_len) / self.cpu_total


class NodeClass:
    """Nodes with identical totals and labels, with a lazy least-loaded heap."""

    __slots__ = ("cpu", "heap", "labels", "members", "totals")

    def __init__(self, totals: dict[str, float], labels: dict[str, str]) -> None:
        self.totals = totals
        self.labels = labels
        self.members: dict[int, NodeView] = {}
        self.cpu = max(totals.get("CPU", 0.0), 1.0)
        self.heap: list[tuple[float, int, int]] = []  # (score, ordinal, version)

    def push(self, n: NodeView) -> None:
        heapq.heappush(self.heap, (n.score, n.ordinal, n.version))
        if len(self.heap) > 4 * len(self.members) + 64:
            self.heap = [(m.score, m.ordinal, m.version) for m in self.members.values()]
            heapq.heapify(self.heap)

    def best_with_room(self, shape: Mapping[str, float]) -> NodeView | None:
        """The least-loaded member with room for ``shape`` now (None: none has)."""
        heap, members = self.heap, self.members
        popped: list[tuple[float, int, int]] = []
        found: NodeView | None = None
        cpu = shape.get("CPU", 0.0)
        # scores are CPU utilization while a CPU is free: past this, nobody has room
        limit = 1.0 - cpu / self.cpu + _EPS if cpu > 0 else 2.0**60
        while heap:
            top = heap[0]
            n = members.get(top[1])
            if n is None or n.version != top[2]:
                heapq.heappop(heap)  # stale
                continue
            if top[0] > limit:
                break
            if n.has_room(shape):
                found = n
                break
            popped.append(heapq.heappop(heap))
            if len(popped) >= _PROBE:
                break  # the least-loaded few are full: treat the class as full
        for e in popped:
            heapq.heappush(heap, e)
        return found

    def least_loaded(self) -> NodeView | None:
        """The member with the lowest score (dropping stale heap entries on the way)."""
        heap, members = self.heap, self.members
        while heap:
            top = heap[0]
            n = members.get(top[1])
            if n is not None and n.version == top[2]:
                return n
            heapq.heappop(heap)
        return None


class ClusterView:
    """Every node the placer knows, with feasibility per shape cached by class."""

    def __init__(self) -> None:
        self.nodes: dict[Hashable, NodeView] = {}
        self.classes: dict[tuple[object, ...], NodeClass] = {}
        self._feasible_cache: dict[tuple[object, ...], list[NodeClass]] = {}
        self._next_ordinal = 0

    def __iter__(self) -> Iterator[NodeView]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def add(
        self,
        node_id: Hashable,
        totals: Mapping[str, float],
        labels: Mapping[str, str],
        available: Mapping[str, float] | None = None,
    ) -> NodeView:
        self.remove(node_id)
        n = NodeView(node_id, totals, labels, self._next_ordinal)
        self._next_ordinal += 1
        if available is not None:
            n.avail = dict(available)
        key = (tuple(sorted(n.totals.items())), tuple(sorted(n.labels.items())))
        klass = self.classes.get(key)
        if klass is None:
            klass = self.classes[key] = NodeClass(n.totals, n.labels)
            self._feasible_cache.clear()
        klass.members[n.ordinal] = n
        n.klass = klass
        self.nodes[node_id] = n
        self.touch(n)
        return n

    def remove(self, node_id: Hashable) -> NodeView | None:
        n = self.nodes.pop(node_id, None)
        if n is not None and n.klass is not None:
            n.klass.members.pop(n.ordinal, None)
            if not n.klass.members:
                self.classes = {k: c for k, c in self.classes.items() if c is not n.klass}
                self._feasible_cache.clear()
        return n

    def touch(self, n: NodeView) -> None:
        """The node's load changed: rescore it and push it into its class heap."""
        score = n.compute_score()
        if score == n.score and n.version:
            return  # its heap entry is still right
        n.version += 1
        n.score = score
        if n.klass is not None:
            n.klass.push(n)

    def report(
        self, n: NodeView, available: Mapping[str, float], queue_len: int, wait: float
    ) -> None:
        n.avail = dict(available)
        n.placed.clear()
        n.placed_n = 0
        n.queue_len = queue_len
        n.queue_wait = wait
        n.reported = True
        self.touch(n)

    def charge(self, n: NodeView, shape: Mapping[str, float], sign: float = 1.0) -> None:
        """Account work (or bundles) the placer sent to ``n`` since its last report."""
        placed = n.placed
        for k, v in shape.items():
            placed[k] = placed.get(k, 0.0) + sign * v
        n.placed_n += 1 if sign > 0 else -1
        self.touch(n)

    def feasible_classes(self, shape: Mapping[str, float]) -> list[NodeClass]:
        key = tuple(sorted(shape.items()))
        hit = self._feasible_cache.get(key)
        if hit is None:
            hit = [c for c in self.classes.values() if R.fits(c.totals, shape)]
            self._feasible_cache[key] = hit
        return hit

    def least_loaded(self, shape: Mapping[str, float]) -> NodeView | None:
        """The least-loaded feasible node with room now, else the least-loaded feasible one."""
        tops: list[tuple[float, int, NodeClass]] = []
        for i, c in enumerate(self.feasible_classes(shape)):
            top = c.least_loaded()
            if top is not None:
                tops.append((top.score, i, c))
        if not tops:
            return None
        tops.sort()
        best: NodeView | None = None
        for score, _, c in tops:
            if best is not None and score >= best.score:
                break  # no member of this class (or later ones) beats it
            n = c.best_with_room(shape)
            if n is not None and (best is None or n.score < best.score):
                best = n
        return best if best is not None else tops[0][2].least_loaded()

    def largest_offer(self, missing: Mapping[str, float]) -> dict[str, float]:
        """The totals of the node offering the most of what is missing."""
        best: dict[str, float] = {}
        best_key = (-1.0, -1.0)
        for c in self.classes.values():
            key = (sum(c.totals.get(k, 0.0) for k in missing), c.totals.get("CPU", 0.0))
            if key > best_key:
                best, best_key = c.totals, key
        return dict(best)
