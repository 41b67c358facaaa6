"""Lending a connection's reading to a thread that waits for the next frame.

A worker's executor thread with nothing to run may wait for its caller's next
frame on the socket itself, instead of the loop reading the frame and waking
the thread: two wake-ups per call become one (:mod:`._mailbox`). The loop
watches a private epoll that holds the socket; lending disarms the socket in
it (the loop is not woken, and does not spin on a readable socket), giving
back re-arms it. Both never touch the loop's own selector from another
thread. Frames are decoded under one lock by whoever reads, so their order
holds; frames the borrower does not handle go back to the loop, which
delivers them before it reads on.

:class:`LendableReading` is a part of :class:`._transport.Connection`.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable
from typing import Any

from .errors import ProtocolError

__all__ = ["RECV_SIZE", "TIMED_OUT", "LendableReading"]

logger = logging.getLogger(__name__)

RECV_SIZE = 1 << 18
TIMED_OUT: list[Any] = []  # read_lent: nothing came (a list no one fills)


class LendableReading:
    """The lending half of a connection (uses its socket, decoder, loop and receiver)."""

    # (set by the connection)
    _fd: int
    _on_readable: Callable[[], None]
    _decoder: Any
    _leftover: bytes
    _pending: Any
    _sock_open: bool
    closed: bool
    loop: Any
    receiver: Any
    sock: Any

    def _init_lending(self) -> None:
        self._ep: Any = None  # a private epoll holding the socket; the loop watches it
        self._read_lock = threading.RLock()
        self._lent = False  # another thread reads now; the loop does not
        self._lent_to = 0  # the thread that borrowed reading
        self._poller: Any = None  # the borrower's poll object
        self._lending = False  # enable_lending() was called

    def enable_lending(self) -> None:
        """Let other threads borrow reading (call on the loop thread; plain sockets only).

        The switch happens on the next loop turn: frames of the read being
        delivered now are all handed on before anyone else may read.
        """
        if self._lending or self.closed or self._pending is not None:
            return
        self._lending = True
        self.loop.call_soon(self._start_lending)

    def _start_lending(self) -> None:
        if self.closed or self._leftover:
            self._lending = False
            return
        ep = select.epoll()
        ep.register(self._fd, select.EPOLLIN)
        with self._read_lock:
            self._ep = ep
        self.loop.remove_reader(self._fd)
        self.loop.add_reader(ep.fileno(), self._on_readable)

    @property
    def lendable(self) -> bool:
        return self._ep is not None and not self.closed

    def lend(self) -> bool:
        """Take reading from the loop (a thread other than the loop's); False if not possible."""
        with self._read_lock:
            if self._ep is None or self._lent or self.closed or not self._sock_open:
                return False
            try:
                self._ep.modify(self._fd, 0)
            except (OSError, ValueError):
                return False
            self._lent = True
            self._lent_to = threading.get_ident()
            return True

    def read_lent(self, timeout_s: float) -> list[tuple[Any, list[bytes]]] | None:
        """(the borrower) Wait up to ``timeout_s`` for frames: the frames read, ``[]``
        (part of a frame came), or :data:`TIMED_OUT` (nothing came).

        None: reading went back to the loop (the connection ended or broke, or
        a send of the borrower waited for the peer; the loop reads on).
        """
        if not self._lent:
            return None
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self._fd, select.POLLIN)
        try:
            ready = poller.poll(timeout_s * 1000)
        except (OSError, ValueError):
            ready = [(self._fd, 0)]  # closed under us: the read below tells
        if not ready:
            return TIMED_OUT
        with self._read_lock:
            if not self._lent:
                return None
            if self.closed or not self._sock_open:
                self._lent = False
                return None
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return TIMED_OUT
            except OSError:
                data = b""
            if not data:  # the end: the loop reads it again and closes
                self._give_back_locked()
                return None
            try:
                return self._decoder.feed(data)
            except ProtocolError as e:
                self._lent = False  # the stream is unusable; the loop drops it
                self.loop.call_soon_threadsafe(self.receiver.on_protocol_error, self, e)
                return None

    def give_back(self, frames: list[tuple[Any, list[bytes]]] | None = None) -> None:
        """(the borrower) Return reading to the loop; ``frames`` (read but not handled)
        are delivered by the loop first, in order, before it reads on."""
        if frames:
            self.loop.call_soon_threadsafe(self._take_back, frames)
            return
        with self._read_lock:
            self._give_back_locked()

    def _give_back_locked(self) -> None:
        if not self._lent:
            return
        self._lent = False
        if self._sock_open:
            try:
                self._ep.modify(self._fd, select.EPOLLIN)
            except (OSError, ValueError):
                pass

    def _take_back(self, frames: list[tuple[Any, list[bytes]]]) -> None:
        with self._read_lock:
            receiver = self.receiver
            for msg, bufs in frames:
                if self.closed:
                    break
                try:
                    receiver.on_frame(self, msg, bufs)
                except Exception:
                    logger.exception("dispatching %s failed", type(msg).__name__)
            self._give_back_locked()
