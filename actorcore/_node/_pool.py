"""The node daemon's handle on its fork server and the worker processes it made."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["WorkerPool"]

logger = logging.getLogger(__name__)


class WorkerPool:
    """Asks the fork server for workers, learns their pids and their exits."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        zygote_pid: int,
        on_exit: Callable[[int, int], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.zygote_pid = zygote_pid
        self.on_exit = on_exit
        self.pids: set[int] = set()  # live workers, registered or not
        self.env_of: dict[int, str] = {}  # worker pid -> its runtime env's hash (if any)
        self._buf = b""
        # done once the fork server has its modules imported (or is gone)
        self.ready: asyncio.Future[None] = loop.create_future()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)
        self.closed = False

    def start(self, n: int, env: dict[str, Any] | None = None) -> None:
        """Fork ``n`` workers; ``env``: a runtime env's ``WorkerEnv.boot()`` to apply."""
        if self.closed or n <= 0:
            return
        if env is None:
            request = b"F" * n
        else:
            blob = json.dumps({**env, "count": n}).encode()
            request = b"E" + struct.pack("<I", len(blob)) + blob
        try:
            self.sock.sendall(request)
        except OSError as e:
            logger.error("the fork server is gone: %s", e)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if not self.ready.done():
                self.ready.set_result(None)  # (whoever waits for it goes on: it logs why)
            self.loop.remove_reader(self.sock.fileno())
            if not self.closed:
                logger.error("the fork server exited")
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            kind, pid_s, *rest = line.decode().split()
            pid = int(pid_s)
            if kind == "R":
                if not self.ready.done():
                    self.ready.set_result(None)
            elif kind == "P":
                self.pids.add(pid)
                if rest:
                    self.env_of[pid] = rest[0]
            elif kind == "X":
                self.pids.discard(pid)
                self.on_exit(pid, int(rest[0]) if rest else -1)
                self.env_of.pop(pid, None)

    def kill(self, pid: int) -> None:
        if pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Kill every worker and the fork server."""
        if self.closed:
            return
        self.closed = True
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.loop.remove_reader(self.sock.fileno())
        except Exception:
            pass
        try:
            os.kill(self.zygote_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.zygote_pid, 0)
        except ChildProcessError:
            pass
        self.sock.close()
