"""Typed tables on top of any :class:`~gcs._interface.ControlStore`.

* :class:`ActorTable`: one msgpack :class:`ActorRecord` per actor, under
  ``/actors/<actor id hex>``.
* :class:`NameRegistry`: named actors, ``/names/<namespace>/<name>`` -> actor
  id, claimed by compare-and-swap so a name is taken exactly once.
* :class:`NodeRegistry`: one key per live node, ``/nodes/<node id hex>``,
  kept under the node's lease so that it vanishes when the node dies.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from ._interface import Compare, ControlStore, DeleteOp, GetOp, PutOp

__all__ = ["ActorRecord", "ActorTable", "NameRegistry", "NodeRegistry"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActorRecord:
    """What the cluster knows about one actor.

    ``epoch`` counts restarts; ``address`` and ``owner`` are the msgpack-able
    forms of their addresses (lists), or None when unknown. ``handle`` is what
    a process needs to make a handle to it (methods, retries, owner address).
    """

    actor_id: bytes
    name: str | None
    namespace: str
    state: str
    node_id: bytes
    address: list[Any] | None
    epoch: int
    owner: list[Any] | None
    detached: bool
    class_name: str
    death_cause: str | None = None
    handle: dict[str, Any] | None = None
    restarts: int = 0
    max_restarts: int = 0  # -1: unlimited
    home: bytes | None = None  # the node that restarts it elsewhere if its node dies
    spec_saved: bool = False  # its creation spec is in control state (any node may restart it)

    def restartable(self) -> bool:
        """Whether a restart is left (after its node died, say)."""
        return self.max_restarts == -1 or self.restarts < self.max_restarts

    def to_bytes(self) -> bytes:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return bytes(msgpack.packb(fields, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> ActorRecord:
        """Decode a record; fields this version does not know are ignored."""
        raw = msgpack.unpackb(data, raw=False)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class ActorTable:
    """Actor records by actor id."""

    def __init__(self, store: ControlStore, prefix: bytes = b"/actors/") -> None:
        self.store = store
        self.prefix = prefix

    def key(self, actor_id: bytes) -> bytes:
        return self.prefix + actor_id.hex().encode()

    async def put(self, record: ActorRecord) -> int:
        """Store ``record``; returns the store revision."""
        return await self.store.put(self.key(record.actor_id), record.to_bytes())

    async def get(self, actor_id: bytes) -> ActorRecord | None:
        kv = await self.store.get(self.key(actor_id))
        return None if kv is None else ActorRecord.from_bytes(kv.value)

    async def list(self) -> builtins.list[ActorRecord]:
        kvs, _ = await self.store.get_prefix(self.prefix)
        return [ActorRecord.from_bytes(kv.value) for kv in kvs]

    async def delete(self, actor_id: bytes) -> bool:
        return await self.store.delete(self.key(actor_id))


class NameRegistry:
    """Names of actors, unique per namespace."""

    def __init__(self, store: ControlStore, prefix: bytes = b"/names/") -> None:
        self.store = store
        self.prefix = prefix

    def key(self, namespace: str, name: str) -> bytes:
        # quoted so that "/" in a namespace cannot make two (namespace, name) pairs collide
        parts = (urllib.parse.quote(s, safe="") for s in (namespace, name))
        return self.prefix + "/".join(parts).encode()

    async def claim(self, namespace: str, name: str, actor_id: bytes, *, lease: int = 0) -> bool:
        """Take ``name`` for ``actor_id``; True if it is now this actor's.

        Claiming again a name the same actor already holds returns True, so a
        claim retried after a lost reply is safe.
        """
        key = self.key(namespace, name)
        result = await self.store.txn(
            [Compare(key, "version", "==", 0)], [PutOp(key, actor_id, lease)], [GetOp(key)]
        )
        if result.succeeded:
            return True
        held = result.responses[0]
        assert isinstance(held, list)
        return bool(held) and held[0].value == actor_id

    async def lookup(self, namespace: str, name: str) -> bytes | None:
        """The id of the actor holding ``name``, if any."""
        kv = await self.store.get(self.key(namespace, name))
        return None if kv is None else kv.value

    async def release(self, namespace: str, name: str, actor_id: bytes) -> bool:
        """Free ``name`` if ``actor_id`` still holds it; True if freed."""
        key = self.key(namespace, name)
        result = await self.store.txn([Compare(key, "value", "==", actor_id)], [DeleteOp(key)])
        return result.succeeded

    async def names(self, namespace: str) -> dict[str, bytes]:
        """Every name taken in ``namespace``, with its actor id."""
        prefix = self.key(namespace, "")
        kvs, _ = await self.store.get_prefix(prefix)
        return {urllib.parse.unquote(kv.key[len(prefix) :].decode()): kv.value for kv in kvs}


class NodeRegistry:
    """Live nodes: each node keeps its key alive with a lease it refreshes."""

    def __init__(self, store: ControlStore, prefix: bytes = b"/nodes/") -> None:
        self.store = store
        self.prefix = prefix

    def key(self, node_id: bytes) -> bytes:
        return self.prefix + node_id.hex().encode()

    def node_id(self, key: bytes) -> bytes:
        """The node id a key of this registry (as seen in a watch event) names."""
        return bytes.fromhex(key[len(self.prefix) :].decode())

    async def register(self, node_id: bytes, info: Mapping[str, Any], *, lease: int) -> int:
        """Publish ``info`` for ``node_id`` under ``lease``; returns the revision.

        Raises:
            LeaseExpiredError: the lease is gone; grant a new one and register again.
        """
        payload = bytes(msgpack.packb(dict(info), use_bin_type=True))
        return await self.store.put(self.key(node_id), payload, lease=lease)

    async def unregister(self, node_id: bytes) -> bool:
        return await self.store.delete(self.key(node_id))

    async def get(self, node_id: bytes) -> dict[str, Any] | None:
        kv = await self.store.get(self.key(node_id))
        return None if kv is None else dict(msgpack.unpackb(kv.value, raw=False))

    async def list(self) -> dict[bytes, dict[str, Any]]:
        """Every registered node and its info."""
        kvs, _ = await self.store.get_prefix(self.prefix)
        return {self.node_id(kv.key): dict(msgpack.unpackb(kv.value, raw=False)) for kv in kvs}
