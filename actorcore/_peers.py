"""The cluster's membership as data: who the nodes are (no I/O but the token helper).

* :class:`ClusterSpec`: how a node joins (etcd address, its own address, TTL, login);
* :class:`PeerTable`: every node seen, live or dead, fed with etcd reads and
  watch events, answering with :class:`Joined` / :class:`Left` changes;
* :func:`node_record`: what a node publishes about itself;
* :func:`cluster_token`: the token every node and driver of a cluster proves.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from actorcore.gcs import (
    EtcdAddress,
    EtcdControlStore,
    EtcdOptions,
    EventType,
    KeyValue,
    WatchEvent,
)

__all__ = [
    "MEMBERS",
    "NODES",
    "TOKEN",
    "ClusterSpec",
    "Joined",
    "Left",
    "PeerTable",
    "cluster_token",
    "local_ip_towards",
    "node_record",
]

NODES = b"/nodes/"
MEMBERS = b"/members/"
TOKEN = b"/token"


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """How a node joins its cluster (the ``cluster`` part of the daemon's boot)."""

    address: str  # etcd://host:port[,host:port...]/NAME
    node_ip: str
    ttl_s: float = 2.0
    etcd: EtcdOptions = field(default_factory=EtcdOptions)
    started_by: str = "cli"  # "cli" (actorcore start) or "driver"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterSpec:
        return cls(
            d["address"],
            d["node_ip"],
            float(d.get("ttl_s", 2.0)),
            EtcdOptions(**(d.get("etcd") or {})),
            d.get("started_by", "cli"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "node_ip": self.node_ip,
            "ttl_s": self.ttl_s,
            "etcd": self.etcd.to_dict(),
            "started_by": self.started_by,
        }


def local_ip_towards(address: str) -> str:
    """The address of the local interface that reaches etcd (a UDP connect sends nothing)."""
    host, port = EtcdAddress.parse(address).endpoints[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])


async def cluster_token(address: str, options: EtcdOptions, given: bytes | None) -> bytes:
    """The cluster's token: the one in etcd; else ``given`` or a new one, stored there.

    The first node creates it (compare-and-swap: two first nodes agree on one).

    Raises:
        ValueError: ``given`` differs from the token the cluster already has.
    """
    async with EtcdControlStore(address, options=options) as store:
        mine = given or os.urandom(32)
        await store.put_if_absent(TOKEN, mine)
        kv = await store.get(TOKEN)
        assert kv is not None
        if given is not None and kv.value != given:
            raise ValueError(f"the token given does not match cluster {address}'s token")
        return kv.value


# --- the sans-IO view ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    node_id: bytes
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Left:
    node_id: bytes


def _decode(kv: KeyValue) -> dict[str, Any]:
    return dict(msgpack.unpackb(kv.value, raw=False))


def _node_id(key: bytes, prefix: bytes) -> bytes:
    return bytes.fromhex(key[len(prefix) :].decode())


class PeerTable:
    """Every node of the cluster: live ones (``/nodes/``) and those seen before."""

    def __init__(self) -> None:
        self.members: dict[bytes, dict[str, Any]] = {}
        self.live: dict[bytes, dict[str, Any]] = {}

    def load(self, members: list[KeyValue], nodes: list[KeyValue]) -> list[Joined | Left]:
        """Replace the view with a fresh read; returns what changed."""
        before = set(self.live)
        for kv in members:
            self.members[_node_id(kv.key, MEMBERS)] = _decode(kv)
        self.live = {_node_id(kv.key, NODES): _decode(kv) for kv in nodes}
        self.members.update(self.live)
        out: list[Joined | Left] = [Left(n) for n in before - set(self.live)]
        out += [Joined(n, r) for n, r in self.live.items() if n not in before]
        return out

    def handle(self, event: WatchEvent) -> list[Joined | Left]:
        """One watch event on ``/nodes/``."""
        node_id = _node_id(event.key, NODES)
        if event.type is EventType.PUT:
            assert event.kv is not None
            record = _decode(event.kv)
            fresh = node_id not in self.live
            self.live[node_id] = self.members[node_id] = record
            return [Joined(node_id, record)] if fresh else []
        if self.live.pop(node_id, None) is not None:
            return [Left(node_id)]
        return []

    def nodes(self) -> list[dict[str, Any]]:
        """``ac.nodes()`` rows: every node ever seen, dead ones with ``Alive: False``."""
        rows = []
        for node_id, r in sorted(self.members.items(), key=lambda x: x[1].get("start_time", 0)):
            rows.append(
                {
                    "NodeID": node_id.hex(),
                    "Alive": node_id in self.live,
                    "NodeManagerAddress": r["address"],
                    "NodeManagerPort": r["port"],
                    "Resources": dict(r["resources"]),
                    "Pid": r["pid"],
                    "StartTime": r.get("start_time", 0.0),
                    "MetricsExportPort": r.get("metrics_port", 0),
                }
            )
        return rows

    def total(self) -> dict[str, float]:
        """The sum of the live nodes' resources."""
        out: dict[str, float] = {}
        for r in self.live.values():
            for k, v in r["resources"].items():
                out[k] = out.get(k, 0.0) + float(v)
        return out


def node_record(
    node_id: bytes, spec: ClusterSpec, port: int, resources: dict[str, float]
) -> dict[str, Any]:
    """What this node publishes about itself."""
    return {
        "node_id": node_id.hex(),
        "address": spec.node_ip,
        "port": port,
        "pid": os.getpid(),
        "resources": dict(resources),
        "metrics_port": 0,  # placeholder until metrics are exported
        "start_time": time.time(),
        "started_by": spec.started_by,
    }
