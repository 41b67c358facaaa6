"""The transfer service in one process: two services, each with its own store and
arena, talking over real loopback TCP (runs on asyncio and on uvloop)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import numpy as np
import pytest
from actorcore.store._arena import Arena
from actorcore.store._pull import PullConfig
from actorcore.store._serve import ServeConfig
from actorcore.store._session import SessionDirs
from actorcore.store._state import ObjectState, StoreState

from actorcore import _protocol as P
from actorcore._ids import new_id
from actorcore._node import StoreService
from actorcore._transfer import TransferConfig, TransferService
from actorcore._transfer_link import connect_data
from actorcore._transport import client_handshake
from actorcore.errors import AuthenticationError, ObjectLostError, ObjectStoreFullError

MiB = 1 << 20
TOKEN = os.urandom(32)


class Side:
    """A store, its arena and its transfer service."""

    def __init__(self, tmp_path, name: str, capacity: int = 64 * MiB, **cfg) -> None:
        spill = tmp_path / f"spill-{name}"
        spill.mkdir()
        self.arena = Arena.create(str(tmp_path / f"arena-{name}"), capacity)
        dirs = SessionDirs(name, str(tmp_path), str(tmp_path), str(spill))
        self.store = StoreService(StoreState(capacity), self.arena, dirs)
        rate = cfg.pop("serve_rate", 0.0)
        pull = PullConfig(
            chunk_bytes=MiB, holder_window=4 * MiB, pull_window=8 * MiB, node_window=16 * MiB, **cfg
        )
        config = TransferConfig(
            pull=pull, serve=ServeConfig(8 * MiB, 4 * MiB, 2 * MiB), serve_rate=rate
        )
        self.svc = TransferService(self.store, node_id=new_id(), token=TOKEN, config=config)

    async def __aenter__(self) -> Side:
        await self.svc.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.svc.aclose()
        self.arena.close()

    async def put(self, oid: bytes, data: np.ndarray) -> int:
        offset = await self.store.create(oid, data.nbytes, b"writer", b"owner")
        self.arena.write_raw(offset, data)
        self.store.seal(oid, b"meta")
        return data.nbytes

    def read(self, oid: bytes) -> np.ndarray:
        e = self.store.state.entries[oid]
        assert e.state is ObjectState.SEALED and e.offset is not None
        return self.arena.array()[e.offset : e.offset + e.size].copy()

    def pins(self) -> int:
        return sum(sum(e.pins.values()) for e in self.store.state.entries.values())


async def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def _data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8)


@pytest.mark.timeout(60)
async def test_pull_copies_the_bytes_and_unpins(tmp_path):
    async with Side(tmp_path, "a") as a, Side(tmp_path, "b") as b:
        oid = new_id()
        data = _data(20 * MiB + 7)
        await a.put(oid, data)
        assert await b.svc.pull(oid, [a.svc.address], b"owner") == data.nbytes
        assert np.array_equal(b.read(oid), data)
        assert b.store.state.entries[oid].primary is False  # a secondary copy
        await _until(lambda: a.pins() == 0)
        assert a.svc.serving.sending_bytes == 0 and b.svc.pulls.inflight_bytes == 0


@pytest.mark.timeout(60)
async def test_concurrent_requests_share_one_pull(tmp_path):
    async with Side(tmp_path, "a") as a, Side(tmp_path, "b") as b:
        oid = new_id()
        data = _data(12 * MiB, 1)
        await a.put(oid, data)
        sizes = await asyncio.gather(*(b.svc.pull(oid, [a.svc.address]) for _ in range(5)))
        assert sizes == [data.nbytes] * 5
        assert b.svc.stats.pulls_done == 1 and b.svc.stats.bytes_received == data.nbytes
        assert np.array_equal(b.read(oid), data)


@pytest.mark.timeout(60)
async def test_a_spilled_copy_is_restored_to_serve_it(tmp_path):
    async with Side(tmp_path, "a", capacity=10 * MiB) as a, Side(tmp_path, "b") as b:
        first, second = new_id(), new_id()
        d1, d2 = _data(6 * MiB, 2), _data(6 * MiB, 3)
        await a.put(first, d1)
        await a.put(second, d2)  # no room for both: the first spills
        assert a.store.state.entries[first].state is ObjectState.SPILLED
        await b.svc.pull(first, [a.svc.address])
        assert np.array_equal(b.read(first), d1)


@pytest.mark.timeout(60)
async def test_no_room_on_the_puller_is_a_store_full_error(tmp_path):
    async with Side(tmp_path, "a") as a, Side(tmp_path, "b", capacity=4 * MiB) as b:
        oid = new_id()
        await a.put(oid, _data(8 * MiB))
        with pytest.raises(ObjectStoreFullError, match="no room"):
            await b.svc.pull(oid, [a.svc.address])
        assert oid not in b.store.state.entries
        await _until(lambda: a.pins() == 0)


@pytest.mark.timeout(60)
async def test_unreachable_holder_fails_with_the_reason(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()  # bound, not listening: connections are refused
    async with Side(tmp_path, "b") as b:
        with pytest.raises(ObjectLostError, match=r"could not be fetched.*(refused|Connect)"):
            await b.svc.pull(new_id(), [dead])
    s.close()


@pytest.mark.timeout(60)
async def test_closing_fails_pulls_in_progress(tmp_path):
    async with Side(tmp_path, "a", serve_rate=4e6) as a:
        oid = new_id()
        await a.put(oid, _data(16 * MiB))
        b = Side(tmp_path, "b")
        await b.svc.start()
        fut = b.svc.pull(oid, [a.svc.address])
        await _until(lambda: b.svc.stats.bytes_received > 0)
        await b.svc.aclose()
        b.arena.close()
        with pytest.raises(ObjectLostError, match="shutting down"):
            await fut
        await _until(lambda: a.pins() == 0)  # the holder saw the connection end


@pytest.mark.timeout(60)
async def test_data_connections_need_the_token_and_the_transfer_role(tmp_path):
    async with Side(tmp_path, "a") as a:
        loop = asyncio.get_running_loop()
        with pytest.raises(AuthenticationError):
            await connect_data(loop, a.svc.address, os.urandom(32), new_id())
        # the right token in another role: authenticated, then dropped unheard
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, a.svc.address)
        await client_handshake(loop, sock, TOKEN, "driver", new_id())
        assert await loop.sock_recv(sock, 10) == b""
        sock.close()
        assert a.svc.listener is not None and a.svc.listener.rejected == 2


@pytest.mark.timeout(60)
async def test_a_puller_that_stops_reading_is_dropped_and_others_go_on(tmp_path):
    async with Side(tmp_path, "a", stall_timeout_s=1.0) as a, Side(tmp_path, "b") as b:
        oid = new_id()
        data = _data(16 * MiB, 7)
        await a.put(oid, data)
        loop = asyncio.get_running_loop()
        sock, _ = await connect_data(loop, a.svc.address, TOKEN, new_id())
        await loop.sock_sendall(sock, P.encode_bytes(P.TransferOpenMsg(1, oid)))
        assert await loop.sock_recv(sock, 4096)  # OPENED
        reads = [P.encode_bytes(P.TransferReadMsg(2 + i, oid, i * MiB, MiB)) for i in range(16)]
        await loop.sock_sendall(sock, b"".join(reads))  # ... and never read the answers
        await b.svc.pull(oid, [a.svc.address])
        assert np.array_equal(b.read(oid), data)
        # the stuck reader is cut off once its socket took nothing for a second
        await _until(lambda: len(a.svc._conns) == 1 and a.pins() == 0, 20)
        assert a.svc.serving.sending_bytes == 0
        sock.close()


class LyingHolder:
    """A holder that opens anything (with the size it is told) and refuses every read."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reads = 0
        self.server: asyncio.AbstractServer | None = None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks.add(loop.create_task(self._accept(loop)))

    async def _accept(self, loop) -> None:
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            self.tasks.add(loop.create_task(self._serve(loop, conn)))

    async def _serve(self, loop, conn) -> None:
        from actorcore._transport import server_handshake

        try:
            await server_handshake(loop, conn, TOKEN, "transfer", new_id())
            decoder = P.FrameDecoder(1 << 16, 1 << 16)
            while data := await loop.sock_recv(conn, 1 << 16):
                for msg, _ in decoder.feed(data):
                    if isinstance(msg, P.TransferOpenMsg):
                        reply = P.TransferOpenedMsg(msg.rid, self.size, b"meta")
                    elif isinstance(msg, P.TransferReadMsg):
                        self.reads += 1
                        reply = P.TransferErrorMsg(msg.rid, "disk on fire")
                    else:
                        continue
                    await loop.sock_sendall(conn, P.encode_bytes(reply))
        except OSError:
            pass
        finally:
            conn.close()

    async def aclose(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.sock.close()


@pytest.mark.timeout(60)
async def test_a_holder_that_refuses_reads_is_dropped_for_another(tmp_path):
    data = _data(12 * MiB, 8)
    liar = LyingHolder(data.nbytes)
    liar.start()
    try:
        async with Side(tmp_path, "a") as a, Side(tmp_path, "b") as b:
            oid = new_id()
            await a.put(oid, data)
            # both get chunks (4 MiB holder windows); the liar fails its reads
            await b.svc.pull(oid, [liar.address, a.svc.address])
            assert np.array_equal(b.read(oid), data)
            assert liar.reads >= 1
            with pytest.raises(ObjectLostError, match="disk on fire"):
                await b.svc.pull(new_id(), [liar.address])
    finally:
        await liar.aclose()


@pytest.mark.timeout(60)
async def test_many_pulls_at_once_from_overlapping_holders(tmp_path):
    async with (
        Side(tmp_path, "a1") as a1,
        Side(tmp_path, "a2") as a2,
        Side(tmp_path, "b", capacity=128 * MiB) as b,
    ):
        rng = np.random.default_rng(9)
        objs = {}
        for i in range(24):
            oid = new_id()
            data = _data(int(rng.integers(1, 3 * MiB)), 100 + i)
            holders = []
            if i % 3 != 0:
                await a1.put(oid, data)
                holders.append(a1.svc.address)
            if i % 3 != 1:
                await a2.put(oid, data)
                holders.append(a2.svc.address)
            objs[oid] = (data, holders)
        sizes = await asyncio.gather(*(b.svc.pull(oid, h) for oid, (_d, h) in objs.items()))
        assert sizes == [d.nbytes for d, _h in objs.values()]
        for oid, (data, _h) in objs.items():
            assert np.array_equal(b.read(oid), data)
        b.svc.pulls.validate()
        assert not b.svc.pulls.pulls and b.svc.pulls.inflight_bytes == 0
        await _until(lambda: a1.pins() == 0 and a2.pins() == 0)
        b.store.state.validate()
