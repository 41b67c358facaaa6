"""The global placer's events (in) and instructions (out): typed, frozen, no I/O.

The shell that hosts the placer (inside the elected node daemon) turns wire
messages into these events, feeds them to :meth:`Placer.handle`, and carries
out the instructions it gets back: forward work to a node, ask nodes to
prepare, commit or release placement-group bundles, tell an owner that its
work cannot run, warn about infeasible work, and wake the placer at a time.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT",
    "SPREAD",
    "BundlesLost",
    "Commit",
    "CommitReplied",
    "Infeasible",
    "NodeAffinity",
    "NodeDied",
    "NodeId",
    "NodeJoined",
    "NodeLeft",
    "PlaceOn",
    "PlacementGroupFailed",
    "PlacementGroupReady",
    "PlacementGroupRequest",
    "PlacementGroupTarget",
    "Prepare",
    "PrepareReplied",
    "Release",
    "RemovePlacementGroup",
    "RetryAt",
    "SpillRequest",
    "Strategy",
    "Tick",
    "WorkAccepted",
    "WorkFailed",
    "WorkRejected",
]

NodeId = Hashable
DEFAULT = "DEFAULT"
SPREAD = "SPREAD"
PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


# --- strategies ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeAffinity:
    """Run on ``node_id``; ``soft``: only if it has room now, else the default policy."""

    node_id: NodeId
    soft: bool = False


@dataclass(frozen=True, slots=True)
class PlacementGroupTarget:
    """Run inside a placement group's bundle (``bundle_index`` -1: any bundle)."""

    pg_id: bytes
    bundle_index: int = -1


Strategy = str | NodeAffinity | PlacementGroupTarget


# --- events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeJoined:
    """A node registered; a fresh node is idle, so it is placeable at once."""

    node_id: NodeId
    totals: Mapping[str, float]
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeLeft:
    """A node left cleanly (drained): nothing placed there is lost."""

    node_id: NodeId


@dataclass(frozen=True, slots=True)
class NodeDied:
    """A node died: work sent there and not yet accepted is placed again."""

    node_id: NodeId


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A node's load, sent straight to the placer every few tens of ms.

    ``seq`` grows per node; a report with a ``seq`` not above the last one
    seen is stale and ignored. ``totals`` lets a placer that has just taken
    over learn a node it has never heard of from its first report.
    """

    node_id: NodeId
    available: Mapping[str, float]
    queue_len: int
    queue_wait_s: float
    seq: int
    totals: Mapping[str, float] | None = None
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class SpillRequest:
    """A node hands work to the placer (too busy, or it can never fit there)."""

    work_id: Hashable
    shape: Mapping[str, float]
    strategy: Strategy = DEFAULT
    arg_locations: Mapping[NodeId, int] = field(default_factory=dict)
    origin_node: NodeId | None = None


@dataclass(frozen=True, slots=True)
class WorkAccepted:
    """The chosen node took the work into its queue."""

    work_id: Hashable


@dataclass(frozen=True, slots=True)
class WorkRejected:
    """The chosen node refused the work (e.g. it is draining): place it again."""

    work_id: Hashable


@dataclass(frozen=True, slots=True)
class PlacementGroupRequest:
    pg_id: bytes
    bundles: tuple[Mapping[str, float], ...]
    strategy: str = "PACK"


@dataclass(frozen=True, slots=True)
class PrepareReplied:
    pg_id: bytes
    node_id: NodeId
    attempt: int
    ok: bool


@dataclass(frozen=True, slots=True)
class CommitReplied:
    pg_id: bytes
    node_id: NodeId
    attempt: int
    ok: bool


@dataclass(frozen=True, slots=True)
class RemovePlacementGroup:
    pg_id: bytes


@dataclass(frozen=True, slots=True)
class Tick:
    """The time now (seconds, monotonic); fires timers (prepare timeouts, retries)."""

    now: float


Event = (
    NodeJoined
    | NodeLeft
    | NodeDied
    | LoadReport
    | SpillRequest
    | WorkAccepted
    | WorkRejected
    | PlacementGroupRequest
    | PrepareReplied
    | CommitReplied
    | RemovePlacementGroup
    | Tick
)


# --- instructions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlaceOn:
    """Send the work to ``node_id``'s local queue (it is not spilled again)."""

    work_id: Hashable
    node_id: NodeId


@dataclass(frozen=True, slots=True)
class Infeasible:
    """Warn once per distinct missing shape: no node can ever run this work (yet).

    ``work_id`` is the first work (or placement group id) seen with this
    missing shape; the work keeps waiting for a node that fits.
    """

    work_id: Hashable
    missing: Mapping[str, float]
    largest_offer: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class WorkFailed:
    """The work can never be placed as asked (e.g. hard affinity to a dead node)."""

    work_id: Hashable
    reason: str


@dataclass(frozen=True, slots=True)
class Prepare:
    """Reserve these bundles on ``node_id`` (phase one); reply PrepareReplied."""

    node_id: NodeId
    pg_id: bytes
    attempt: int
    bundles: tuple[tuple[int, Mapping[str, float]], ...]


@dataclass(frozen=True, slots=True)
class Commit:
    """Make the prepared bundles of ``attempt`` usable (phase two); reply CommitReplied."""

    node_id: NodeId
    pg_id: bytes
    attempt: int


@dataclass(frozen=True, slots=True)
class Release:
    """Give back these bundles on ``node_id`` (prepared or committed; unknown: no-op)."""

    node_id: NodeId
    pg_id: bytes
    indexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PlacementGroupReady:
    """Every bundle is committed; ``placement[i]`` is the node of bundle ``i``."""

    pg_id: bytes
    placement: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class PlacementGroupFailed:
    pg_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class BundlesLost:
    """Bundles of a ready group died with their node; the placer places them again."""

    pg_id: bytes
    node_id: NodeId
    indexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Feed the placer a ``Tick`` at (or after) ``when``."""

    when: float


Instruction = (
    PlaceOn
    | Infeasible
    | WorkFailed
    | Prepare
    | Commit
    | Release
    | PlacementGroupReady
    | PlacementGroupFailed
    | BundlesLost
    | RetryAt
)
