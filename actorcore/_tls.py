"""Mutual TLS for the links between machines (optional; issue 8, item 7).

With TLS on (``actorcore start --tls-cert F --tls-key F --tls-ca F``, or
``ACTORCORE_TLS_CERT``/``_KEY``/``_CA``), every TCP connection of the cluster
(daemon to daemon, object transfer, a driver or worker calling a process on
another node) starts with a TLS handshake in which *both* sides present a
certificate signed by the cluster's CA; a peer without one is dropped before
a single byte of it reaches the frame decoder. The token handshake still runs
inside the TLS session, so a certificate alone does not let anyone in.
Same-host links over abstract Unix sockets stay plain (they never leave the
machine).

Peers are authenticated by the CA, not by name: nodes are addressed by IP and
may move, so host names are not checked (as in a service mesh with a private
CA). Keep the CA private to the cluster.

:class:`TlsSocket` gives the subset of the socket interface the transports
use (``recv``/``recv_into``/``send``/``sendmsg``, non-blocking) on top of an
:class:`ssl.SSLSocket`: "want read/write" become :class:`BlockingIOError`, a
write that could not finish is retried with the same bytes (as OpenSSL
requires), and one lock keeps OpenSSL from being entered by two threads at
once (the transports write from any thread and read on the loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TlsContexts",
    "TlsOptions",
    "TlsSocket",
    "tls_accept",
    "tls_connect",
    "wait_io",
    "wrap_blocking",
]

_COALESCE = 256 * 1024  # small frames are joined into one TLS write up to this size
_MAX_WRITE = 4 << 20  # a large buffer goes out in slices of this size


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """Where this node's certificate, its key and the cluster's CA are (all or none)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    def check(self) -> None:
        """Raises ValueError unless all three files are given and readable (or none)."""
        if not self.enabled:
            return
        missing = [n for n in ("cert", "key", "ca") if not getattr(self, n)]
        if missing:
            raise ValueError(f"TLS needs --tls-cert, --tls-key and --tls-ca; missing {missing}")
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if not os.access(path, os.R_OK):
                raise ValueError(f"TLS {name} file {path!r} is not readable")

    def to_dict(self) -> dict[str, str | None]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TlsOptions:
        return cls(**(d or {}))


class TlsContexts:
    """The server and client contexts of one set of :class:`TlsOptions` (mutual TLS)."""

    _cache: dict[TlsOptions, TlsContexts] = {}  # one per process and options

    def __init__(self, options: TlsOptions) -> None:
        options.check()
        assert options.cert and options.key and options.ca
        self.options = options
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.check_hostname = False  # peers are known by the CA, not by name
        for ctx in (self.server, self.client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_cert_chain(options.cert, options.key)
            ctx.load_verify_locations(cafile=options.ca)
        self.server.num_tickets = 0  # no resumption: nothing arrives after the handshake

    @classmethod
    def load(cls, options: TlsOptions | dict[str, Any] | None) -> TlsContexts | None:
        """The contexts for ``options`` (None when TLS is off); loaded once per process.

        Raises:
            ValueError: incomplete options or unreadable files.
            ssl.SSLError: a file is not a certificate/key, or they do not match.
        """
        if not isinstance(options, TlsOptions):
            options = TlsOptions.from_dict(options)
        if not options.enabled:
            return None
        ctx = cls._cache.get(options)
        if ctx is None:
            ctx = cls._cache[options] = cls(options)
        return ctx


class TlsSocket:
    """A non-blocking TLS socket with the plain socket calls the transports make."""

    def __init__(self, ssock: ssl.SSLSocket) -> None:
        self._s = ssock
        self._lock = threading.Lock()
        self._retry: Any = None  # a write OpenSSL must see again, byte for byte
        self.family = ssock.family

    # --- plain passthroughs -------------------------------------------------------------

    def fileno(self) -> int:
        return self._s.fileno()

    def setblocking(self, flag: bool) -> None:
        self._s.setblocking(flag)

    def settimeout(self, t: float | None) -> None:
        self._s.settimeout(t)

    def setsockopt(self, *args: Any) -> None:
        self._s.setsockopt(*args)

    def getsockname(self) -> Any:
        return self._s.getsockname()

    def getpeername(self) -> Any:
        return self._s.getpeername()

    def shutdown(self, how: int) -> None:
        socket.socket.shutdown(self._s, how)  # not SSL_shutdown: never blocks

    def close(self) -> None:
        self._s.close()

    def pending(self) -> int:
        """Decrypted bytes held by OpenSSL (the socket is not readable for them)."""
        with self._lock:
            return self._s.pending()

    def version(self) -> str | None:
        return self._s.version()

    # --- reading ------------------------------------------------------------------------

    def recv(self, n: int) -> bytes:
        with self._lock:
            try:
                return self._s.recv(n)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise BlockingIOError from None
            except ssl.SSLZeroReturnError:
                return b""

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        with self._lock:
            try:
                return self._s.recv_into(buf, nbytes)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise BlockingIOError from None
            except ssl.SSLZeroReturnError:
                return 0

    # --- writing ------------------------------------------------------------------------

    def send(self, data: Any) -> int:
        return self.sendmsg([data])

    def sendmsg(self, buffers: list[Any]) -> int:
        """Write from the front of ``buffers``; returns the bytes taken.

        After a BlockingIOError the caller must offer the same bytes first again
        (it does: it only drops what a call reported taken).
        """
        with self._lock:
            buf = self._retry if self._retry is not None else _head(buffers)
            try:
                n = self._s.send(buf)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                self._retry = buf
                raise BlockingIOError from None
            self._retry = None
            return int(n)

    def sendall(self, data: Any) -> None:
        """Blocking mode only (the blocking client)."""
        with self._lock:
            self._s.sendall(data)


def _head(buffers: list[Any]) -> Any:
    """What one TLS write takes from the front of ``buffers``: small ones joined."""
    first = memoryview(buffers[0]).cast("B")
    if first.nbytes >= _COALESCE or len(buffers) == 1:
        return first[:_MAX_WRITE]
    parts = [first]
    size = first.nbytes
    for b in buffers[1:]:
        v = memoryview(b).cast("B")
        if size + v.nbytes > _COALESCE:
            break
        parts.append(v)
        size += v.nbytes
    return b"".join(parts) if len(parts) > 1 else first


async def wait_io(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    """Wait until ``fd`` is writable (``write``) or readable."""
    fut = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def _handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, ctx: ssl.SSLContext, server: bool
) -> TlsSocket:
    sock.setblocking(False)
    ssock = ctx.wrap_socket(sock, server_side=server, do_handshake_on_connect=False)
    try:
        while True:
            try:
                ssock.do_handshake()
                break
            except ssl.SSLWantReadError:
                await wait_io(loop, ssock.fileno(), False)
            except ssl.SSLWantWriteError:
                await wait_io(loop, ssock.fileno(), True)
    except BaseException:
        ssock.close()
        raise
    return TlsSocket(ssock)


async def tls_accept(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, tls: TlsContexts
) -> TlsSocket:
    """The server side of the TLS handshake on an accepted socket (``sock`` is taken).

    Raises:
        ssl.SSLError (an OSError): no certificate, or one the CA did not sign.
    """
    return await _handshake(loop, sock, tls.server, True)


async def tls_connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, tls: TlsContexts
) -> TlsSocket:
    """The client side of the TLS handshake on a connected socket (``sock`` is taken)."""
    return await _handshake(loop, sock, tls.client, False)


def wrap_blocking(sock: socket.socket, tls: TlsContexts) -> TlsSocket:
    """The client side for a blocking socket (its timeout applies to the handshake)."""
    ssock = tls.client.wrap_socket(sock, server_side=False)
    return TlsSocket(ssock)
