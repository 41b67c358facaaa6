"""Peer-to-peer object transfer: the node daemon's service that pulls objects
from other nodes and serves its own objects to them.

It carries out what two sans-IO state machines decide:
:class:`store._pull.PullState` (this node's pulls: holders, chunks in flight,
windows, stalls) and :class:`store._serve.ServeState` (the serve budget of
chunks this node is sending). Bytes move on dedicated data connections (see
:mod:`._transfer_link` and :mod:`._transfer_serve`): one per holder node,
authenticated with the cluster token, TCP always, several chunks in flight.

The daemon composes it::

    transfer = TransferService(store, node_id=..., token=..., host=...)
    await transfer.start()                 # listens on transfer.address
    handlers.update(transfer.handlers())   # PULL_OBJECT and TRANSFER_STATS
    size = await transfer.pull(oid, [(host, port), ...], owner)
    await transfer.aclose()

``on_pulled(oid, size)`` (optional) runs when a pulled copy is sealed here:
the place to tell the owner about the new location.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actorcore.store import _pull as PS
from actorcore.store import _serve as SS
from actorcore.store._state import ObjectState

from . import _protocol as P
from ._tls import TlsContexts
from ._transfer_link import PullLink
from ._transfer_serve import DataListener, ServeConnection
from .errors import ObjectLostError, ObjectStoreFullError

if TYPE_CHECKING:
    from ._node import StoreService

__all__ = ["TransferConfig", "TransferService"]

logger = logging.getLogger(__name__)

Holder = tuple[str, int]
_PRESENT = (ObjectState.SEALED, ObjectState.SPILLING, ObjectState.SPILLED, ObjectState.RESTORING)


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """Attributes:
    pull: the receiving side's chunking, windows and stall timeout.
    serve: the sending side's budget.
    serve_rate: bytes per second this node sends at most (0: no cap); paces
        chunks so a node on a shared link leaves room for other traffic.
    """

    pull: PS.PullConfig = field(default_factory=PS.PullConfig)
    serve: SS.ServeConfig = field(default_factory=SS.ServeConfig)
    serve_rate: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> TransferConfig:
        """The transfer settings of a runtime :class:`Config`."""
        chunk = config.transfer_chunk_bytes
        p0, s0 = PS.PullConfig(), SS.ServeConfig()
        pull = PS.PullConfig(
            chunk_bytes=chunk,
            holder_window=max(p0.holder_window, 2 * chunk),
            pull_window=max(p0.pull_window, 4 * chunk),
            node_window=max(p0.node_window, 8 * chunk),
            stall_timeout_s=config.transfer_timeout_s,
        )
        peer_window = max(s0.peer_window_bytes, 2 * chunk)
        serve = SS.ServeConfig(
            window_bytes=max(s0.window_bytes, 2 * peer_window),
            peer_window_bytes=peer_window,
            max_read_bytes=max(s0.max_read_bytes, chunk),
        )
        return cls(pull=pull, serve=serve, serve_rate=config.transfer_serve_rate)

    def __post_init__(self) -> None:
        if self.serve_rate < 0:
            raise ValueError("serve_rate must be >= 0")
        if self.pull.chunk_bytes > self.serve.max_read_bytes:
            raise ValueError("pull.chunk_bytes must be <= serve.max_read_bytes")


@dataclass(slots=True)
class TransferStats:
    pulls_done: int = 0
    pulls_failed: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    received_from: dict[str, int] = field(default_factory=dict)  # "host:port" -> bytes


class TransferService:
    """Pulls objects into this node's store and serves its objects to other nodes."""

    def __init__(
        self,
        store: StoreService,
        *,
        node_id: bytes,
        token: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        config: TransferConfig | None = None,
        tls: TlsContexts | None = None,
    ) -> None:
        self.store = store
        self.tls = tls  # mutual TLS on every data connection (both ways)
        self.node_id = node_id
        self.config = config or TransferConfig()
        self._token = token
        self._bind = (host, port)
        self.pulls = PS.PullState(self.config.pull)
        self.serving = SS.ServeState(self.config.serve)
        self.stats = TransferStats()
        self.on_pulled: Callable[[bytes, int], None] | None = None
        # ``on_served(oid, puller node id)``: a peer opened one of this node's objects
        self.on_served: Callable[[bytes, bytes], None] | None = None
        self._links: dict[Holder, PullLink] = {}
        self._closing_links: set[PullLink] = set()
        self._conns: set[ServeConnection] = set()
        self._ranges: dict[bytes, int] = {}  # oid -> offset of a pull's local range
        self._tasks: set[asyncio.Task[Any]] = set()
        self._backlog: list[Any] = []
        self._busy = False
        self._next_send = 0.0
        self.listener: DataListener | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    @property
    def address(self) -> Holder:
        assert self.listener is not None, "start() first"
        return self.listener.address

    # --- life -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for data connections and start the stall clock."""
        self.loop = asyncio.get_running_loop()
        host, port = self._bind
        self.listener = DataListener(
            self.loop,
            host=host,
            port=port,
            token=self._token,
            my_id=self.node_id,
            on_connection=self._on_connection,
            tls=self.tls,
        )
        self.listener.start()
        self._spawn(self._tick_loop())

    async def aclose(self) -> None:
        """Stop: pending pulls fail, connections close, background tasks end. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.listener is not None:
            self.listener.close()
            await self.listener.wait_closed()
        for link in list(self._links.values()):
            link.close()
        self._closing_links.update(self._links.values())
        self._links.clear()
        for oid in list(self.pulls.pulls):
            p = self.pulls.pulls.pop(oid)
            self._fail(PS.Fail(oid, "the node is shutting down", tuple(p.waiters), p.allocated))
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in list(self._closing_links):
            await link.wait_closed()
        for conn in conns:
            await conn.wait_closed()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("transfer task failed", exc_info=task.exception())

    async def _tick_loop(self) -> None:
        period = min(1.0, self.config.pull.stall_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            self._feed(PS.TickEvent(time.monotonic()))

    # --- pulling --------------------------------------------------------------------

    def pull(self, oid: bytes, holders: Sequence[Any], owner: bytes = b"") -> asyncio.Future[int]:
        """Copy ``oid`` into this node's store from one of ``holders`` (transfer addresses).

        Requests for an object already being pulled join that pull; an object
        already here (and not being written here) resolves at once. The future
        gets the object's size once the local copy is sealed. Cancelling it
        leaves the pull running: the copy is kept (as a secondary copy, the
        first the store evicts).

        Raises (through the future):
            ObjectLostError: no holder could provide it (the reason names each).
            ObjectStoreFullError: this node's store has no room for it.
        """
        assert self.loop is not None, "start() first"
        fut: asyncio.Future[int] = self.loop.create_future()
        if self.closed:
            fut.set_exception(ObjectLostError("the node is shutting down"))
            return fut
        e = self.store.state.entries.get(oid)
        if e is not None and e.state in _PRESENT and not e.freed and oid not in self.pulls.pulls:
            fut.set_result(e.size)
            return fut
        hs = tuple(_holder(h) for h in holders)
        self._feed(PS.PullEvent(oid, hs, fut, owner, time.monotonic()))
        return fut

    def add_holders(self, oid: bytes, holders: Sequence[Any]) -> None:
        """More copies of ``oid`` became known (a pull in progress may use them)."""
        hs = tuple(_holder(h) for h in holders)
        self._feed(PS.HoldersAddedEvent(oid, hs, time.monotonic()))

    def _feed(self, event: Any) -> None:
        """Hand one event to the pull state machine and carry out its instructions.

        Events raised while instructions run wait in a backlog (no re-entry).
        """
        self._backlog.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._backlog:
                ev = self._backlog.pop(0)
                for ins in self.pulls.handle(ev):
                    self._execute(ins)
        finally:
            self._busy = False

    def _execute(self, ins: Any) -> None:
        if isinstance(ins, PS.FetchChunk):
            self._fetch(ins)
        elif isinstance(ins, PS.OpenAt):
            self._link(ins.holder).open(ins.oid, functools.partial(self._opened, ins))
        elif isinstance(ins, PS.ReleaseAt):
            link = self._links.get(ins.holder)
            if link is not None:
                link.release(ins.oid)
        elif isinstance(ins, PS.Allocate):
            self._spawn(self._allocate(ins))
        elif isinstance(ins, PS.Complete):
            self._complete(ins)
        elif isinstance(ins, PS.Fail):
            self._fail(ins)
        elif isinstance(ins, PS.Disconnect):
            link = self._links.pop(ins.holder, None)
            if link is not None:
                logger.warning("dropping holder %s:%s: %s", *ins.holder, ins.reason)
                self._close_link(link)

    def _link(self, holder: Holder) -> PullLink:
        link = self._links.get(holder)
        if link is None:
            assert self.loop is not None
            link = PullLink(
                self.loop,
                holder,
                token=self._token,
                my_id=self.node_id,
                on_broken=self._link_broken,
                on_bytes=self._got_bytes,
                tls=self.tls,
            )
            self._links[holder] = link
        return link

    def _close_link(self, link: PullLink) -> None:
        link.close()
        self._closing_links.add(link)
        self._spawn(self._reap(link))

    async def _reap(self, link: PullLink) -> None:
        await link.wait_closed()
        self._closing_links.discard(link)

    def _link_broken(self, link: PullLink, reason: str) -> None:
        if self._links.get(link.holder) is link:
            del self._links[link.holder]
            self._closing_links.add(link)
            self._spawn(self._reap(link))
            self._feed(PS.NodeFailedEvent(link.holder, reason, time.monotonic()))

    def _got_bytes(self, link: PullLink, n: int) -> None:
        self.stats.bytes_received += n
        key = f"{link.holder[0]}:{link.holder[1]}"
        self.stats.received_from[key] = self.stats.received_from.get(key, 0) + n

    def _opened(self, ins: PS.OpenAt, result: Any) -> None:
        now = time.monotonic()
        if isinstance(result, tuple):
            size, meta = result
            self._feed(PS.OpenedEvent(ins.oid, ins.holder, size, meta, now))
        else:
            self._feed(PS.OpenFailedEvent(ins.oid, ins.holder, str(result), now))

    async def _allocate(self, ins: PS.Allocate) -> None:
        creator = b"transfer-" + self.node_id
        try:
            offset = await self.store.create(ins.oid, ins.size, creator, ins.owner or creator)
        except Exception as e:  # store full, or the object appeared meanwhile
            full = isinstance(e, ObjectStoreFullError)
            self._feed(PS.AllocationFailedEvent(ins.oid, str(e), time.monotonic(), full))
            return
        self.store.state.entries[ins.oid].primary = False  # a copy: evicted first
        self._ranges[ins.oid] = offset
        self._feed(PS.AllocatedEvent(ins.oid, time.monotonic()))

    def _fetch(self, ins: PS.FetchChunk) -> None:
        start = self._ranges[ins.oid] + ins.offset
        dest = self.store.arena.array()[start : start + ins.length].data

        def done(_r: Any) -> None:
            self._feed(PS.ChunkDoneEvent(ins.oid, ins.holder, ins.index, time.monotonic()))

        self._link(ins.holder).read(ins.oid, ins.offset, dest, done)

    def _complete(self, ins: PS.Complete) -> None:
        self._ranges.pop(ins.oid, None)
        self.store.seal(ins.oid, ins.meta)
        self.stats.pulls_done += 1
        for fut in ins.waiters:
            if not fut.done():
                fut.set_result(ins.size)
        if self.on_pulled is not None:
            self.on_pulled(ins.oid, ins.size)

    def _fail(self, ins: PS.Fail) -> None:
        self._ranges.pop(ins.oid, None)
        if ins.allocated:
            self.store.abort(ins.oid)
        self.stats.pulls_failed += 1
        logger.warning("%s", ins.reason)
        kind = ObjectStoreFullError if ins.no_room else ObjectLostError
        for fut in ins.waiters:
            if not fut.done():
                fut.set_exception(kind(ins.reason))

    # --- serving ------------------------------------------------------------------------

    def _on_connection(self, sock: socket.socket, peer_id: bytes, leftover: bytes) -> None:
        assert self.loop is not None
        if self.closed:
            sock.close()
            return
        conn = ServeConnection(
            self.loop,
            sock,
            peer_id,
            leftover,
            store=self.store,
            on_read=self._read_asked,
            on_closed=self._conn_closed,
            write_timeout=self.config.pull.stall_timeout_s,
            on_opened=self._served,
        )
        self._conns.add(conn)

    def _served(self, conn: ServeConnection, oid: bytes) -> None:
        if self.on_served is not None:
            self.on_served(oid, conn.peer_id)

    def _read_asked(self, conn: ServeConnection, msg: P.TransferReadMsg) -> None:
        ev = SS.ReadAskedEvent(conn, msg.rid, msg.oid, msg.offset, msg.length)
        self._serve(self.serving.handle(ev))

    def _conn_closed(self, conn: ServeConnection) -> None:
        self._conns.discard(conn)
        self._serve(self.serving.handle(SS.PeerGoneEvent(conn)))

    def _serve(self, instrs: list[Any]) -> None:
        for ins in instrs:
            conn: ServeConnection = ins.peer
            if isinstance(ins, SS.RefuseRead):
                conn.refuse(ins.rid, ins.oid, ins.reason)
                continue
            delay = self._pace(ins.length)
            if delay > 0:
                assert self.loop is not None
                self.loop.call_later(delay, self._send, ins)
            else:
                self._send(ins)

    def _pace(self, length: int) -> float:
        """Seconds to wait before sending ``length`` more bytes under ``serve_rate``."""
        rate = self.config.serve_rate
        if not rate:
            return 0.0
        now = time.monotonic()
        start = max(now, self._next_send)
        self._next_send = start + length / rate
        return start - now

    def _send(self, ins: SS.SendChunk) -> None:
        conn: ServeConnection = ins.peer

        def sent() -> None:
            self.stats.bytes_sent += ins.length
            self._serve(self.serving.handle(SS.ReadSentEvent(conn, ins.rid)))

        conn.send_chunk(ins.rid, ins.oid, ins.offset, ins.length, sent)

    # --- daemon requests ------------------------------------------------------------------

    def handlers(self) -> dict[int, Callable[..., Any]]:
        """RPC handlers for the node daemon's table (``(peer, msg, buffers)`` each)."""
        return {
            int(P.Tag.PULL_OBJECT): self.on_pull_object,
            int(P.Tag.TRANSFER_STATS): self.on_transfer_stats,
        }

    def on_pull_object(self, peer: Any, msg: P.PullObjectMsg, _b: list[bytes]) -> Any:
        return self._await_pull(msg)

    async def _await_pull(self, msg: P.PullObjectMsg) -> int:
        return await self.pull(msg.oid, list(msg.holders), msg.owner)

    def on_transfer_stats(self, peer: Any, msg: P.TransferStatsMsg, _b: list[bytes]) -> Any:
        st = self.stats
        return {
            "address": list(self.address),
            "pulls_active": len(self.pulls.pulls),
            "pulls_done": st.pulls_done,
            "pulls_failed": st.pulls_failed,
            "bytes_received": st.bytes_received,
            "bytes_sent": st.bytes_sent,
            "received_from": dict(st.received_from),
            "inflight_bytes": self.pulls.inflight_bytes,
            "serving_bytes": self.serving.sending_bytes,
            "links": len(self._links),
            "serve_connections": len(self._conns),
        }


def _holder(h: Any) -> Holder:
    host, port = h[-2], h[-1]
    return (str(host), int(port))
