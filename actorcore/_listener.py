"""Accepting connections: a bounded number of unauthenticated sockets, each briefly.

Anyone who can reach the TCP port, or the abstract Unix socket (which has no
file permissions), can open a socket. Until it proves the cluster token it is
held only ``handshake_timeout_s`` and only ``max_pending_handshakes`` such
sockets at once: at the cap the oldest is dropped to make room for the newest
(an honest peer finishes its handshake in a few milliseconds, so it is never
the oldest for long).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from ._handshake import SERVER_HANDSHAKE_TIMEOUT_S, server_handshake
from ._transport import SEND_HIGH_WATER, SEND_MAX_QUEUED, Connection, Receiver, _tune
from .errors import AuthenticationError, ProtocolError

__all__ = ["MAX_PENDING_HANDSHAKES", "Listener", "PendingHandshakes"]

logger = logging.getLogger(__name__)

MAX_PENDING_HANDSHAKES = 64  # unauthenticated sockets a listener holds at once


class PendingHandshakes:
    """The handshakes of accepted, unauthenticated sockets: at most ``limit`` at once.

    At the cap the oldest is cancelled (its socket closed) to make room for the
    newest. Every listener that authenticates peers (this module's, the data
    listener of object transfer) keeps its handshakes here.
    """

    def __init__(self, limit: int = MAX_PENDING_HANDSHAKES) -> None:
        self.limit = max(1, limit)
        self.evicted = 0
        self._tasks: dict[asyncio.Task[Any], socket.socket] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def start(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, coro: Coroutine[Any, Any, Any]
    ) -> asyncio.Task[Any]:
        """Run ``coro`` (the handshake of ``sock``) as a task held here."""
        while len(self._tasks) >= self.limit:
            oldest = next(iter(self._tasks))
            del self._tasks[oldest]
            oldest.cancel()  # its socket closes as the cancellation lands
            self.evicted += 1
        task = loop.create_task(coro)
        self._tasks[task] = sock
        task.add_done_callback(functools.partial(self._done, sock))
        return task

    def _done(self, sock: socket.socket, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if task.cancelled():  # perhaps before it ever ran: close its socket here
            sock.close()

    def tasks(self) -> list[asyncio.Task[Any]]:
        return list(self._tasks)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


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
        max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
        handshake_timeout_s: float = SERVER_HANDSHAKE_TIMEOUT_S,
        high_water: int = SEND_HIGH_WATER,
        max_queued: int = SEND_MAX_QUEUED,
    ) -> None:
        self.loop = loop
        self._token = token
        self._role = role
        self._id = my_id
        self._make_receiver = make_receiver
        self._on_connection = on_connection
        self._limits = (max_header_bytes, max_frame_bytes)
        self._send_limits = (high_water, max_queued)
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
        # Unauthenticated sockets, oldest first. Anyone who can reach the port (or
        # the abstract Unix socket, which has no file permissions) can open them:
        # hold few, briefly; at the cap the oldest makes room for the newest.
        self._handshakes = PendingHandshakes(max_pending_handshakes)
        self._handshake_timeout = handshake_timeout_s
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
            self._handshakes.start(self.loop, sock, self._handshake(sock))

    @property
    def evicted(self) -> int:
        """Unauthenticated sockets dropped to make room for newer ones."""
        return self._handshakes.evicted

    @property
    def pending_handshakes(self) -> int:
        """Accepted sockets that have not authenticated yet."""
        return len(self._handshakes)

    async def _handshake(self, sock: socket.socket) -> None:
        try:
            peer_role, peer_id, leftover = await asyncio.wait_for(
                server_handshake(self.loop, sock, self._token, self._role, self._id),
                self._handshake_timeout,
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
            high_water=self._send_limits[0],
            max_queued=self._send_limits[1],
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
        self._handshakes.cancel_all()
