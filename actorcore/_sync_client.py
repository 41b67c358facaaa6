"""A blocking, thread-safe request/reply client over the same framing and handshake.

Used for the object store's control calls (any thread may make them, the
event loop's own thread included) and by the ``actorcore`` command.
"""

from __future__ import annotations

import hmac
import os
import socket
import threading
from typing import Any

from . import _protocol as P
from ._transport import _RECV_SIZE, HANDSHAKE_TIMEOUT_S, _proof
from .errors import AuthenticationError, ConnectionBrokenError, ConnectionClosedError

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
    ) -> None:
        if isinstance(address, str):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(HANDSHAKE_TIMEOUT_S)
            self._sock.connect(address)
        else:
            self._sock = socket.create_connection(address, timeout=HANDSHAKE_TIMEOUT_S)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = threading.Lock()
        self._decoder = P.FrameDecoder(max_header_bytes, max_frame_bytes)
        self._stash: list[Any] = []
        self.closed = False
        try:
            self._handshake(token, role, my_id)
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(timeout)

    def _read(self) -> Any:
        while not self._stash:
            data = self._sock.recv(_RECV_SIZE)
            if not data:
                self.closed = True
                raise ConnectionBrokenError("the node daemon closed the store connection")
            self._stash.extend(self._decoder.feed(data))
        msg, _ = self._stash.pop(0)
        return msg

    def _handshake(self, token: bytes, role: str, my_id: bytes) -> None:
        hello = self._read()
        if not isinstance(hello, P.HelloMsg) or hello.version != P.PROTOCOL_VERSION:
            raise AuthenticationError("the server did not greet with a matching HELLO")
        nonce = os.urandom(16)
        proof = _proof(token, b"client", hello.nonce, role, my_id)
        self._sock.sendall(P.encode_bytes(P.AuthMsg(P.PROTOCOL_VERSION, role, my_id, nonce, proof)))
        reply = self._read()
        if isinstance(reply, P.RejectMsg):
            raise AuthenticationError(f"server refused the connection: {reply.reason}")
        want = _proof(token, b"server", nonce, hello.role, hello.peer_id)
        if not isinstance(reply, P.WelcomeMsg) or not hmac.compare_digest(want, reply.proof):
            raise AuthenticationError("server failed to prove the cluster token")

    def call(self, msg: Any, before: Any = None) -> Any:
        """Send a request and return its reply message (REPLY or ERROR_REPLY).

        ``before``: a one-way message to send ahead of it, in the same write.
        """
        frame = P.encode(msg)
        if before is not None:
            frame = _join(P.encode(before), frame)
        with self._lock:
            if self.closed:
                raise ConnectionClosedError("the store connection is closed")
            try:
                self._send(frame)
                while True:
                    reply = self._read()
                    if getattr(reply, "rid", None) == msg.rid:
                        return reply
            except OSError as e:
                self.closed = True
                raise ConnectionBrokenError(f"store connection broke: {e}") from e

    def send(self, msg: Any) -> None:
        """Send a one-way message."""
        frame = P.encode(msg)
        with self._lock:
            if self.closed:
                raise ConnectionClosedError("the store connection is closed")
            try:
                self._send(frame)
            except OSError as e:
                self.closed = True
                raise ConnectionBrokenError(f"store connection broke: {e}") from e

    def _send(self, frame: bytes | list[Any]) -> None:
        if isinstance(frame, list):
            for part in frame:
                self._sock.sendall(part)
        else:
            self._sock.sendall(frame)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._sock.close()
