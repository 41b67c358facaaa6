"""The object store as seen from one process (driver or worker).

Writing: ask the node daemon for a range (one round trip), copy the pickle
stream and its buffers into the shared arena, seal (one-way). Reading: open
the object (one round trip, which pins it for this process), then unpickle
with buffers that are read-only views of the arena: numpy arrays come back
without a copy. The pin is dropped when the last view of the object dies.
"""

from __future__ import annotations

import collections
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from actorcore.store import Arena, decode_meta, encode_meta, layout

from . import _protocol as P
from ._rpc import error_from_reply, next_rid
from ._serialization import Serialized, deserialize
from .errors import ObjectLostError

if TYPE_CHECKING:
    from ._sync_client import SyncClient

__all__ = ["StoreClient"]


class StoreClient:
    def __init__(self, arena_path: str, capacity: int, conn: SyncClient, my_id: bytes) -> None:
        self.arena = Arena(arena_path, capacity)
        self.conn = conn
        self.my_id = my_id
        self._holders: weakref.WeakValueDictionary[bytes, np.ndarray] = (
            weakref.WeakValueDictionary()
        )
        self._meta: dict[int, tuple[int, list[list[int]]]] = {}
        self.released: collections.deque[bytes] = collections.deque()
        self.on_release: Any = None  # set by the runtime: schedules a flush

    def put(self, oid: bytes, ser: Serialized, owner_id: bytes) -> int:
        """Write a serialized value as object ``oid``; returns its size in the store.

        Raises:
            ObjectStoreFullError: no room even after spilling.
        """
        raws = [b.raw() for b in ser.buffers]
        total, spans = layout(len(ser.stream), [r.nbytes for r in raws])
        reply = self.conn.call(
            P.CreateObjectMsg(next_rid(), oid, total, [owner_id]), self._unpins()
        )
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        offset = reply.value
        try:
            self.arena.write(offset, ser.stream, raws, spans)
        except BaseException:
            self.conn.send(P.AbortObjectMsg(oid))
            raise
        self.conn.send(P.SealObjectMsg(0, oid, encode_meta(len(ser.stream), spans)))
        return total

    def _holder(self, oid: bytes) -> tuple[np.ndarray, tuple[int, list[list[int]]]]:
        holder = self._holders.get(oid)
        if holder is not None:
            meta = self._meta.get(id(holder))
            if meta is not None:
                return holder, meta
        reply = self.conn.call(P.OpenObjectsMsg(next_rid(), [oid]), self._unpins())
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        loc = reply.value[0]
        if loc is None:
            raise ObjectLostError(
                f"object {oid.hex()} is not in the object store (freed, or lost with its node)"
            )
        offset, size, meta_blob = loc
        holder = self.arena.holder(offset, size)
        meta = decode_meta(meta_blob)
        key = id(holder)
        self._meta[key] = meta
        self._holders[oid] = holder
        weakref.finalize(holder, self._release, oid, key)
        return holder, meta

    def get(self, oid: bytes, where: str = "value") -> tuple[Any, list[Any]]:
        """Read object ``oid``; returns the value and the refs found inside.

        While a view of the object from an earlier read is alive the mapping is
        reused; otherwise the daemon is asked (and pins it for this process).
        A mapping is not kept beyond its views: a pinned object cannot spill.
        """
        holder, (stream_len, spans) = self._holder(oid)
        mv = holder.data  # views of it keep `holder` (and the pin) alive
        buffers = [mv[o : o + n] for o, n in spans]
        return deserialize(mv[:stream_len], buffers, where)

    def _release(self, oid: bytes, key: int) -> None:
        # Runs in whatever thread dropped the last view: only queue work here.
        self._meta.pop(key, None)
        self.released.append(oid)
        cb = self.on_release
        if cb is not None:
            cb()

    def _unpins(self) -> Any:
        """Unpins queued by dead views, to go first on this connection (in the same
        write), so the daemon counts them before it makes room for what we ask next."""
        oids = self.take_released()
        return P.ReleaseObjectsMsg(oids) if oids else None

    def take_released(self) -> list[bytes]:
        out = []
        released = self.released
        while released:
            out.append(released.popleft())
        return out

    def close(self) -> None:
        self.conn.close()
        self.arena.close()
