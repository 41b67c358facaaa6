"""Placement groups: bundles of resources reserved together.

pg = ac.util.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
pg.wait(timeout_seconds=10)
f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
ac.util.remove_placement_group(pg)
"""

from __future__ import annotations

from typing import Any

from .. import _api
from .. import _global as G
from .. import _protocol as P
from .._ids import new_id
from .._ref import ObjectRef
from .._rpc import next_rid

__all__ = [
    "PlacementGroup",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]


class PlacementGroup:
    """A handle on a placement group (picklable)."""

    def __init__(self, pg_id: bytes, bundles: list[dict[str, float]]) -> None:
        self.id = pg_id
        self.bundle_specs = bundles

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """A ref that resolves (to True) once every bundle is reserved."""
        return G.require().daemon_ref(P.WaitPlacementGroupMsg(next_rid(), self.id))

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Block until the group is ready; False if ``timeout_seconds`` passed first."""
        ready, _ = _api.wait([self.ready()], timeout=timeout_seconds)
        return bool(ready) and bool(_api.get(ready[0]))

    def __reduce__(self) -> Any:
        return (PlacementGroup, (self.id, self.bundle_specs))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()}, {self.bundle_specs})"


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
) -> PlacementGroup:
    """Ask for ``bundles`` to be reserved together; returns at once (see ``ready``/``wait``).

    Raises:
        ValueError: no bundles, an empty bundle, or an unknown strategy.
    """
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("bundles must be a non-empty list of {resource: amount} dicts")
    for b in bundles:
        if (
            not isinstance(b, dict)
            or not b
            or any(not isinstance(v, int | float) or v < 0 for v in b.values())
        ):
            raise ValueError(
                f"each bundle must be a non-empty dict of resource -> amount >= 0, not {b!r}"
            )
    if strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise ValueError(
            f"strategy must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, not {strategy!r}"
        )
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', not {lifetime!r}")
    rt = G.require()
    pg = PlacementGroup(new_id(), [dict(b) for b in bundles])
    msg = P.CreatePlacementGroupMsg(
        next_rid(), pg.id, pg.bundle_specs, strategy, name, lifetime or ""
    )
    if name:
        rt.call_daemon(msg)  # a clash of names fails here, at the call site
    else:
        rt.daemon.send(msg)
    return pg


def remove_placement_group(pg: PlacementGroup) -> None:
    """Release the group; tasks and actors running in it are stopped.

    Returns at once, as Ray's does: the node releases the group right after,
    and a call already on its way to an actor in it may still be answered.
    """
    G.require().daemon.send(P.RemovePlacementGroupMsg(0, pg.id))


def get_placement_group(name: str) -> PlacementGroup:
    info = G.require().call_daemon(P.GetPlacementGroupMsg(next_rid(), name))
    return PlacementGroup(bytes(info["pg_id"]), [dict(b) for b in info["bundles"]])


def placement_group_table(pg: PlacementGroup | None = None) -> Any:
    """Every placement group: id, name, strategy, state, ``bundles`` ({index: shape})
    and, in a cluster, ``bundles_to_node_id`` ({index: node id hex, None: not placed}).

    With ``pg``: that group's row only ({} when it is not known, e.g. removed).
    """
    rows = list(G.require().call_daemon(P.ListStateMsg(next_rid(), "placement_groups")))
    for row in rows:
        for key in ("bundles", "bundles_to_node_id"):
            if isinstance(row.get(key), list | tuple):
                row[key] = dict(enumerate(row[key]))
    if pg is not None:
        return next((r for r in rows if r["placement_group_id"] == pg.id.hex()), {})
    return rows
