"""The floor: bare msgpack frames echoed between two processes over loopback TCP
with uvloop, no framework. One at a time, and 1000 in flight (one write per
message on both sides: no batching, which is what a framework adds).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import struct
import time
from typing import Any

import msgpack
import uvloop

_LEN = struct.Struct("<I")


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                break
            msg = msgpack.unpackb(self.buf[4 : 4 + n])
            self.buf = self.buf[4 + n :]
            body = msgpack.packb(msg)
            self.t.write(_LEN.pack(len(body)) + body)  # one write per message


def _server(q: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(_Echo, "127.0.0.1", 0)
        q.put(srv.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


class _Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.waiting = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                break
            msgpack.unpackb(self.buf[4 : 4 + n])
            self.buf = self.buf[4 + n :]
            self.waiting -= 1
        if self.waiting == 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def roundtrips(self, k: int) -> None:
        body = msgpack.packb([1, 12345, b"ok", "small_value"])
        frame = _LEN.pack(len(body)) + body
        self.waiting = k
        self.done = asyncio.get_running_loop().create_future()
        for _ in range(k):
            self.t.write(frame)  # one write per message, as a naive framework would
        await self.done


def measure(rounds: int = 5, round_s: float = 1.0) -> dict[str, Any]:
    q: Any = mp.Queue()
    srv = mp.Process(target=_server, args=(q,), daemon=True)
    srv.start()
    port = q.get(timeout=30)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        _t, c = await loop.create_connection(_Client, "127.0.0.1", port)
        out = {}
        for label, k in (("sync", 1), ("pipelined", 1000)):
            stats = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                n = 0
                while time.perf_counter() - t0 < round_s:
                    await c.roundtrips(k)
                    n += k
                stats.append(n / (time.perf_counter() - t0))
            out[label] = statistics.median(stats)
        return out

    try:
        return uvloop.run(main())
    finally:
        srv.kill()
        srv.join()


if __name__ == "__main__":
    print(measure())
