"""The holder's side of object transfer: the data listener and one connection per puller.

A puller first OPENs an object: the connection pins it in the store (a
spilled object is restored first) and answers with its size and layout. Its
READs then go through the node's serve budget (:class:`store._serve.ServeState`,
kept by the transfer service); a granted READ is answered by a frame whose raw
buffer is a memoryview of the arena, handed to ``sendmsg`` as it is. A RELEASE
unpins once no chunk of that object is still queued. When the connection ends,
every pin it holds is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._handshake import SERVER_HANDSHAKE_TIMEOUT_S, server_handshake
from ._listener import PendingHandshakes
from ._tls import TlsContexts, tls_accept
from ._transfer_link import ROLE, DataSocket
from .errors import AuthenticationError, ProtocolError

if TYPE_CHECKING:
    from ._node import StoreService

__all__ = ["DataListener", "ServeConnection"]

logger = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024  # requests are small; anything bigger is a protocol error


class _Opened:
    __slots__ = ("offset", "pins", "sending", "size")

    def __init__(self, offset: int, size: int) -> None:
        self.offset = offset
        self.size = size
        self.pins = 0  # OPENs not RELEASEd yet
        self.sending = 0  # READs accepted and not sent yet


class ServeConnection:
    """One puller's data connection, on the holder."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        peer_id: bytes,
        leftover: bytes,
        *,
        store: StoreService,
        on_read: Callable[[ServeConnection, P.TransferReadMsg], None],
        on_closed: Callable[[ServeConnection], None],
        write_timeout: float | None = None,
        on_opened: Callable[[ServeConnection, bytes], None] | None = None,
    ) -> None:
        self.loop = loop
        self._on_opened = on_opened
        self.peer_id = peer_id
        self.store = store
        self.pin_id = b"transfer-" + os.urandom(8)
        self.opened: dict[bytes, _Opened] = {}
        self._on_read = on_read
        self._on_closed = on_closed
        self._decoder = P.FrameDecoder(MAX_REQUEST, MAX_REQUEST)
        self._opens: set[asyncio.Task[None]] = set()
        self.closed = False
        self.data = DataSocket(loop, sock, self._write_failed, write_timeout)
        self._task = loop.create_task(self._run(leftover))

    # --- requests ------------------------------------------------------------------------

    async def _run(self, leftover: bytes) -> None:
        try:
            data = leftover
            while True:
                for msg, bufs in self._decoder.feed(data):
                    if bufs:
                        raise ProtocolError(f"{type(msg).__name__} came with raw data")
                    self._dispatch(msg)
                data = await self.data.read_some(MAX_REQUEST)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.info("transfer connection from %s ended: %s", self.peer_id.hex(), e)
            self.close()

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, P.TransferReadMsg):
            self._read(msg)
        elif isinstance(msg, P.TransferOpenMsg):
            task = self.loop.create_task(self._open(msg))
            self._opens.add(task)
            task.add_done_callback(self._opens.discard)
        elif isinstance(msg, P.TransferReleaseMsg):
            self._release(msg.oid)
        else:
            raise ProtocolError(f"{type(msg).__name__} is not a transfer request")

    async def _open(self, msg: P.TransferOpenMsg) -> None:
        try:
            loc = await self.store.open(msg.oid, self.pin_id)
        except Exception as e:  # e.g. no room to restore a spilled copy
            self._reply(P.TransferErrorMsg(msg.rid, f"cannot open the object here: {e}"))
            return
        if loc is None:
            self._reply(P.TransferErrorMsg(msg.rid, "this node has no copy of the object"))
            return
        if self.closed:  # the pin came after the connection's pins were dropped
            self.store.release([msg.oid], self.pin_id)
            return
        offset, size, meta = loc
        rec = self.opened.get(msg.oid)
        if rec is None:
            rec = self.opened[msg.oid] = _Opened(offset, size)
            if self._on_opened is not None:  # (the copy's owner learns of it at its end)
                self._on_opened(self, msg.oid)
        rec.pins += 1
        self._reply(P.TransferOpenedMsg(msg.rid, size, meta))

    def _read(self, msg: P.TransferReadMsg) -> None:
        rec = self.opened.get(msg.oid)
        if rec is None or not rec.pins:
            self._reply(P.TransferErrorMsg(msg.rid, "read of an object not opened"))
        elif msg.offset < 0 or msg.length <= 0 or msg.offset + msg.length > rec.size:
            why = f"read of [{msg.offset}, +{msg.length}) outside an object of {rec.size} bytes"
            self._reply(P.TransferErrorMsg(msg.rid, why))
        else:
            rec.sending += 1
            self._on_read(self, msg)

    def _release(self, oid: bytes) -> None:
        rec = self.opened.get(oid)
        if rec is None or not rec.pins:
            return
        rec.pins -= 1
        self._maybe_unpin(oid, rec)

    def _maybe_unpin(self, oid: bytes, rec: _Opened) -> None:
        if not rec.pins and not rec.sending:
            del self.opened[oid]
            self.store.release([oid], self.pin_id)

    # --- answers ---------------------------------------------------------------------------

    def _reply(self, msg: Any) -> None:
        self.data.send([P.encode_bytes(msg)])

    def refuse(self, rid: int, oid: bytes, reason: str) -> None:
        """The serve budget refused a read."""
        self._reply(P.TransferErrorMsg(rid, reason))
        self._sent(oid)

    def send_chunk(
        self, rid: int, oid: bytes, offset: int, length: int, done: Callable[[], None]
    ) -> None:
        """Send a granted chunk straight from the arena; ``done()`` once the kernel has it."""
        rec = self.opened.get(oid)
        if self.closed or rec is None:
            done()
            return
        start = rec.offset + offset
        view = self.store.arena.array()[start : start + length].data
        parts = P.encode(P.TransferDataMsg(rid), [view])
        assert isinstance(parts, list)

        def sent() -> None:
            self._sent(oid)
            done()

        self.data.send(parts, sent)

    def _sent(self, oid: bytes) -> None:
        rec = self.opened.get(oid)
        if rec is not None:
            rec.sending -= 1
            self._maybe_unpin(oid, rec)

    # --- closing ---------------------------------------------------------------------------

    def _write_failed(self, exc: BaseException) -> None:
        why = "it read nothing for too long" if isinstance(exc, TimeoutError) else exc
        logger.info("transfer connection from %s broke: %s", self.peer_id.hex(), why)
        self.loop.call_soon(self.close)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._task.cancel()
        for t in self._opens:
            t.cancel()
        self.data.close()
        self.opened.clear()
        self.store.client_gone(self.pin_id)
        self._on_closed(self)

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, *self._opens, return_exceptions=True)
        await self.data.wait_closed()


class DataListener:
    """Accepts data connections and authenticates them (role ``transfer`` only)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        host: str,
        port: int,
        token: bytes,
        my_id: bytes,
        on_connection: Callable[[socket.socket, bytes, bytes], None],
        tls: TlsContexts | None = None,
    ) -> None:
        self.loop = loop
        self._tls = tls
        self._token = token
        self._id = my_id
        self._on_connection = on_connection
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(256)
        self._sock.setblocking(False)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._handshakes = PendingHandshakes()  # few unauthenticated sockets, briefly
        self.rejected = 0
        self._closed = False

    def start(self) -> None:
        self.loop.add_reader(self._sock.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        for _ in range(64):
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                logger.warning("accept failed: %s", e)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshakes.start(self.loop, sock, self._handshake(sock))

    async def _handshake(self, sock: Any) -> None:
        try:
            async with asyncio.timeout(SERVER_HANDSHAKE_TIMEOUT_S):
                if self._tls is not None:
                    sock = await tls_accept(self.loop, sock, self._tls)
                role, peer_id, leftover = await server_handshake(
                    self.loop, sock, self._token, ROLE, self._id
                )
            if role != ROLE:
                raise AuthenticationError(f"a {role} may not open a data connection")
        except (AuthenticationError, ProtocolError, OSError, TimeoutError) as e:
            self.rejected += 1
            logger.warning("refused a data connection: %s", e)
            sock.close()
            return
        except BaseException:
            sock.close()
            raise
        self._on_connection(sock, peer_id, leftover)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.remove_reader(self._sock.fileno())
        except Exception:
            pass
        self._sock.close()
        self._handshakes.cancel_all()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._handshakes.tasks(), return_exceptions=True)
