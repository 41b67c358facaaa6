"""Transport: framed, authenticated connections over sockets.

A :class:`Connection` owns one non-blocking socket. Reads happen on the owning
event loop (``add_reader``) and hand whole frames to a receiver. Writes are
thread-safe: on the loop thread frames queued in one loop tick go out in one
write; from any other thread (a worker's executor, a driver's main thread) the
frame is written straight to the socket, so a blocking caller does not wait for
the loop to wake up. Anything left over waits for ``add_writer``. A caller
waiting for the reply to its own call may read the socket itself
(:mod:`._caller_read`): the loop then stops watching it for a while and
delivers the frames that caller read, in order (``handed``).

Back-pressure: what a peer has not read yet is bounded. Above the high-water
mark a plain thread that sends waits (off any loop) for the peer to read, a
coroutine may ``await conn.drain()``, and a loop thread, which must not block,
drops the connection once the hard cap is reached (the peer is not reading).
Frames over the size limits are refused at the sender with
:class:`MessageTooLargeError`. ``close()`` never blocks: what is still queued
drains in the background for a short while.

Before a connection carries messages, both sides prove they hold the cluster
token (:mod:`._handshake`); a peer that fails is dropped before any message
of it is decoded. A listener holds a bounded number of unauthenticated
sockets, each for a short deadline.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import select
import socket
import threading
import time
from typing import Any

from . import _protocol as P
from ._handshake import HANDSHAKE_TIMEOUT_S, client_handshake, server_handshake
from ._lending import RECV_SIZE, TIMED_OUT, LendableReading
from ._tls import TlsContexts, tls_connect
from .errors import ConnectionBrokenError, ConnectionClosedError, ProtocolError

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "TIMED_OUT",
    "Connection",
    "Listener",
    "Receiver",
    "best_address",
    "client_handshake",
    "open_connection",
    "server_handshake",
]

logger = logging.getLogger(__name__)

_RECV_SIZE = RECV_SIZE
_IOV_BATCH = 512  # frames handed to one sendmsg

SEND_HIGH_WATER = 64 << 20  # queued bytes above which senders wait for the peer
SEND_MAX_QUEUED = 512 << 20  # a loop thread cannot wait: the connection drops here
SEND_STALL_S = 60.0  # a waiting thread gives up on a peer that read nothing this long
CLOSE_LINGER_S = 2.0  # a closed connection drains what it queued for this long
READ_BACK_S = 0.002  # the loop takes reading back once no caller thread read this long
BROKEN = object()  # in ``handed``: the connection ended while a caller thread read it


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


def _nbytes(frame: Any) -> int:
    return len(frame) if isinstance(frame, bytes) else memoryview(frame).nbytes


class Connection(LendableReading):
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
        high_water: int = SEND_HIGH_WATER,
        max_queued: int = SEND_MAX_QUEUED,
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
        self._limits = (max_header_bytes, max_frame_bytes)
        self._decoder = P.FrameDecoder(max_header_bytes, max_frame_bytes)
        self._lock = threading.Lock()
        self._out: list[Any] = []
        self._out_bytes = 0
        self._high = high_water
        self._max = max(max_queued, high_water)
        self._drainers: list[asyncio.Future[None]] = []
        self._armed = False  # a flush is scheduled or the writer is armed
        self._writer_on = False
        self._sock_open = True  # the socket outlives ``closed`` while a close drains
        self._loop_thread = threading.get_ident()
        self._leftover = leftover
        # a TLS socket may hold decrypted bytes the fd no longer signals
        self._pending = getattr(sock, "pending", None)
        self._init_lending()
        # Reading: the loop's reader, or a caller waiting for its reply (._caller_read).
        # read_lock is held by whoever reads the socket and decodes (the loop re-enters
        # it when closing the socket).
        self.read_lock = threading.RLock()
        self.caller_reading = False
        self.claim: Any = None  # a caller's event loop reading its reply (see ._caller_read)
        self.handed: collections.deque[Any] = collections.deque()  # read off-loop, for the loop
        self.handed_rids: set[int] = set()  # replies among them, not delivered yet
        self._delivering = False  # the loop delivers ``handed`` now
        self._reader_paused = False  # the loop's reader is off while caller threads read
        self.caller_reads = 0  # reads by caller threads (the loop looks whether it moved)
        self._seen_reads = 0
        self.close_deferred = False  # a caller thread read when the socket was to close

    def start(self) -> None:
        """Begin reading; call on the loop thread after the handshake.

        Frames that came in behind the handshake are delivered on the next loop
        turn, not here: whoever started the connection wires it up first (a
        handler's reply goes out through ``peer.conn``, which a listener's
        ``on_connection`` sets; a reply sent before that was dropped). Reading
        resumes after them, so the order holds.
        """
        self._loop_thread = threading.get_ident()
        if self._leftover:
            self.loop.call_soon(self._deliver_leftover)
        else:
            self.loop.add_reader(self._fd, self._on_readable)
            if self._pending is not None and self._pending():
                self.loop.call_soon(self._on_readable)  # TLS: decrypted bytes already held

    def _deliver_leftover(self) -> None:
        if self.closed:
            return
        data, self._leftover = self._leftover, b""
        self.loop.add_reader(self._fd, self._on_readable)
        self._deliver(data)
        if self._pending is not None and not self.closed and self._pending():
            self.loop.call_soon(self._on_readable)

    @property
    def queued_bytes(self) -> int:
        """Bytes sent on this connection that the peer has not taken yet."""
        return self._out_bytes

    @property
    def congested(self) -> bool:
        """More than the high-water mark is queued: coroutine writers should
        ``await drain()`` before sending more."""
        return self._out_bytes > self._high

    # --- writing ------------------------------------------------------------------

    def send(self, msg: Any, buffers: list[Any] | None = None, alone: bool = False) -> None:
        """Queue one message; thread-safe.

        ``alone``: the loop thread sends nothing else this turn (a reply to the only
        call running): written at once when nothing is queued, not at the turn's end.

        Raises:
            ConnectionClosedError/ConnectionBrokenError: the connection ended.
            MessageTooLargeError: the message is over the frame limits.
        """
        self.send_raw(P.encode(msg, buffers), alone)

    def send_all(self, msgs: list[Any]) -> None:
        """Queue several messages without buffers, in order, as one write; thread-safe.

        Raises as :meth:`send` (then none of them was queued).
        """
        frames = P.encode_all(msgs, *self._limits)
        self._queue(frames, len(frames))

    def send_raw(self, frame: bytes | list[Any], alone: bool = False) -> None:
        self._queue(frame, P.check_size(frame, *self._limits), alone)

    def _queue(self, frame: bytes | list[Any], size: int, alone: bool = False) -> None:
        with self._lock:
            if self.closed:
                raise self._closed_error()
            if (
                not self._armed
                and type(frame) is bytes
                and (alone or threading.get_ident() != self._loop_thread)
            ):
                # Another thread (or a lone frame) and nothing queued: write now rather
                # than wait for the loop to wake or to end its turn (what does not fit
                # waits below, as any frame).
                try:
                    n = self.sock.send(frame)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    n = 0  # the write below meets the error again and reports it
                if n == size:
                    return
                if n:
                    frame = memoryview(frame)[n:]  # type: ignore[assignment]
                    size -= n
            if isinstance(frame, list):
                self._out.extend(frame)
            else:
                self._out.append(frame)
            self._out_bytes += size
            if not self._armed:
                self._armed = True
                if threading.get_ident() == self._loop_thread:
                    self.loop.call_soon(self._flush)
                else:
                    # Another thread: write now rather than wait for the loop to wake.
                    self._write_locked()
            over = self._out_bytes > self._high
        if over:
            self._over_high_water()

    def _flush(self) -> None:
        with self._lock:
            if self._sock_open:
                self._write_locked()

    def _write_locked(self) -> None:
        out = self._out
        if not out:
            n = 0
        else:
            try:
                if len(out) == 1:
                    n = self.sock.send(out[0])
                else:
                    n = self.sock.sendmsg(out[:_IOV_BATCH])  # no copy into one buffer
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._out = []
                self._out_bytes = 0
                self._armed = False
                self.loop.call_soon_threadsafe(self._write_failed, e)
                return
        if n:
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
            if self.closed and self._sock_open:  # a close was draining: done
                self.loop.call_soon_threadsafe(self._close_socket)
        if self._drainers and self._out_bytes <= self._high // 2:
            self.loop.call_soon_threadsafe(self._wake_drainers, None)

    def _write_failed(self, err: OSError) -> None:
        self._break(err)
        self._close_socket()

    def _consume(self, n: int) -> None:
        if n == self._out_bytes:  # all of it went (the common case)
            self._out = []
            self._out_bytes = 0
            return
        self._out_bytes -= n
        out = self._out
        i = 0
        while i < len(out) and n > 0:
            size = _nbytes(out[i])
            if n >= size:
                n -= size
                i += 1
            else:
                out[i] = memoryview(out[i])[n:]
                n = 0
        self._out = out[i:]

    def _arm_writer(self) -> None:
        with self._lock:
            if self._sock_open and self._writer_on:
                self.loop.add_writer(self._fd, self._flush)

    def _disarm_writer(self) -> None:
        with self._lock:
            if self._sock_open and not self._writer_on:
                self.loop.remove_writer(self._fd)

    # --- back-pressure -------------------------------------------------------------------

    def _over_high_water(self) -> None:
        """More than the high-water mark is queued: wait off-loop, or drop at the cap."""
        if self._lent and self._lent_to == threading.get_ident():
            self.give_back()  # the peer may wait for us to read before it reads
        if threading.get_ident() == self._loop_thread or asyncio._get_running_loop() is not None:
            if self._out_bytes > self._max:
                err = ConnectionBrokenError(
                    f"{self.peer_role} is not reading: {self._out_bytes} bytes queued"
                )
                self.loop.call_soon_threadsafe(self.abort, err)
                raise err
            return
        self._wait_writable()

    def _wait_writable(self) -> None:
        """Write from this (non-loop) thread until the peer took enough, or give up."""
        deadline = time.monotonic() + SEND_STALL_S
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while True:
            with self._lock:
                if self.closed and not self._sock_open:
                    raise self._closed_error()
                if self._out_bytes <= self._high // 2:
                    return
                self._write_locked()
                if self._out_bytes <= self._high // 2:
                    return
            if time.monotonic() > deadline:
                err = ConnectionBrokenError(
                    f"{self.peer_role} read nothing for {SEND_STALL_S} s "
                    f"({self._out_bytes} bytes queued)"
                )
                self.loop.call_soon_threadsafe(self.abort, err)
                raise err
            poller.poll(100)

    async def drain(self) -> None:
        """Wait until the peer took most of what is queued (for coroutine writers).

        Raises:
            ConnectionClosedError/ConnectionBrokenError: the connection ended.
        """
        if self._out_bytes <= self._high:
            return
        fut = self.loop.create_future()
        self._drainers.append(fut)
        await fut

    def _wake_drainers(self, exc: BaseException | None) -> None:
        if exc is None and self._out_bytes > self._high // 2:
            return
        drainers, self._drainers = self._drainers, []
        for fut in drainers:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

    # --- reading -----------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._ep is not None:  # a worker's actor thread may borrow reading (_lending)
            with self._read_lock:  # frames are delivered in order, whoever reads
                if not self._lent:
                    self._read_and_deliver()
            return
        self._read_and_deliver()

    def _read_and_deliver(self) -> None:
        if not self.read_lock.acquire(False):  # a caller thread reads its reply: step aside
            self._pause_reading()
            return
        if self.claim is not None and self.claim.live():  # a caller's loop reads it
            self.read_lock.release()
            self._pause_reading()
            return
        try:
            if self.handed:  # read before by a caller thread: first
                self._deliver_handed()
            if not self.closed:
                self._read_once()
        finally:
            self.read_lock.release()

    def _read_once(self) -> None:
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
        if self._pending is not None:
            data = self._more_tls(data)
        self._deliver(data)
        if self._pending is not None and not self.closed and self._pending():
            self.loop.call_soon(self._on_readable)  # (after other ready callbacks: fairness)

    # --- reads by caller threads (see ._caller_read) ------------------------------------

    def rid_gone(self, rid: int) -> bool:
        """Whether a caller read the reply to ``rid`` for the loop already."""
        return rid in self.handed_rids

    def has_handed(self) -> bool:
        return bool(self.handed)

    def deliver_handed(self) -> None:
        """On the loop: deliver the frames caller threads read, in order (a caller
        thread reading meanwhile appends behind them)."""
        if self.handed:
            self._deliver_handed()

    def _deliver_handed(self) -> None:
        if self._delivering:  # (a frame's handler drained an inbox, which got here)
            return  # the running delivery goes on with the frames after it, in order
        self._delivering = True
        try:
            self._deliver_handed_now()
        finally:
            self._delivering = False

    def _deliver_handed_now(self) -> None:
        handed = self.handed
        receiver = self.receiver
        while handed:
            msg, bufs = handed.popleft()
            if msg is BROKEN:
                if isinstance(bufs, ProtocolError):
                    receiver.on_protocol_error(self, bufs)
                else:
                    self._break(bufs)
                handed.clear()
                return
            if self.closed:
                handed.clear()
                return
            if msg.TAG in REPLY_TAGS:
                self.handed_rids.discard(msg.rid)
            try:
                receiver.on_frame(self, msg, bufs)
            except Exception:
                logger.exception("dispatching %s failed", type(msg).__name__)

    def _pause_reading(self) -> None:
        """A caller thread reads the socket: the loop stops watching it until no
        caller thread has read for ``READ_BACK_S`` (no contention meanwhile)."""
        if self._reader_paused or self.closed:
            return
        self._reader_paused = True
        self._seen_reads = self.caller_reads
        self.loop.remove_reader(self._fd)
        self.loop.call_later(READ_BACK_S, self._maybe_read_again)

    def _maybe_read_again(self) -> None:
        if not self._reader_paused or self.closed or not self._sock_open:
            return
        if self.claim is not None and self.claim.dead():
            self.claim = None  # (left by a caller's loop closed while idle)
        claimed = self.claim is not None and self.claim.live()
        if self.caller_reads != self._seen_reads or self.caller_reading or claimed:
            self._seen_reads = self.caller_reads
            self.loop.call_later(READ_BACK_S, self._maybe_read_again)
            return
        self._reader_paused = False
        self.loop.add_reader(self._fd, self._on_readable)
        if self.handed:
            self.loop.call_soon(self._on_readable)

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def readable_off_loop(self) -> bool:
        """Open, and a plain (Unix or TCP) socket: a TLS one is read on its loop only."""
        return self._pending is None and self._sock_open and not self.closed

    def feed(self, data: bytes) -> list[tuple[Any, list[bytes]]]:
        """Decode ``data`` (by whoever holds ``read_lock``)."""
        return self._decoder.feed(data)

    def done_reading(self) -> None:
        """A caller let go of ``read_lock``: close the socket if that waited for it."""
        if self.close_deferred:
            try:
                self.loop.call_soon_threadsafe(self._close_socket)
            except RuntimeError:  # the loop is closed
                pass

    def _more_tls(self, data: bytes) -> bytes:
        """A TLS read returns one record (16 KiB at most): take what else arrived,
        up to ``_RECV_SIZE``, so that one loop turn decodes it all."""
        parts = [data]
        size = len(data)
        while size < _RECV_SIZE:
            try:
                more = self.sock.recv(_RECV_SIZE - size)
            except OSError:  # nothing more now (or an error the next read reports)
                break
            if not more:
                break  # (the end: the next read sees it too)
            parts.append(more)
            size += len(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)

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

    def _teardown(self, exc: BaseException, linger: bool = False) -> bool:
        """Mark closed; the socket goes now, or once the queued bytes went out."""
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            self.close_exc = exc
            if linger and self._out and self._sock_open:
                self._write_locked()  # most often this sends everything at once
            drain = linger and bool(self._out)
            if not drain:
                self._out = []
                self._out_bytes = 0
        try:
            self.loop.remove_reader(self._fd if self._ep is None else self._ep.fileno())
        except Exception:  # the loop may already be closed
            pass
        if drain:
            self.loop.call_later(CLOSE_LINGER_S, self._close_socket)
        else:
            self._close_socket()
        if self._drainers:
            self._wake_drainers(self._closed_error())
        return True

    def _close_socket(self) -> None:
        if not self.read_lock.acquire(False):
            # a caller thread is reading it: wake it (it sees the end) and close
            # once it let go, so that its fd cannot be reused under it
            self.close_deferred = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self._close_socket_locked()
        finally:
            self.read_lock.release()

    def _close_socket_locked(self) -> None:
        self.close_deferred = False
        if self.claim is not None:  # a caller's loop watches it: it sees the end now
            self.claim.wake()
        with self._lock:
            if not self._sock_open:
                return
            self._sock_open = False
            self._out = []
            self._out_bytes = 0
        try:
            self.loop.remove_writer(self._fd)
        except Exception:  # the loop may already be closed
            pass
        if self._ep is not None:
            with self._read_lock:
                self._ep.close()
        self.sock.close()

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
        """Close from this side; idempotent, never blocks. Pending requests fail as
        closed; what was queued still goes out for up to ``CLOSE_LINGER_S``."""
        if threading.get_ident() != self._loop_thread and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.close)
                return
            except RuntimeError:
                pass
        exc = ConnectionClosedError(f"connection to {self.peer_role} was closed")
        if self._teardown(exc, linger=True):
            self.receiver.on_close(self, exc)


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
    high_water: int = SEND_HIGH_WATER,
    max_queued: int = SEND_MAX_QUEUED,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    tls: TlsContexts | None = None,
) -> Connection:
    """Connect, authenticate and start reading (TCP with ``tls``: mutual TLS first).

    Raises:
        ConnectionRefusedError/OSError: the peer is not listening.
        ssl.SSLError (an OSError): the TLS handshake failed.
        AuthenticationError: the token handshake failed.
    """
    if isinstance(address, str):
        sock: Any = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tls = None  # same host: the Unix socket never leaves the machine
    else:
        sock = socket.socket(_family(address[0]), socket.SOCK_STREAM)
    try:
        _tune(sock)
        async with asyncio.timeout(handshake_timeout_s):
            await loop.sock_connect(sock, address)
            if tls is not None:
                sock = await tls_connect(loop, sock, tls)
            peer_role, peer_id, leftover = await client_handshake(loop, sock, token, role, my_id)
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
        high_water=high_water,
        max_queued=max_queued,
    )
    conn.start()
    return conn


REPLY_TAGS = frozenset({P.Tag.REPLY, P.Tag.ERROR_REPLY, P.Tag.TASK_RESULT})

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "", socket.gethostname()}


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def best_address(address: Any, unix: bool = True) -> tuple[str, int] | str:
    """Where to connect to a peer ``(id, host, port[, unix name])``: its Unix socket
    when it is on this host (and ``unix``: off forces TCP, as between machines),
    else TCP."""
    if unix and len(address) > 3 and address[3] and address[1] in _LOCAL_HOSTS:
        return str(address[3])
    return (address[1], address[2])


# The listener accepts sockets into Connections; it lives in its own module and is
# re-exported here (imported last: it needs the names above).
from ._listener import Listener  # noqa: E402
