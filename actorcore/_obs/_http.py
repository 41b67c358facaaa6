"""A web server that costs nothing until its first request.

The socket is bound when the node starts (so its address is known and
reported at once), but aiohttp is imported and the app built only when the
first connection knocks: an idle node that nobody watches does not pay for a
web stack in start-up time or memory.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["LazyHttpServer", "bind"]

logger = logging.getLogger(__name__)


def bind(host: str, port: int, fallback_any: bool = True) -> socket.socket:
    """A listening TCP socket on ``host:port``; a taken ``port`` falls back to any free one.

    Raises:
        OSError: the address cannot be bound at all.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        if not fallback_any or port == 0 or e.errno != errno.EADDRINUSE:
            sock.close()
            raise
        sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class LazyHttpServer:
    """Serves the aiohttp app that ``make_app()`` builds, from the first connection on."""

    def __init__(self, sock: socket.socket, make_app: Callable[[], Any], name: str) -> None:
        self.sock = sock
        self.make_app = make_app
        self.name = name
        self.port: int = sock.getsockname()[1]
        self.host: str = sock.getsockname()[0]
        self._runner: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the socket; the app starts when a connection waits on it."""
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._knock)

    def _knock(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.sock.fileno())
        self._starting = self._loop.create_task(self._start_app())

    async def _start_app(self) -> None:
        from aiohttp import web

        app = self.make_app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        self._runner = runner
        logger.info("%s serving on %s:%d", self.name, self.host, self.port)

    async def aclose(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._loop is not None and self._runner is None and self._starting is None:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
        if self._starting is not None:
            try:
                await self._starting
            except Exception as e:
                logger.warning("%s had failed to start: %r", self.name, e)
            self._starting = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self.sock.close()
