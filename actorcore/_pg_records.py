"""Placement groups across nodes as data: records in etcd and where work goes. No I/O.

A cluster-wide group lives in etcd under ``/pgs/<id hex>`` (msgpack of
:class:`GroupRecord`), so every node and driver sees its state and where each
bundle lives; a named group also claims ``/pg_names/<name>``. Work scheduled
into a group carries the bundle marker resource of
:func:`actorcore.scheduler.bundle_shape` (``bundle_group_<i>_<id>``, or
``bundle_group_<id>`` for any bundle); :func:`marker_of` reads it back and
:func:`node_for` picks the node that holds the bundle.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from actorcore.scheduler import _resources as R

__all__ = [
    "NAMES",
    "PGS",
    "GroupRecord",
    "RecordState",
    "marker_of",
    "name_key",
    "node_for",
    "record_key",
]

PGS = b"/pgs/"
NAMES = b"/pg_names/"
_MARKER = "bundle_group_"


class RecordState(enum.Enum):
    PENDING = "PENDING"  # not (yet) placed: the coordinator keeps trying
    CREATED = "CREATED"  # every bundle committed on its node
    RESCHEDULING = "RESCHEDULING"  # bundles lost with their node are being placed again


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """What etcd holds about one cluster-wide placement group."""

    pg_id: bytes
    bundles: tuple[dict[str, float], ...]
    strategy: str
    name: str = ""
    state: RecordState = RecordState.PENDING
    nodes: tuple[bytes | None, ...] = ()  # node of each bundle (None: not placed)
    coordinator: bytes = b""  # the node placing it
    created_at: float = field(default_factory=time.time)
    owner: bytes = b""  # the driver it ends with (b"": detached, or made by no driver)
    owner_node: bytes = b""  # that driver's node
    version: int = 0  # grows with every change its coordinator makes

    def placed(self, nodes: tuple[bytes | None, ...], state: RecordState) -> GroupRecord:
        return replace(self, nodes=nodes, state=state, version=self.version + 1)

    def coordinated_by(self, node_id: bytes) -> GroupRecord:
        return replace(self, coordinator=node_id, version=self.version + 1)

    def to_bytes(self) -> bytes:
        return bytes(
            msgpack.packb(
                [
                    self.pg_id,
                    [dict(b) for b in self.bundles],
                    self.strategy,
                    self.name,
                    self.state.value,
                    list(self.nodes),
                    self.coordinator,
                    self.created_at,
                    self.owner,
                    self.owner_node,
                    self.version,
                ],
                use_bin_type=True,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupRecord:
        fields = msgpack.unpackb(data, raw=False)
        pg_id, bundles, strategy, name, state, nodes, coordinator, created = fields[:8]
        owner, owner_node, version = fields[8:]
        return cls(
            bytes(pg_id),
            tuple({str(k): float(v) for k, v in b.items()} for b in bundles),
            strategy,
            name,
            RecordState(state),
            tuple(None if n is None else bytes(n) for n in nodes),
            bytes(coordinator),
            float(created),
            bytes(owner),
            bytes(owner_node),
            int(version),
        )

    def row(self) -> dict[str, Any]:
        """One row of ``placement_group_table()`` (lists by bundle index: msgpack
        maps take no int keys; the client makes them ``{index: ...}``)."""
        nodes = self.nodes or (None,) * len(self.bundles)
        return {
            "placement_group_id": self.pg_id.hex(),
            "name": self.name,
            "strategy": self.strategy,
            "state": self.state.value,
            "bundles": [dict(b) for b in self.bundles],
            "bundles_to_node_id": [n.hex() if n else None for n in nodes],
            "coordinator_node_id": self.coordinator.hex(),
            "detached": not self.owner,
        }


def record_key(pg_id: bytes) -> bytes:
    return PGS + pg_id.hex().encode()


def name_key(name: str) -> bytes:
    return NAMES + name.encode()


def marker_of(shape: Mapping[str, float]) -> tuple[bytes, int] | None:
    """``(group id, bundle index)`` of work scheduled into a group (-1: any bundle);
    None for other work."""
    for key in shape:
        if not key.startswith(_MARKER):
            continue
        rest = key[len(_MARKER) :]
        index, _, hex_id = rest.rpartition("_")
        try:
            return bytes.fromhex(hex_id), int(index) if index else -1
        except ValueError:
            continue
    return None


def node_for(
    record: GroupRecord,
    index: int,
    shape: Mapping[str, float],
    me: bytes,
    available: Mapping[bytes, Mapping[str, float]],
) -> bytes | None:
    """The node that should run work of ``shape`` in bundle ``index`` (-1: any);
    None while the bundle is not placed. For any bundle: this node when it holds
    one with room now, else the first holder whose last report has room, else
    this node or the first holder."""
    if index >= 0:
        if index >= len(record.nodes):
            return None
        return record.nodes[index]
    holders = list(dict.fromkeys(n for n in record.nodes if n is not None))
    if not holders:
        return None
    want = R.normalize(dict(shape))
    ordered = sorted(holders, key=lambda n: n != me)  # this node first
    for n in ordered:
        if n in available and R.fits(dict(available[n]), want):
            return n
    return ordered[0]
