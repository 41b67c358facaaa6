"""Transport: framed, authenticated connections over sockets.

A :class:`Connection` owns one non-blocking socket. Reads happen on the owning
event loop (``add_reader``) and hand whole frames to a receiver. Writes are
thread-safe: on the loop thread frames queued in one loop tick go out in one
write; from any other thread (a worker's executor, a driver's main thread) the
frame is written straight to the socket, so a blocking caller does not wait for
the loop to wake up. Anything left over waits for ``add_writer``.

Before a connection carries messages, both sides prove they hold the cluster
token (HMAC-SHA256 over each other's nonce); a peer that fails is dropped
before any message of it is decoded.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from . import _protocol as P
from .errors import AuthenticationError, ConnectionBrokenError, ConnectionClosedError, ProtocolError

__all__ = ["Connection", "Receiver", "client_handshake", "open_connection", "server_handshake"]

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
_HANDSHAKE_MAX = 4096
_RECV_SIZE = 1 << 18
_IOV_BATCH = 512  # frames handed to one sendmsg


class Receiver:
    """What a connection hands its frames and its end to."""

    def on_frame(self, conn: Connection, msg: Any, buffers: list[bytes]) -> None:
        raise NotImplementedError

    def on_protocol_error(self, conn: Connection, err: ProtocolError) -> None:
        conn.abort(err)

    def on_close(self, conn: Connection, exc: BaseException) -> None:
        pass


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Connection:
    """One authenticated, framed connection bound to an event loop."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        receiver: Receiver,
        *,
        peer_role: str,
        peer_id: bytes,
        max_header_bytes: int,
        max_frame_bytes: int,
        leftover: bytes = b"",
    ) -> None:
        self.sock = sock
        self.loop = loop
        self.receiver = receiver
        self.peer_role = peer_role
        self.peer_id = peer_id
        self.peer_address: list[Any] | None = None
        self.closed = False
        self.close_exc: BaseException | None = None
        self.state: dict[str, Any] = {}  # per-connection facts kept by upper layers
        self._fd = sock.fileno()
        self._decoder = P.FrameDecoder(max_header_bytes, max_frame_bytes)
        self._lock = threading.Lock()
        self._out: list[Any] = []
        self._armed = False  # a flush is scheduled or the writer is armed
        self._writer_on = False
        self._loop_thread = threading.get_ident()
        self._leftover = leftover

    def start(self) -> None:
        """Begin reading; call on the loop thread after the handshake."""
        self._loop_thread = threading.get_ident()
        self.loop.add_reader(self._fd, self._on_readable)
        if self._leftover:
            data, self._leftover = self._leftover, b""
            self._deliver(data)

    # --- writing ------------------------------------------------------------------

    def send(self, msg: Any, buffers: list[Any] | None = None) -> None:
        """Queue one message; thread-safe. Raises if the connection is closed."""
        self.send_raw(P.encode(msg, buffers))

    def send_raw(self, frame: bytes | list[Any]) -> None:
        with self._lock:
            if self.closed:
                raise self._closed_error()
            if isinstance(frame, list):
                self._out.extend(frame)
            else:
                self._out.append(frame)
            if self._armed:
                return
            self._armed = True
            if threading.get_ident() == self._loop_thread:
                self.loop.call_soon(self._flush)
                return
            # Another thread: write now rather than wait for the loop to wake.
            self._write_locked()

    def _flush(self) -> None:
        with self._lock:
            if not self.closed:
                self._write_locked()

    def _write_locked(self) -> None:
        out = self._out
        try:
            if len(out) == 1:
                n = self.sock.send(out[0])
            else:
                n = self.sock.sendmsg(out[:_IOV_BATCH])  # no copy into one buffer
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._out = []
            self._armed = False
            self.loop.call_soon_threadsafe(self._break, e)
            return
        self._consume(n)
        if self._out:
            if not self._writer_on:
                self._writer_on = True
                if threading.get_ident() == self._loop_thread:
                    self.loop.add_writer(self._fd, self._flush)
                else:
                    self.loop.call_soon_threadsafe(self._arm_writer)
        else:
            self._armed = False
            if self._writer_on:
                self._writer_on = False
                if threading.get_ident() == self._loop_thread:
                    self.loop.remove_writer(self._fd)
                else:
                    self.loop.call_soon_threadsafe(self._disarm_writer)

    def _consume(self, n: int) -> None:
        out = self._out
        i = 0
        while i < len(out) and n > 0:
            size = memoryview(out[i]).nbytes
            if n >= size:
                n -= size
                i += 1
            else:
                out[i] = memoryview(out[i])[n:]
                n = 0
        self._out = out[i:]

    def _arm_writer(self) -> None:
        with self._lock:
            if not self.closed and self._writer_on:
                self.loop.add_writer(self._fd, self._flush)

    def _disarm_writer(self) -> None:
        with self._lock:
            if not self.closed and not self._writer_on:
                self.loop.remove_writer(self._fd)

    # --- reading -----------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._break(e)
            return
        if not data:
            self._break(ConnectionResetError(errno.ECONNRESET, "peer closed the connection"))
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as e:
            self.receiver.on_protocol_error(self, e)
            return
        receiver = self.receiver
        for msg, bufs in frames:
            if self.closed:
                return
            try:
                receiver.on_frame(self, msg, bufs)
            except Exception:  # one bad dispatch must not lose the frames after it
                logger.exception("dispatching %s failed", type(msg).__name__)

    # --- closing -----------------------------------------------------------------------

    def _closed_error(self) -> Exception:
        if isinstance(self.close_exc, ConnectionBrokenError):
            return ConnectionBrokenError(str(self.close_exc))
        return ConnectionClosedError(f"connection to {self.peer_role} was closed")

    def _teardown(self, exc: BaseException) -> bool:
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            self.close_exc = exc
            self._out = []
        try:
            self.loop.remove_reader(self._fd)
            self.loop.remove_writer(self._fd)
        except Exception:  # the loop may already be closed
            pass
        self.sock.close()
        return True

    def _break(self, err: BaseException) -> None:
        exc = ConnectionBrokenError(f"connection to {self.peer_role} broke: {err}")
        if self._teardown(exc):
            self.receiver.on_close(self, exc)

    def abort(self, err: BaseException) -> None:
        """Drop the connection because of ``err`` (a protocol violation)."""
        exc = ConnectionBrokenError(f"connection to {self.peer_role} dropped: {err}")
        if self._teardown(exc):
            self.receiver.on_close(self, exc)

    def close(self) -> None:
        """Close from this side; idempotent. Pending requests fail as closed."""
        if threading.get_ident() != self._loop_thread and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.close)
                return
            except RuntimeError:
                pass
        self._flush_before_close()
        exc = ConnectionClosedError(f"connection to {self.peer_role} was closed")
        if self._teardown(exc):
            self.receiver.on_close(self, exc)

    def _flush_before_close(self) -> None:
        with self._lock:
            if self._out and not self.closed:
                try:
                    self.sock.setblocking(True)
                    self.sock.settimeout(1.0)
                    self.sock.sendall(b"".join(bytes(memoryview(b)) for b in self._out))
                except OSError:
                    pass
                self._out = []


# --- handshake ---------------------------------------------------------------------------


def _proof(token: bytes, label: bytes, nonce: bytes, role: str, peer_id: bytes) -> bytes:
    return hmac.new(token, label + nonce + role.encode() + peer_id, hashlib.sha256).digest()


async def _read_one(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, decoder: P.FrameDecoder, stash: list[Any]
) -> Any:
    while not stash:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise ConnectionBrokenError("peer closed the connection during the handshake")
        stash.extend(decoder.feed(data))
    msg, _ = stash.pop(0)
    return msg


def _leftover(decoder: P.FrameDecoder, stash: list[Any]) -> bytes:
    if stash:
        raise ProtocolError("peer sent messages before the handshake finished")
    buf = decoder._buf  # what arrived after the last handshake frame
    return bytes(buf[decoder._pos :])


async def server_handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, token: bytes, role: str, my_id: bytes
) -> tuple[str, bytes, bytes]:
    """Authenticate an accepted socket. Returns ``(peer_role, peer_id, leftover)``.

    Raises:
        AuthenticationError: wrong token or protocol version (a RejectMsg was sent).
    """
    decoder = P.FrameDecoder(_HANDSHAKE_MAX, _HANDSHAKE_MAX)
    stash: list[Any] = []
    nonce = os.urandom(16)
    await loop.sock_sendall(
        sock, P.encode_bytes(P.HelloMsg(P.PROTOCOL_VERSION, role, my_id, nonce))
    )
    auth = await _read_one(loop, sock, decoder, stash)
    if not isinstance(auth, P.AuthMsg):
        await _reject(loop, sock, "expected an AUTH message")
        raise AuthenticationError(f"peer sent {type(auth).__name__} instead of AUTH")
    if auth.version != P.PROTOCOL_VERSION:
        reason = f"protocol version {auth.version} is not {P.PROTOCOL_VERSION}"
        await _reject(loop, sock, reason)
        raise AuthenticationError(reason)
    want = _proof(token, b"client", nonce, auth.role, auth.peer_id)
    if not hmac.compare_digest(want, auth.proof):
        await _reject(loop, sock, "wrong cluster token")
        raise AuthenticationError(f"{auth.role} {auth.peer_id.hex()} failed authentication")
    proof = _proof(token, b"server", auth.nonce, role, my_id)
    await loop.sock_sendall(sock, P.encode_bytes(P.WelcomeMsg(proof)))
    return auth.role, auth.peer_id, _leftover(decoder, stash)


async def _reject(loop: asyncio.AbstractEventLoop, sock: socket.socket, reason: str) -> None:
    try:
        await loop.sock_sendall(sock, P.encode_bytes(P.RejectMsg(reason)))
    except OSError:
        pass


async def client_handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, token: bytes, role: str, my_id: bytes
) -> tuple[str, bytes, bytes]:
    """Authenticate a connected socket. Returns ``(peer_role, peer_id, leftover)``."""
    decoder = P.FrameDecoder(_HANDSHAKE_MAX, _HANDSHAKE_MAX)
    stash: list[Any] = []
    hello = await _read_one(loop, sock, decoder, stash)
    if not isinstance(hello, P.HelloMsg):
        raise AuthenticationError(f"server sent {type(hello).__name__} instead of HELLO")
    if hello.version != P.PROTOCOL_VERSION:
        raise AuthenticationError(
            f"server speaks protocol version {hello.version}, this is {P.PROTOCOL_VERSION}"
        )
    nonce = os.urandom(16)
    proof = _proof(token, b"client", hello.nonce, role, my_id)
    await loop.sock_sendall(
        sock, P.encode_bytes(P.AuthMsg(P.PROTOCOL_VERSION, role, my_id, nonce, proof))
    )
    reply = await _read_one(loop, sock, decoder, stash)
    if isinstance(reply, P.RejectMsg):
        raise AuthenticationError(f"server refused the connection: {reply.reason}")
    if not isinstance(reply, P.WelcomeMsg):
        raise AuthenticationError(f"server sent {type(reply).__name__} instead of WELCOME")
    want = _proof(token, b"server", nonce, hello.role, hello.peer_id)
    if not hmac.compare_digest(want, reply.proof):
        raise AuthenticationError("server failed to prove the cluster token")
    return hello.role, hello.peer_id, _leftover(decoder, stash)


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    address: tuple[str, int] | str,
    receiver: Receiver,
    *,
    token: bytes,
    role: str,
    my_id: bytes,
    max_header_bytes: int,
    max_frame_bytes: int,
) -> Connection:
    """Connect, authenticate and start reading.

    Raises:
        ConnectionRefusedError/OSError: the peer is not listening.
        AuthenticationError: the handshake failed.
    """
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        _tune(sock)
        await loop.sock_connect(sock, address)
        peer_role, peer_id, leftover = await asyncio.wait_for(
            client_handshake(loop, sock, token, role, my_id), HANDSHAKE_TIMEOUT_S
        )
    except BaseException:
        sock.close()
        raise
    conn = Connection(
        sock,
        loop,
        receiver,
        peer_role=peer_role,
        peer_id=peer_id,
        max_header_bytes=max_header_bytes,
        max_frame_bytes=max_frame_bytes,
        leftover=leftover,
    )
    conn.start()
    return conn


class Listener:
    """Accepts sockets, authenticates them, and hands each to ``on_connection``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        token: bytes,
        role: str,
        my_id: bytes,
        make_receiver: Callable[[], Receiver],
        on_connection: Callable[[Connection], None],
        max_header_bytes: int,
        max_frame_bytes: int,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        unix_name: str | None = None,
    ) -> None:
        self.loop = loop
        self._token = token
        self._role = role
        self._id = my_id
        self._make_receiver = make_receiver
        self._on_connection = on_connection
        self._limits = (max_header_bytes, max_frame_bytes)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        self._sock = sock
        self._sock.setblocking(False)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        # Same-host peers use a Unix socket (abstract namespace: nothing to clean up).
        self.unix_name = unix_name or f"\0actorcore-{my_id.hex()}-{os.getpid()}"
        self._usock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._usock.bind(self.unix_name)
        self._usock.listen(1024)
        self._usock.setblocking(False)
        self._handshakes: set[asyncio.Task[None]] = set()
        self.rejected = 0
        self._closed = False

    def start(self) -> None:
        self.loop.add_reader(self._sock.fileno(), self._on_accept, self._sock)
        self.loop.add_reader(self._usock.fileno(), self._on_accept, self._usock)

    def _on_accept(self, listening: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, _addr = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                logger.warning("accept failed: %s", e)
                return
            _tune(sock)
            task = self.loop.create_task(self._handshake(sock))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket) -> None:
        try:
            peer_role, peer_id, leftover = await asyncio.wait_for(
                server_handshake(self.loop, sock, self._token, self._role, self._id),
                HANDSHAKE_TIMEOUT_S,
            )
        except (AuthenticationError, ProtocolError, OSError, ConnectionError, TimeoutError) as e:
            self.rejected += 1
            logger.warning("refused a connection: %s", e)
            sock.close()
            return
        except BaseException:
            sock.close()
            raise
        conn = Connection(
            sock,
            self.loop,
            self._make_receiver(),
            peer_role=peer_role,
            peer_id=peer_id,
            max_header_bytes=self._limits[0],
            max_frame_bytes=self._limits[1],
            leftover=leftover,
        )
        conn.start()
        self._on_connection(conn)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in (self._sock, self._usock):
            try:
                self.loop.remove_reader(sock.fileno())
            except Exception:
                pass
            sock.close()
        for t in list(self._handshakes):
            t.cancel()


_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "", socket.gethostname()}


def best_address(address: Any) -> tuple[str, int] | str:
    """Where to connect to a peer ``(id, host, port[, unix name])``: its Unix socket
    when it is on this host, else TCP."""
    if len(address) > 3 and address[3] and address[1] in _LOCAL_HOSTS:
        return str(address[3])
    return (address[1], address[2])
