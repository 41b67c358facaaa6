"""A blocking, thread-safe request/reply client over the same framing and handshake.

Used for the object store's control calls (any thread may make them, the
event loop's own thread included) and by the ``actorcore`` command.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from . import _protocol as P
from ._handshake import (
    HANDSHAKE_TIMEOUT_S,
    check_hello,
    check_welcome,
    handshake_decoder,
    proof,
)
from .errors import AuthenticationError, ConnectionBrokenError, ConnectionClosedError

_RECV_SIZE = 1 << 18

__all__ = ["SyncClient"]


def _join(first: Any, second: Any) -> Any:
    if isinstance(first, bytes) and isinstance(second, bytes):
        return first + second
    return [
        *(first if isinstance(first, list) else [first]),
        *(second if isinstance(second, list) else [second]),
    ]


class SyncClient:
    """A blocking, thread-safe request/reply connection (one request at a time).

    Used for the object store's control calls, which any thread may make, the
    event loop's own thread included (a worker's async actor calling ``put``):
    the caller does the socket I/O itself, so it never waits on a loop.
    """

    def __init__(
        self,
        address: tuple[str, int] | str,
        *,
        token: bytes,
        role: str,
        my_id: bytes,
        max_header_bytes: int,
        max_frame_bytes: int,
        timeout: float = 300.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        if isinstance(address, str):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(handshake_timeout)
            self._sock.connect(address)
        else:
            self._sock = socket.create_connection(address, timeout=handshake_timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = threading.Lock()
        self._limits = (max_header_bytes, max_frame_bytes)
        self._decoder = handshake_decoder()
        self._stash: list[Any] = []
        self.closed = False
        try:
            self._handshake(token, role, my_id)
        except BaseException:
            self._sock.close()
            raise
        rest = self._decoder.take_rest()
        self._decoder = P.FrameDecoder(max_header_bytes, max_frame_bytes)
        self._stash.extend(self._decoder.feed(rest))
        self._sock.settimeout(timeout)

    def _read(self) -> Any:
        while not self._stash:
            data = self._sock.recv(_RECV_SIZE)
            if not data:
                raise ConnectionBrokenError("the node daemon closed the store connection")
            self._stash.extend(self._decoder.feed(data))
        msg, _ = self._stash.pop(0)
        return msg

    def _read_one(self) -> Any:
        """One handshake frame; whatever follows it stays undecoded."""
        frames = self._decoder.feed(b"", 1)
        while not frames:
            data = self._sock.recv(4096)
            if not data:
                raise AuthenticationError("the server closed the connection in the handshake")
            frames = self._decoder.feed(data, 1)
        return frames[0][0]

    def _handshake(self, token: bytes, role: str, my_id: bytes) -> None:
        hello = self._read_one()
        check_hello(hello)
        nonce = os.urandom(16)
        mine = proof(token, b"client", hello.nonce, role, my_id)
        self._sock.sendall(P.encode_bytes(P.AuthMsg(P.PROTOCOL_VERSION, role, my_id, nonce, mine)))
        check_welcome(self._read_one(), token, nonce, hello)

    def call(self, msg: Any, before: Any = None) -> Any:
        """Send a request and return its reply message (REPLY or ERROR_REPLY).

        ``before``: a one-way message to send ahead of it, in the same write.
        """
        frame = P.encode(msg)
        if before is not None:
            frame = _join(P.encode(before), frame)
        P.check_size(frame, *self._limits)
        with self._lock:
            if self.closed:
                raise ConnectionClosedError("the store connection is closed")
            try:
                self._send(frame)
                while True:
                    reply = self._read()
                    if getattr(reply, "rid", None) == msg.rid:
                        return reply
            except (OSError, ConnectionError) as e:
                return self._broke(e)

    def _broke(self, e: BaseException) -> Any:
        """The socket failed (or ``close`` shut it under a caller): end it; holds the lock."""
        closed_here = self.closed
        self.closed = True
        self._sock.close()
        if closed_here:
            raise ConnectionClosedError("the store connection was closed") from e
        raise ConnectionBrokenError(f"store connection broke: {e}") from e

    def send(self, msg: Any) -> None:
        """Send a one-way message."""
        frame = P.encode(msg)
        P.check_size(frame, *self._limits)
        with self._lock:
            if self.closed:
                raise ConnectionClosedError("the store connection is closed")
            try:
                self._send(frame)
            except OSError as e:
                self._broke(e)

    def _send(self, frame: bytes | list[Any]) -> None:
        if isinstance(frame, list):
            for part in frame:
                self._sock.sendall(part)
        else:
            self._sock.sendall(frame)

    def close(self) -> None:
        """Close; never blocks. A call in progress in another thread fails as closed."""
        self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
        except OSError:
            pass
        if self._lock.acquire(blocking=False):
            try:
                self._sock.close()
            finally:
                self._lock.release()
        # else: the thread holding the lock sees the shutdown and closes the socket
