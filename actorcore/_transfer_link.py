"""Data connections between node daemons for object transfer.

A data connection is a plain TCP socket that passed the cluster-token
handshake (role ``"transfer"``) and then carries the usual frames (prelude,
msgpack header, raw buffers). What differs from an RPC connection is who
touches the bytes of a chunk: the holder hands the kernel a memoryview of its
arena (``sendmsg``; nothing is copied into a message), and the puller reads
the chunk with ``recv_into`` straight into the destination range of its own
arena (no whole-object buffer, no intermediate ``bytes``).

:class:`DataSocket` does the socket I/O (ordered writes by one writer task,
exact reads); :class:`PullLink` is the puller's connection to one holder node.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from . import _protocol as P
from ._tls import TlsContexts, tls_connect
from ._transport import HANDSHAKE_TIMEOUT_S, client_handshake
from .errors import ConnectionBrokenError, ProtocolError

__all__ = ["DataSocket", "PullLink", "connect_data"]

logger = logging.getLogger(__name__)

ROLE = "transfer"
MAX_REPLY_HEADER = 1 << 20  # an OPENED reply carries the object's layout
_PRELUDE = struct.Struct("<IH")
_BUFLEN = struct.Struct("<Q")
_IOV_MAX = 64

Done = Callable[[], None]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DataSocket:
    """A non-blocking socket with one ordered writer task and exact reads.

    ``send`` queues byte-likes (handed to ``sendmsg`` as they are, a batch at a
    time). A failed write, or a peer that takes nothing for ``write_timeout``
    seconds, calls ``on_error`` once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_error: Callable[[BaseException], None],
        write_timeout: float | None = None,
    ) -> None:
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self._fd = sock.fileno()
        self._on_error = on_error
        self._write_timeout = write_timeout
        self._out: deque[tuple[list[Any], Done | None]] = deque()
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_loop())
        self.closed = False

    # --- writing --------------------------------------------------------------------

    def send(self, parts: list[Any], done: Done | None = None) -> None:
        """Queue ``parts`` (written in order, after what is queued); ``done()`` once sent."""
        if self.closed:
            return
        self._out.append((parts, done))
        self._wake.set()

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._out:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                parts: list[Any] = []
                dones: list[Done] = []
                while self._out and len(parts) < _IOV_MAX:
                    more, done = self._out.popleft()
                    parts += more
                    if done is not None:
                        dones.append(done)
                await self._send_all(parts)
                for done in dones:
                    done()
                await asyncio.sleep(0)  # a fast reader never makes us wait: let others run
        except OSError as e:  # TimeoutError included
            self._on_error(e)

    async def _send_all(self, parts: list[Any]) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            try:
                n = self.sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                await self._ready(
                    self.loop.add_writer, self.loop.remove_writer, self._write_timeout
                )
                continue
            while n:
                head = views[0]
                if n >= head.nbytes:
                    n -= head.nbytes
                    views.pop(0)
                else:
                    views[0] = head[n:]
                    n = 0

    async def _ready(
        self, add: Callable[..., None], remove: Callable[[int], Any], timeout: float | None = None
    ) -> None:
        """Wait until the socket is readable/writable (TimeoutError after ``timeout`` s)."""
        if self.closed:
            raise ConnectionBrokenError("the data connection is closed")
        fut = self.loop.create_future()
        add(self._fd, _resolve, fut)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, timeout)
        finally:
            if not self.closed:  # close() unregistered it (the fd may be reused since)
                remove(self._fd)

    # --- reading ------------------------------------------------------------------------

    async def read_into(self, view: memoryview) -> None:
        """Fill ``view`` exactly (``recv_into`` straight into it)."""
        got = 0
        total = view.nbytes
        while got < total:
            try:
                n = self.sock.recv_into(view[got:])
            except (BlockingIOError, InterruptedError):
                await self._ready(self.loop.add_reader, self.loop.remove_reader)
                continue
            if n == 0:
                raise ConnectionBrokenError("the peer closed the data connection")
            got += n

    async def read_some(self, limit: int) -> bytes:
        """Whatever arrived, up to ``limit`` bytes (waits for at least one)."""
        while True:
            try:
                data = self.sock.recv(limit)
            except (BlockingIOError, InterruptedError):
                await self._ready(self.loop.add_reader, self.loop.remove_reader)
                continue
            if not data:
                raise ConnectionBrokenError("the peer closed the data connection")
            return data

    async def read_head(self, max_header: int) -> tuple[Any, list[int]]:
        """Read one frame's prelude and header; returns the message and its buffer lengths.

        The raw buffers are left in the socket for the caller to read where they belong.
        """
        pre = bytearray(_PRELUDE.size)
        await self.read_into(memoryview(pre))
        hlen, nbufs = _PRELUDE.unpack(pre)
        if hlen > max_header or nbufs > 1:
            raise ProtocolError(f"bad data frame: header {hlen} bytes, {nbufs} buffers")
        lens = bytearray(_BUFLEN.size * nbufs)
        if nbufs:
            await self.read_into(memoryview(lens))
        header = bytearray(hlen)
        await self.read_into(memoryview(header))
        try:
            msg = P.decode_header(msgpack.unpackb(header, use_list=False, raw=False))
        except ProtocolError:
            raise
        except Exception as e:
            raise ProtocolError(f"undecodable frame header: {e}") from None
        return msg, [_BUFLEN.unpack_from(lens, 8 * i)[0] for i in range(nbufs)]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.cancel()
        for remove in (self.loop.remove_reader, self.loop.remove_writer):
            try:
                remove(self._fd)
            except Exception:  # the loop may be closed already
                pass
        self.sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._writer, return_exceptions=True)


async def connect_data(
    loop: asyncio.AbstractEventLoop,
    address: tuple[str, int],
    token: bytes,
    my_id: bytes,
    tls: TlsContexts | None = None,
) -> tuple[Any, bytes]:
    """Connect to a holder's transfer listener (with ``tls``: mutual TLS first) and
    prove the cluster token.

    Returns the socket and the holder's node id.

    Raises:
        OSError: the holder is not reachable (ssl.SSLError: TLS failed).
        AuthenticationError: the handshake failed.
        TimeoutError: no answer within the handshake timeout.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock: Any = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            await loop.sock_connect(sock, address)
            if tls is not None:
                sock = await tls_connect(loop, sock, tls)
            _role, peer_id, leftover = await client_handshake(loop, sock, token, ROLE, my_id)
        if leftover:
            raise ProtocolError("the holder sent data before being asked")
    except BaseException:
        sock.close()
        raise
    return sock, peer_id


class _Req:
    __slots__ = ("callback", "dest", "kind")

    def __init__(self, kind: int, dest: memoryview | None, callback: Callable[[Any], None]):
        self.kind = kind
        self.dest = dest
        self.callback = callback


class PullLink:
    """The puller's data connection to one holder node, shared by all its pulls.

    Requests queue until the connection is up. An OPEN answer goes to its
    callback (``(size, meta)`` or an error text); a READ's bytes land in its
    destination and then its callback runs with ``None``. Anything else going
    wrong (connect, handshake, a broken stream, an error for a READ) ends the
    link: ``on_broken(link, reason)`` runs once and no callback runs after it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        holder: tuple[str, int],
        *,
        token: bytes,
        my_id: bytes,
        on_broken: Callable[[PullLink, str], None],
        on_bytes: Callable[[PullLink, int], None] | None = None,
        tls: TlsContexts | None = None,
    ) -> None:
        self.loop = loop
        self.holder = holder
        self._tls = tls
        self._token = token
        self._my_id = my_id
        self._on_broken = on_broken
        self._on_bytes = on_bytes
        self._rids = itertools.count(1)
        self._pending: dict[int, _Req] = {}
        self._early: list[bytes] = []  # frames asked for before the connection was up
        self.data: DataSocket | None = None
        self.closed = False
        self._task = loop.create_task(self._run())

    # --- requests ---------------------------------------------------------------------

    def open(self, oid: bytes, callback: Callable[[Any], None]) -> None:
        rid = next(self._rids)
        self._pending[rid] = _Req(P.Tag.TRANSFER_OPEN, None, callback)
        self._send(P.encode_bytes(P.TransferOpenMsg(rid, oid)))

    def read(
        self, oid: bytes, offset: int, dest: memoryview, callback: Callable[[Any], None]
    ) -> None:
        rid = next(self._rids)
        self._pending[rid] = _Req(P.Tag.TRANSFER_READ, dest, callback)
        self._send(P.encode_bytes(P.TransferReadMsg(rid, oid, offset, dest.nbytes)))

    def release(self, oid: bytes) -> None:
        self._send(P.encode_bytes(P.TransferReleaseMsg(oid)))

    def _send(self, frame: bytes) -> None:
        if self.closed:
            return
        if self.data is None:
            self._early.append(frame)
        else:
            self.data.send([frame])

    # --- the connection -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            sock, _peer = await connect_data(
                self.loop, self.holder, self._token, self._my_id, self._tls
            )
            self.data = DataSocket(self.loop, sock, self._write_failed)
            if self._early:
                self.data.send([b"".join(self._early)])
                self._early = []
            while True:
                await self._read_reply(self.data)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every failure ends the link the same way
            if not isinstance(e, OSError | ProtocolError):  # (timeouts are OSErrors)
                logger.exception("data link to %s:%s failed", *self.holder)  # a bug
            self._broken(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)

    async def _read_reply(self, data: DataSocket) -> None:
        msg, lens = await data.read_head(MAX_REPLY_HEADER)
        req = self._pending.pop(getattr(msg, "rid", -1), None)
        if req is None:
            raise ProtocolError(f"the holder answered {type(msg).__name__} to nothing asked")
        if isinstance(msg, P.TransferDataMsg) and req.kind == P.Tag.TRANSFER_READ:
            assert req.dest is not None
            if lens != [req.dest.nbytes]:
                raise ProtocolError(f"asked for {req.dest.nbytes} bytes, got {lens}")
            await data.read_into(req.dest)
            if self._on_bytes is not None:
                self._on_bytes(self, req.dest.nbytes)
            req.callback(None)
            await asyncio.sleep(0)  # a chunk at a time: the daemon's loop has other work
        elif lens:
            raise ProtocolError(f"{type(msg).__name__} came with raw data")
        elif isinstance(msg, P.TransferOpenedMsg) and req.kind == P.Tag.TRANSFER_OPEN:
            req.callback((int(msg.size), bytes(msg.meta)))
        elif isinstance(msg, P.TransferErrorMsg) and req.kind == P.Tag.TRANSFER_OPEN:
            req.callback(str(msg.reason))
        elif isinstance(msg, P.TransferErrorMsg):
            raise ProtocolError(f"the holder refused a read: {msg.reason}")
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__}")

    def _write_failed(self, exc: BaseException) -> None:
        self.loop.call_soon(self._broken, f"write failed: {exc}")
        if not self._task.done():
            self._task.cancel()

    def _broken(self, reason: str) -> None:
        if self.closed:
            return
        self._teardown()
        logger.info("data link to %s:%s ended: %s", *self.holder, reason)
        self._on_broken(self, reason)

    def _teardown(self) -> None:
        self.closed = True
        self._pending.clear()
        self._early = []
        if self.data is not None:
            self.data.close()

    def close(self) -> None:
        """Close from this side: no byte is written into any destination afterwards."""
        if self.closed:
            return
        self._task.cancel()  # cancels a read in progress before it lands more bytes
        self._teardown()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, return_exceptions=True)
        if self.data is not None:
            await self.data.wait_closed()
