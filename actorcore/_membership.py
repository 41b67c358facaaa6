"""Cluster membership: a node registers in etcd, keeps its lease, and watches its peers.

Keys (under the cluster's etcd namespace NAME):

* ``/nodes/<id>``: the node's record, attached to its lease: present while the
  node lives; gone (a watch DELETE) when it leaves or its lease expires;
* ``/members/<id>``: the same record without a lease, kept after death, so a
  node that joins later still lists dead nodes (``Alive: False``);
* ``/token``: the cluster token (see :func:`actorcore._peers.cluster_token`).

:class:`~actorcore._peers.PeerTable` is the sans-IO view (records in, joins
and leaves out); :class:`Membership` is the service the node daemon composes: it registers,
refreshes the lease every TTL/4 from a thread of its own
(:class:`~actorcore._lease_keeper.LeaseKeeper`: a busy loop does not read as
death) and checks it with :class:`~actorcore._fencing.Fencer` (a lease etcd
reports lost, or a refresh not confirmed in time without a confirmed etcd
outage, fences the node: it never re-registers under the same id; see
:mod:`actorcore._fencing` for the rule), watches ``/nodes/`` from the revision it
loaded + 1 (the etcd watch resumes from its last revision after an outage; a
compacted revision resyncs), and talks to peer daemons directly for what etcd
must not carry (load).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack

from actorcore.gcs import ControlStoreError, EtcdControlStore, PutOp, RevisionCompactedError

from . import _protocol as P
from ._fencing import Fencer
from ._lease_keeper import LeaseKeeper
from ._peers import MEMBERS, NODES, ClusterSpec, Joined, Left, PeerTable
from ._rpc import RpcPeer, Service, next_rid
from ._tls import TlsContexts
from ._transport import open_connection

__all__ = ["Membership"]

logger = logging.getLogger(__name__)

PEER_CALL_TIMEOUT_S = 5.0
LOAD_PERIOD_S = 0.1
_RETRY_S = 0.5  # pacing of retries after etcd errors, not synchronization


# --- the service ----------------------------------------------------------------------------


class _Links(Service):
    """Outgoing connections to peer daemons (answers nothing itself)."""

    def __init__(self, on_closed: Callable[[RpcPeer], None]) -> None:
        super().__init__()
        self._on_closed = on_closed

    def on_peer_closed(self, peer: RpcPeer, exc: BaseException) -> None:
        self._on_closed(peer)


class Membership:
    """A node's place in its cluster: registration, lease, peer watch, peer calls.

    Args:
        spec: the cluster and this node's address in it.
        node_id: this node.
        record: what peers learn of this node (address, port, pid, resources...).
        token: the cluster token (peer daemons prove it too).
        limits: (max header bytes, max frame bytes) for peer connections.
        local_load: this node's available resources now; sent to every peer
            daemon when it changes (checked every ``LOAD_PERIOD_S``).
        on_change: called with the joins and leaves of every update.
        on_fence: called once when this node must fence itself (its lease is
            or may be lost: :mod:`actorcore._fencing`); without it the node
            only logs.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        node_id: bytes,
        record: dict[str, Any],
        token: bytes,
        limits: tuple[int, int],
        local_load: Callable[[], dict[str, float]] | None = None,
        on_change: Callable[[list[Joined | Left]], None] | None = None,
        on_fence: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.node_id = node_id
        self.record = record
        self.store = EtcdControlStore(spec.address, options=spec.etcd)
        self.table = PeerTable()
        self.lease = 0
        self._token = token
        self._limits = limits
        self._on_change = on_change
        self._tasks: set[asyncio.Task[None]] = set()
        self._links = _Links(self._link_closed)
        self._peers: dict[bytes, RpcPeer] = {}
        self._local_load = local_load
        self.loads: dict[bytes, dict[str, float]] = {}  # peers' reports
        self._sent: dict[bytes, dict[str, float]] = {}  # what each peer last got from us
        self._gone_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._connecting: dict[bytes, asyncio.Future[RpcPeer]] = {}
        self._registering = asyncio.Lock()  # one registration at a time (a join may be retried)
        self._leaving = False
        self._on_fence = on_fence
        self.fencer = Fencer(
            spec.ttl_s,
            self._refresh,
            lambda n: self.call_node(n, P.ClusterInfoMsg(next_rid(), "etcd_reach")),
            lambda: [n for n in self.table.live if n != self.node_id],
            self._fence,
            own_refresh=False,  # the lease keeper's thread refreshes; the fencer checks
        )
        self._keeper: LeaseKeeper | None = None

    def fencing_lease(self) -> int:
        """The lease this node's control writes are fenced on: its writes count only while
        its key is in etcd under it. 0 (unfenced) before it registered and once it left
        cleanly (what it writes then is its own last word); fenced, never 0."""
        if self._leaving and not self.fencer.fenced:
            return 0
        return self.lease

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Register and start watching; returns once this node is in etcd.

        Raises:
            ControlStoreUnavailableError: etcd does not answer.
        """
        await self.store.ping()
        await self._register()
        revision = await self._load()
        self._own(self._watch(revision + 1), "watch")
        self._keeper = LeaseKeeper(
            self.spec.address,
            self.spec.etcd,
            self.spec.ttl_s,
            lambda: self.lease,
            self._lease_lost,
            asyncio.get_running_loop(),
            on_refreshed=self.fencer.granted,
        )
        self._keeper.start()  # refreshes from its own thread: a busy loop is not a death
        self._own(self.fencer.run(), "fencer")  # the rule's clock (actorcore._fencing)
        if self._local_load is not None:
            self._own(self._report_load(), "load")
        logger.info("node %s joined cluster %s", self.node_id.hex(), self.spec.address)

    async def leave(self) -> None:
        """Leave the cluster now: peers see this node's DELETE at once."""
        self._leaving = True  # from here on nothing registers again
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.stop)
        try:
            if self.fencer.fenced:
                raise ControlStoreError("fenced: the lease is gone already")
            await asyncio.wait_for(self.store.revoke_lease(self.lease), 5.0)
            logger.info("node %s left cluster %s", self.node_id.hex(), self.spec.address)
        except (ControlStoreError, TimeoutError) as e:
            logger.warning(
                "could not leave the cluster cleanly (peers see it after the TTL): %s", e
            )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fencer.aclose()
        for peer in list(self._peers.values()):
            if peer.conn is not None:
                peer.conn.close()
        self._peers.clear()

    def _own(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"membership-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("membership task failed", exc_info=task.exception())

    # --- etcd ------------------------------------------------------------------------

    async def _register(self) -> None:
        async with self._registering:
            if self._leaving:
                return
            sent = time.monotonic()
            lease = await self.store.grant_lease(self.spec.ttl_s)
            value = bytes(msgpack.packb(self.record, use_bin_type=True))
            key = self.node_id.hex().encode()
            ops = [PutOp(MEMBERS + key, value), PutOp(NODES + key, value, lease)]
            await self.store.txn([], ops)
            self.lease = lease
            self.fencer.granted(sent)

    async def _load(self) -> int:
        members, _ = await self.store.get_prefix(MEMBERS)
        nodes, revision = await self.store.get_prefix(NODES)
        self._changed(self.table.load(members, nodes))
        return revision

    async def _refresh(self) -> float:
        """Refresh the lease (the fencer's call): its remaining TTL, <= 0 when gone."""
        return float(await self.store.refresh_lease(self.lease))

    def _fence(self, why: str) -> None:
        """The lease is (or may be) lost: stop serving (the daemon rejoins as a new node)."""
        if self._leaving:
            return
        self._leaving = True  # never register this node id again
        if self._on_fence is not None:
            self._on_fence(why)

    def _lease_lost(self, lease: int) -> None:
        """The lease keeper found ``lease`` gone (on this loop): fence (never the same id)."""
        if lease == self.lease and not self._leaving:
            self.fencer.lease_lost("a refresh found it expired")

    async def _watch(self, revision: int) -> None:
        while not self._leaving:
            try:
                async with self.store.watch_prefix(NODES, start_revision=revision) as watch:
                    async for event in watch:
                        revision = event.revision + 1
                        self._changed(self.table.handle(event))
                return
            except RevisionCompactedError:
                logger.warning("membership watch fell behind a compaction: reloading")
                revision = await self._load() + 1
            except ControlStoreError as e:
                logger.warning("membership watch failed (%s): watching again", e)
                await asyncio.sleep(_RETRY_S)

    def _changed(self, changes: list[Joined | Left]) -> None:
        for ch in changes:
            if isinstance(ch, Joined):
                logger.info(
                    "node %s joined at %s:%s",
                    ch.node_id.hex(),
                    ch.record["address"],
                    ch.record["port"],
                )
            else:
                logger.info("node %s left the cluster", ch.node_id.hex())
                self.loads.pop(ch.node_id, None)
                self._sent.pop(ch.node_id, None)
                for fut in self._gone_waiters.pop(ch.node_id, []):
                    if not fut.done():
                        fut.set_result(None)
                peer = self._peers.pop(ch.node_id, None)
                if peer is not None and peer.conn is not None:
                    peer.conn.close()
                if ch.node_id == self.node_id and not self._leaving:
                    self.fencer.lease_lost("its key was deleted")
        if changes and self._on_change is not None:
            self._on_change(changes)

    def when_gone(self, node_id: bytes) -> asyncio.Future[None]:
        """A future resolved when ``node_id`` is no longer a live node (at once if it is not)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if node_id not in self.table.live:
            fut.set_result(None)
        else:
            waiters = self._gone_waiters.setdefault(node_id, [])
            waiters[:] = [f for f in waiters if not f.done()]
            waiters.append(fut)
        return fut

    # --- peers ---------------------------------------------------------------------------

    async def call_node(self, node_id: bytes, msg: Any) -> Any:
        """Ask the daemon of ``node_id`` (a live peer); returns the reply's value.

        Raises:
            LookupError: no such live node.
            ConnectionError, TimeoutError: it could not be reached.
        """
        peer = await self._link(node_id)
        return await asyncio.wait_for(peer.call(msg), PEER_CALL_TIMEOUT_S)

    async def send_node(self, node_id: bytes, msg: Any) -> None:
        """Send a one-way message to the daemon of ``node_id`` (a live peer).

        Raises:
            LookupError: no such live node.
            ConnectionError, TimeoutError: it could not be reached.
        """
        peer = await self._link(node_id)
        peer.send(msg)

    async def _link(self, node_id: bytes) -> RpcPeer:
        """The open link to ``node_id``'s daemon; one connection attempt at a time."""
        peer = self._peers.get(node_id)
        if peer is not None and peer.conn is not None and not peer.conn.closed:
            return peer
        pending = self._connecting.get(node_id)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(node_id))
            self._connecting[node_id] = pending
            pending.add_done_callback(functools.partial(self._connected, node_id))
        return await asyncio.shield(pending)

    def _connected(self, node_id: bytes, fut: asyncio.Future[RpcPeer]) -> None:
        self._connecting.pop(node_id, None)
        if not fut.cancelled():
            fut.exception()  # retrieved here: a waiter may have gone

    async def _connect(self, node_id: bytes) -> RpcPeer:
        record = self.table.live.get(node_id)
        if record is None:
            raise LookupError(f"node {node_id.hex()} is not a live node of this cluster")
        peer = RpcPeer(self._links, {})
        conn = await asyncio.wait_for(
            open_connection(
                asyncio.get_running_loop(),
                (record["address"], int(record["port"])),
                peer,
                token=self._token,
                role="daemon",
                my_id=self.node_id,
                max_header_bytes=self._limits[0],
                max_frame_bytes=self._limits[1],
                tls=TlsContexts.load(self.spec.tls),
            ),
            PEER_CALL_TIMEOUT_S,
        )
        peer.conn = conn
        self._peers[node_id] = peer
        return peer

    async def available(self, local: dict[str, float]) -> dict[str, float]:
        """The live nodes' available resources, summed: this node's ``local`` plus
        each peer's last load report (node to node, never through etcd); a peer
        that has not reported yet is asked directly."""
        others = [n for n in self.table.live if n != self.node_id]
        missing = [n for n in others if n not in self.loads]
        replies = await asyncio.gather(
            *(self.call_node(n, P.ClusterInfoMsg(next_rid(), "available_local")) for n in missing),
            return_exceptions=True,
        )
        asked = dict(zip(missing, replies, strict=True))
        out = dict(local)
        for node_id in others:
            reply = self.loads.get(node_id, asked.get(node_id))
            if isinstance(reply, BaseException) or reply is None:
                logger.info("node %s did not report its load: %s", node_id.hex(), reply)
                continue
            for k, v in dict(reply).items():
                out[k] = out.get(k, 0.0) + float(v)
        return out

    def on_load_report(self, peer_id: bytes, msg: P.LoadReportMsg) -> None:
        """A peer daemon's load report (only a node may report for itself)."""
        if msg.node_id != peer_id or msg.node_id not in self.table.live:
            return
        self.loads[msg.node_id] = {str(k): float(v) for k, v in dict(msg.available).items()}

    async def _report_load(self) -> None:
        assert self._local_load is not None
        while True:
            await asyncio.sleep(LOAD_PERIOD_S)  # the report's pacing: at most one per period
            now = self._local_load()
            for node_id in [n for n in self.table.live if n != self.node_id]:
                if self._sent.get(node_id) == now:
                    continue
                try:
                    peer = await self._link(node_id)
                    peer.send(P.LoadReportMsg(self.node_id, now))
                    self._sent[node_id] = now
                except (OSError, ConnectionError, TimeoutError, LookupError) as e:
                    logger.debug("load report to %s failed: %s", node_id.hex(), e)

    def _link_closed(self, peer: RpcPeer) -> None:
        for node_id, p in list(self._peers.items()):
            if p is peer:
                del self._peers[node_id]
                self._sent.pop(node_id, None)  # a new link starts with a full report
