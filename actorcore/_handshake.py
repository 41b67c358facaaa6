"""The handshake every connection starts with: version, roles, and proof of the token.

The server greets with HELLO (its role, id and a nonce); the client answers
AUTH with an HMAC-SHA256 over that nonce and a nonce of its own; the server
answers WELCOME with its proof over the client's nonce, or REJECT. Frames are
decoded one at a time with tiny limits (nothing is allocated for a peer that
has not authenticated), and nothing a peer sent behind a failed AUTH is ever
decoded: it is dropped with the socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
from typing import Any

from . import _protocol as P
from ._tls import wait_io
from .errors import AuthenticationError, ConnectionBrokenError

__all__ = [
    "HANDSHAKE_MAX_BYTES",
    "HANDSHAKE_TIMEOUT_S",
    "SERVER_HANDSHAKE_TIMEOUT_S",
    "client_handshake",
    "proof",
    "server_handshake",
]

HANDSHAKE_TIMEOUT_S = 10.0  # a client waits this long for a server to let it in
SERVER_HANDSHAKE_TIMEOUT_S = 5.0  # a server gives an unauthenticated peer this long
HANDSHAKE_MAX_BYTES = 4096  # the largest handshake frame either side accepts


def proof(token: bytes, label: bytes, nonce: bytes, role: str, peer_id: bytes) -> bytes:
    """The HMAC that proves the token over ``nonce`` for ``role``/``peer_id``."""
    return hmac.new(token, label + nonce + role.encode() + peer_id, hashlib.sha256).digest()


def handshake_decoder() -> P.FrameDecoder:
    return P.FrameDecoder(HANDSHAKE_MAX_BYTES, HANDSHAKE_MAX_BYTES)


async def _recv(loop: asyncio.AbstractEventLoop, sock: Any, n: int) -> bytes:
    """Some bytes from a non-blocking socket (plain or :class:`~._tls.TlsSocket`)."""
    while True:
        try:
            return bytes(sock.recv(n))
        except (BlockingIOError, InterruptedError):
            await wait_io(loop, sock.fileno(), False)


async def _sendall(loop: asyncio.AbstractEventLoop, sock: Any, data: bytes) -> None:
    view = memoryview(data)
    while view.nbytes:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, InterruptedError):
            await wait_io(loop, sock.fileno(), True)


async def _read_one(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, decoder: P.FrameDecoder
) -> Any:
    """The next frame; bytes behind it stay undecoded in ``decoder``."""
    frames = decoder.feed(b"", 1)
    while not frames:
        data = await _recv(loop, sock, HANDSHAKE_MAX_BYTES)
        if not data:
            raise ConnectionBrokenError("peer closed the connection during the handshake")
        frames = decoder.feed(data, 1)
    return frames[0][0]


async def server_handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, token: bytes, role: str, my_id: bytes
) -> tuple[str, bytes, bytes]:
    """Authenticate an accepted socket. Returns ``(peer_role, peer_id, leftover)``.

    Raises:
        AuthenticationError: wrong token or protocol version (a RejectMsg was sent).
    """
    decoder = handshake_decoder()
    nonce = os.urandom(16)
    await _sendall(loop, sock, P.encode_bytes(P.HelloMsg(P.PROTOCOL_VERSION, role, my_id, nonce)))
    auth = await _read_one(loop, sock, decoder)
    if not isinstance(auth, P.AuthMsg):
        await _reject(loop, sock, "expected an AUTH message")
        raise AuthenticationError(f"peer sent {type(auth).__name__} instead of AUTH")
    if auth.version != P.PROTOCOL_VERSION:
        reason = f"protocol version {auth.version} is not {P.PROTOCOL_VERSION}"
        await _reject(loop, sock, reason)
        raise AuthenticationError(reason)
    want = proof(token, b"client", nonce, auth.role, auth.peer_id)
    if not hmac.compare_digest(want, auth.proof):
        await _reject(loop, sock, "wrong cluster token")
        raise AuthenticationError(f"{auth.role} {auth.peer_id.hex()} failed authentication")
    mine = proof(token, b"server", auth.nonce, role, my_id)
    await _sendall(loop, sock, P.encode_bytes(P.WelcomeMsg(mine)))
    return auth.role, auth.peer_id, decoder.take_rest()


async def _reject(loop: asyncio.AbstractEventLoop, sock: socket.socket, reason: str) -> None:
    try:
        await _sendall(loop, sock, P.encode_bytes(P.RejectMsg(reason)))
    except OSError:
        pass


async def client_handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, token: bytes, role: str, my_id: bytes
) -> tuple[str, bytes, bytes]:
    """Authenticate a connected socket. Returns ``(peer_role, peer_id, leftover)``."""
    decoder = handshake_decoder()
    hello = await _read_one(loop, sock, decoder)
    check_hello(hello)
    nonce = os.urandom(16)
    mine = proof(token, b"client", hello.nonce, role, my_id)
    await _sendall(
        loop, sock, P.encode_bytes(P.AuthMsg(P.PROTOCOL_VERSION, role, my_id, nonce, mine))
    )
    reply = await _read_one(loop, sock, decoder)
    check_welcome(reply, token, nonce, hello)
    return hello.role, hello.peer_id, decoder.take_rest()


def check_hello(hello: Any) -> None:
    """Raise AuthenticationError unless ``hello`` is a HELLO of our protocol version."""
    if not isinstance(hello, P.HelloMsg):
        raise AuthenticationError(f"server sent {type(hello).__name__} instead of HELLO")
    if hello.version != P.PROTOCOL_VERSION:
        raise AuthenticationError(
            f"server speaks protocol version {hello.version}, this is {P.PROTOCOL_VERSION}"
        )


def check_welcome(reply: Any, token: bytes, nonce: bytes, hello: P.HelloMsg) -> None:
    """Raise AuthenticationError unless ``reply`` welcomes us with a valid proof."""
    if isinstance(reply, P.RejectMsg):
        raise AuthenticationError(f"server refused the connection: {reply.reason}")
    if not isinstance(reply, P.WelcomeMsg):
        raise AuthenticationError(f"server sent {type(reply).__name__} instead of WELCOME")
    want = proof(token, b"server", nonce, hello.role, hello.peer_id)
    if not hmac.compare_digest(want, reply.proof):
        raise AuthenticationError("server failed to prove the cluster token")
