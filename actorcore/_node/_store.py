"""The node daemon's object-store service: store requests in, store I/O out.

Answers the store's control calls, does the spill and restore I/O on a thread
(the loop never waits for a disk), and carries out the store's instructions
(wake readers, delete spill files). The accounting itself is
:class:`~actorcore.store.StoreState`, inside the node state: seals, aborts,
frees and restores go through :meth:`~actorcore._node.NodeState.handle`.

Clients are processes (by id), not connections: a process may pin through one
connection and unpin through another. A reader asking for an object still
being written waits for its seal; if the writer dies first, it gets
:class:`~actorcore.errors.ObjectLostError` naming the cause.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from actorcore.store import (
    Abort,
    Arena,
    ClientGone,
    Created,
    DeleteFile,
    Free,
    Full,
    Location,
    NeedRestore,
    NeedSpill,
    ObjectState,
    RestoreDone,
    RevokePins,
    Seal,
    SessionDirs,
    StoreState,
    WakeReaders,
)

from .. import _protocol as P
from .._rpc import DEFERRED, RpcPeer, Service, handles, next_rid
from ..errors import ObjectLostError, ObjectStoreFullError

__all__ = ["StoreService"]

logger = logging.getLogger(__name__)

REVOKE_TIMEOUT_S = 5.0  # one wait for the processes asked to give cached pins back
# A request that needs room only read caches hold waits this long in all for a
# process that does not answer (its loop blocked by user code, say), asking again
# every REVOKE_TIMEOUT_S, before it fails with ObjectStoreFullError.
REVOKE_PATIENCE_S = 60.0


def _write_file(arena: Arena, offset: int, size: int, path: str) -> str | None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            arena.read_into(offset, size, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path
    except OSError as e:
        logger.warning("spilling to %s failed: %s", path, e)
        _unlink(path)
        return None


def _read_file(arena: Arena, offset: int, size: int, path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            arena.fill_from(offset, size, fd)
        finally:
            os.close(fd)
        return True
    except OSError as e:
        logger.error("restoring %s failed: %s", path, e)
        return False


def _unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


class StoreService(Service):
    """Store requests and store I/O of one node."""

    def __init__(
        self,
        state: StoreState,
        arena: Arena,
        dirs: SessionDirs,
        apply: Callable[[Any], None] | None = None,
        peer_of: Callable[[bytes], RpcPeer | None] | None = None,
    ) -> None:
        """``apply`` hands store events to the node state (which routes them to
        ``state`` and has the daemon carry out the result); without it (a store
        on its own, as in tests) they go to ``state`` directly. ``peer_of``
        finds the connection a process serves requests on (to revoke the pins
        of its read cache); without it no pin is ever revoked."""
        super().__init__()
        self.state = state
        self.arena = arena
        self.dirs = dirs
        self.apply = apply if apply is not None else self._apply_alone
        self.peer_of = peer_of
        self._spills: dict[bytes, asyncio.Future[None]] = {}
        self.revocations = 0  # objects whose cached pins were revoked (stats)

    # --- instructions --------------------------------------------------------------

    def _apply_alone(self, event: Any) -> None:
        for ins in self.state.handle(event):
            if isinstance(ins, WakeReaders):
                self.wake(ins)
            elif isinstance(ins, DeleteFile):
                self.delete_file(ins)
            elif isinstance(ins, RevokePins):
                self.revoke(ins)
            else:
                logger.warning("refused a request of %r: %s", ins.client, ins.message)

    def wake(self, ins: WakeReaders) -> None:
        for fut in ins.waiters:
            if fut.done():
                continue
            if ins.error is None:
                fut.set_result(None)
            else:
                fut.set_exception(ObjectLostError(f"object {ins.oid.hex()} is lost: {ins.error}"))

    def delete_file(self, ins: DeleteFile) -> None:
        _unlink(ins.path)

    # --- read caches ----------------------------------------------------------------

    def revoke(self, ins: RevokePins) -> None:
        """Carry out a :class:`RevokePins` instruction (nobody waits for the answer)."""
        self.revoke_pins(ins)

    def revoke_pins(self, ins: RevokePins) -> asyncio.Future[Any] | None:
        """Ask a process to drop its read cache's pins on some objects.

        Returns a future done once the process answered (its releases, sent
        before the answer on the same connection, are counted by then); None
        when the process cannot be asked (it is gone: its pins go with it).
        """
        peer = self.peer_of(ins.client) if self.peer_of is not None else None
        if peer is None:
            return None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answered(reply: Any) -> None:
            if not fut.done():
                fut.set_result(reply)

        self.revocations += len(ins.oids)
        try:
            peer.request(P.RevokePinsMsg(next_rid(), list(ins.oids)), answered)
        except ConnectionError:
            return None
        return fut

    async def _revoke_cached_pins(self) -> str:
        """Make read caches let go of what they pin: ``"none"`` (nobody to ask),
        ``"answered"`` (every process asked answered, its releases counted) or
        ``"pending"`` (some did not answer within REVOKE_TIMEOUT_S)."""
        asked = [
            fut
            for client, oids in self.state.cached_pins().items()
            if (fut := self.revoke_pins(RevokePins(client, tuple(oids)))) is not None
        ]
        if not asked:
            return "none"
        _done, pending = await asyncio.wait(asked, timeout=REVOKE_TIMEOUT_S)
        return "pending" if pending else "answered"

    async def _room_from_caches(self, tries: dict[str, float]) -> bool:
        """No room: ask the read caches for their pins; True if the request may try
        again (once after every asked process answered; while some do not answer,
        until REVOKE_PATIENCE_S has passed). ``tries`` keeps the request's state."""
        now = asyncio.get_running_loop().time()
        deadline = tries.setdefault("deadline", now + REVOKE_PATIENCE_S)
        outcome = await self._revoke_cached_pins()
        if outcome == "answered" and not tries.get("answered"):
            tries["answered"] = 1.0
            return True
        return outcome == "pending" and now < deadline

    # --- writers -------------------------------------------------------------------

    @handles(P.Tag.CREATE_OBJECT)
    def on_create_object(self, peer: RpcPeer, msg: P.CreateObjectMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        if msg.size < 0:
            raise ValueError(f"object size must be >= 0, not {msg.size}")
        owner = msg.owner[0] if msg.owner else peer.conn.peer_id
        return self.create(msg.oid, msg.size, peer.conn.peer_id, owner)

    @handles(P.Tag.SEAL_OBJECT)
    def on_seal_object(self, peer: RpcPeer, msg: P.SealObjectMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.apply(Seal(msg.oid, msg.meta, peer.conn.peer_id))
        return DEFERRED

    @handles(P.Tag.ABORT_OBJECT)
    def on_abort_object(self, peer: RpcPeer, msg: P.AbortObjectMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.apply(Abort(msg.oid, peer.conn.peer_id))
        return DEFERRED

    def seal(self, oid: bytes, meta: bytes) -> None:
        """Seal an object the daemon itself wrote (a copy pulled from another node)."""
        e = self.state.entries.get(oid)
        if e is not None:
            self.apply(Seal(oid, meta, e.creator))

    def abort(self, oid: bytes) -> None:
        """Give up on an object the daemon itself was writing."""
        e = self.state.entries.get(oid)
        if e is not None:
            self.apply(Abort(oid, e.creator))

    async def create(self, oid: bytes, size: int, creator: bytes, owner: bytes) -> int:
        """A range for a new object; spills others when full.

        Raises:
            ObjectStoreFullError: when spilling cannot make room.
        """
        tries: dict[str, float] = {}
        while True:
            r = self.state.create(oid, size, creator, owner)
            if isinstance(r, Created):
                return r.offset
            if isinstance(r, Full):
                if await self._room_from_caches(tries):
                    continue
                raise ObjectStoreFullError(r.message)
            await self._spill(r.oids)

    async def _spill(self, oids: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        started = []
        for oid in oids:
            span = self.state.begin_spill(oid)
            if span is None:
                continue
            fut = loop.create_future()
            self._spills[oid] = fut
            started.append((oid, span, fut))
        if not started:
            if self._spills:
                await asyncio.wait(list(self._spills.values()), return_when=asyncio.FIRST_COMPLETED)
                return
            raise ObjectStoreFullError("no room in the object store and nothing can be spilled")
        try:
            paths = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        None, _write_file, self.arena, off, size, self.dirs.spill_path(oid)
                    )
                    for oid, (off, size), _f in started
                )
            )
        finally:
            for oid, _span, fut in started:
                self._spills.pop(oid, None)
                if not fut.done():
                    fut.set_result(None)
        failed = 0
        for (oid, _span, _f), path in zip(started, paths, strict=True):
            if path is None:
                failed += 1
            _unlink(self.state.spill_done(oid, path))
        if failed == len(started):
            raise ObjectStoreFullError(
                f"the object store is full and spilling to {self.dirs.spill_dir} failed "
                f"(is the disk full?)"
            )

    # --- readers --------------------------------------------------------------------

    @handles(P.Tag.OPEN_OBJECTS)
    def on_open_objects(self, peer: RpcPeer, msg: P.OpenObjectsMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        oids = list(msg.oids)
        ready = self.open_now(oids, peer.conn.peer_id)
        if ready is not None:
            return ready
        return self.open_many(oids, peer.conn.peer_id)

    @handles(P.Tag.RELEASE_OBJECTS)
    def on_release_objects(self, peer: RpcPeer, msg: P.ReleaseObjectsMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.release(list(msg.oids), peer.conn.peer_id)
        return DEFERRED

    def release(self, oids: list[bytes], client: bytes) -> None:
        """``client`` lets go of one pin on each object."""
        for oid in oids:
            self.state.release(oid, client)

    def client_gone(self, client: bytes) -> None:
        """A store client that is not a process (a transfer connection) ended."""
        self.apply(ClientGone(client))

    def open_now(self, oids: list[bytes], client: bytes) -> list[Any] | None:
        """Open objects that are sealed and in memory, without waiting; None if any is not."""
        entries = self.state.entries
        for oid in oids:
            e = entries.get(oid)
            if e is None or e.state not in (ObjectState.SEALED, ObjectState.SPILLING) or e.freed:
                return None
        out = []
        for oid in oids:
            r = self.state.open(oid, client)
            assert isinstance(r, Location)
            out.append([r.offset, r.size, r.meta])
        return out

    async def open_many(self, oids: list[bytes], client: bytes) -> list[Any]:
        """Open each object, waiting for seals and restores; on failure nothing stays pinned."""
        out: list[Any] = []
        try:
            for oid in oids:
                out.append(await self.open(oid, client))
        except BaseException:
            for oid, loc in zip(oids, out, strict=False):
                if loc is not None:
                    self.state.release(oid, client)
            raise
        return out

    async def open(self, oid: bytes, client: bytes) -> list[Any] | None:
        """Pin and locate ``oid``; None if the store does not have it.

        Raises:
            ObjectLostError: its writer died (or it was freed) before it was sealed.
            ObjectStoreFullError: it is spilled and there is no room to restore it.
        """
        loop = asyncio.get_running_loop()
        while True:
            sealed: asyncio.Future[None] = loop.create_future()
            if self.state.wait_sealed(oid, sealed):
                await sealed
                continue
            r = self.state.open(oid, client)
            if isinstance(r, Location):
                return [r.offset, r.size, r.meta]
            if isinstance(r, NeedRestore):
                await self._restore(oid)
                continue
            return None

    async def _restore(self, oid: bytes) -> None:
        tries: dict[str, float] = {}
        while True:
            r = self.state.begin_restore(oid)
            if r is None:
                return
            if isinstance(r, Full):
                if await self._room_from_caches(tries):
                    continue
                raise ObjectStoreFullError(r.message)
            if isinstance(r, NeedSpill):
                await self._spill(r.oids)
                continue
            break
        e = self.state.entries[oid]
        assert e.spill_path is not None
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(
            None, _read_file, self.arena, r.offset, e.size, e.spill_path
        )
        self.apply(RestoreDone(oid, ok))

    # --- owners ---------------------------------------------------------------------

    @handles(P.Tag.FREE_OBJECTS)
    def on_free_objects(self, peer: RpcPeer, msg: P.FreeObjectsMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.apply(Free(list(msg.oids), peer.conn.peer_id))
        return DEFERRED

    # --- views ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        st = self.state.stats()
        return {
            "capacity": st.capacity,
            "used": st.used,
            "objects": st.objects,
            "sealed": st.sealed,
            "spilled": st.spilled,
            "spilled_bytes": st.spilled_bytes,
            "pinned": st.pinned,
            "spill_count": st.spill_count,
            "restore_count": st.restore_count,
        }

    def listing(self) -> list[dict[str, Any]]:
        out = self.state.listing()
        for item in out:
            owner = item["owner"]
            item["owner"] = owner.hex() if isinstance(owner, bytes) else str(owner)
        return out
