"""The node daemon's side of the object store: carries out what
:class:`store._state.StoreState` decides, and does the spill and restore I/O on
a thread so the daemon's loop never waits for a disk.

Clients are processes (by id), not connections: a process may pin through one
connection and unpin through another. An open of an object still being written
waits for its seal.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from actorcore.store._arena import Arena
from actorcore.store._session import SessionDirs
from actorcore.store._state import Created, Full, Location, NeedRestore, NeedSpill, ObjectState, StoreState

from .errors import ObjectStoreFullError

__all__ = ["StoreService"]

logger = logging.getLogger(__name__)


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
        try:
            os.unlink(path)
        except OSError:
            pass
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


class StoreService:
    def __init__(self, state: StoreState, arena: Arena, dirs: SessionDirs) -> None:
        self.state = state
        self.arena = arena
        self.dirs = dirs
        self._sealed_waiters: dict[bytes, list[Callable[[], None]]] = {}
        self._spills: dict[bytes, asyncio.Future[None]] = {}

    # --- writers -------------------------------------------------------------------

    async def create(self, oid: bytes, size: int, creator: bytes, owner: bytes) -> int:
        """A range for a new object; spills others when full.

        Raises:
            ObjectStoreFullError: when spilling cannot make room.
        """
        while True:
            r = self.state.create(oid, size, creator, owner)
            if isinstance(r, Created):
                return r.offset
            if isinstance(r, Full):
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

    def seal(self, oid: bytes, meta: bytes) -> None:
        if oid not in self.state.entries:
            return
        self.state.seal(oid, meta)
        self._wake(oid)

    def abort(self, oid: bytes) -> None:
        self.state.abort(oid)
        self._wake(oid)

    def _wake(self, oid: bytes) -> None:
        for cb in self._sealed_waiters.pop(oid, ()):
            cb()

    # --- readers --------------------------------------------------------------------

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
        return [await self.open(oid, client) for oid in oids]

    async def open(self, oid: bytes, client: bytes) -> list[Any] | None:
        while True:
            e = self.state.entries.get(oid)
            if e is not None and e.state is ObjectState.CREATED and not e.freed:
                await self._until_sealed(oid)
                continue
            r = self.state.open(oid, client)
            if isinstance(r, Location):
                return [r.offset, r.size, r.meta]
            if isinstance(r, NeedRestore):
                await self._restore(oid)
                continue
            return None

    def _until_sealed(self, oid: bytes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self._sealed_waiters.setdefault(oid, []).append(wake)
        return fut

    async def _restore(self, oid: bytes) -> None:
        e = self.state.entries.get(oid)
        if e is not None and e.state is ObjectState.RESTORING:
            await self._until_sealed(oid)
            return
        while True:
            r = self.state.begin_restore(oid)
            if r is None:
                return
            if isinstance(r, Full):
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
        _unlink(self.state.restore_done(oid, ok))
        self._wake(oid)

    def release(self, oids: list[bytes], client: bytes) -> None:
        for oid in oids:
            self.state.release(oid, client)

    # --- owners and clients -----------------------------------------------------------

    def free(self, oids: list[bytes]) -> None:
        for oid in oids:
            _unlink(self.state.free(oid))
            self._wake(oid)

    def client_gone(self, client: bytes) -> None:
        for path in self.state.client_gone(client):
            _unlink(path)

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
