"""Where work goes in a cluster: the routing rule, with no I/O.

:func:`route` decides where a lease request or an actor creation submitted on a
node goes (two-level scheduling, DESIGN section 5): this node's queue when it
can start here now (local first: no round trip to anyone), or when the node is
not busy past the spill thresholds (``scheduler.SpillPolicy``); otherwise the
cluster's global placer chooses a node (feasible, then locality by argument
bytes, then least loaded; ``SPREAD`` round-robins; soft node affinity prefers
its node when it has room now). :class:`~actorcore._cluster_work.ClusterWork`
carries the answer out.

A hard node affinity travels in a shape as the pseudo-resource ``node:<hex>``
(``scheduler.NODE_AFFINITY_PREFIX``; a live other node gets the work straight
away, the node state drops it on its own node and refuses a dead or unknown
node); a soft one as ``node_affinity_soft:<hex>``, SPREAD as
``scheduling:spread`` (hints the node state drops). :func:`split_affinity`
reads the affinities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actorcore.scheduler import Decision, LocalView, SpillPolicy
from actorcore.scheduler import _resources as R
from actorcore.scheduler import placer_msgs as M

__all__ = [
    "AFFINITY",
    "AFFINITY_SOFT",
    "IGNORED",
    "LOCAL",
    "LOCALITY_MIN_BYTES",
    "Route",
    "route",
    "split_affinity",
    "usable",
]

AFFINITY = R.NODE_AFFINITY_PREFIX  # hard: the node state checks it names a live node
AFFINITY_SOFT = R.NODE_AFFINITY_SOFT_PREFIX
# a task whose store arguments hold this many more bytes on another node goes
# to the placer (which sends it there when that node has room: locality)
LOCALITY_MIN_BYTES = 1 << 20
IGNORED = ("memory", "object_store_memory")  # resources no placement looks at


def split_affinity(shape: Mapping[str, float]) -> tuple[dict[str, float], bytes | None, bool]:
    """``(shape without the affinity, target node id or None, soft)``."""
    out: dict[str, float] = {}
    target: bytes | None = None
    soft = False
    for k, v in shape.items():
        if k.startswith(AFFINITY_SOFT):
            target, soft = bytes.fromhex(k[len(AFFINITY_SOFT) :]), True
        elif k.startswith(AFFINITY):
            target, soft = bytes.fromhex(k[len(AFFINITY) :]), False
        else:
            out[k] = v
    return out, target, soft


def usable(record: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in dict(record.get("resources") or {}).items()}


LOCAL = "local"
Route = str | bytes | tuple[dict[str, float], M.Strategy]


def route(
    shape: Mapping[str, float],
    view: LocalView,
    live: Mapping[bytes, Any],
    policy: SpillPolicy,
    now: float,
    args: Mapping[bytes, int] | None = None,
) -> Route:
    """Where work of ``shape`` submitted on ``view``'s node goes (no I/O).

    ``LOCAL``: this node's queue (also a hard affinity to a dead node, which the
    node state refuses, saying why); a node id: straight to that node (hard
    affinity to a live one); ``(shape, strategy)``: ask the placer.
    """
    if R.PLACED_KEY in shape:
        return LOCAL  # the placer chose this node already: no ping-pong
    base, target, soft = split_affinity(shape)
    spread = R.SPREAD_KEY in base
    base, _env = R.split_runtime_env(base)  # any node can start a worker of an env
    want = {k: v for k, v in R.strip_hints(base).items() if k not in IGNORED and v > 0}
    me = view.node_id
    if target is not None and not soft:
        return target if target != me and target in live else LOCAL
    strategy: M.Strategy = M.DEFAULT
    if target is not None:
        strategy = M.NodeAffinity(target, True)
    elif spread:
        strategy = M.SPREAD
    elif args and _elsewhere(args, me) >= LOCALITY_MIN_BYTES:
        return want, M.DEFAULT  # most of its arguments live on another node
    if policy.decide(want, view, now, strategy) is Decision.LOCAL:
        return LOCAL
    return want, strategy


def _elsewhere(args: Mapping[bytes, int], me: bytes) -> int:
    """How many more argument bytes the best other node holds than this one."""
    here = args.get(me, 0)
    best = max((v for k, v in args.items() if k != me), default=0)
    return best - here
