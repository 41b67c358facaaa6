"""The runtime client that every actorcore process runs (driver and worker).

It owns the process's event loop (a thread of its own in a driver, the main
thread in a worker), its listening socket, its connections to peers, and the
object table.

Tasks, actor calls and the object table (reference counts, borrowing,
values) are run by the owner cores of :mod:`._owner` (``handle(events) ->
instructions``), whose state only the loop changes: any thread (a driver's
main thread, a worker's executor threads) hands them events and they wake the
loop once per batch. Other threads read a value from the table only once it
is published (READY or FAILED); waiting for one is an event too. ``lock``
guards only the connection maps. Reading values (get, wait, await) is in
:mod:`._values`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from . import _protocol as P
from ._config import Config
from ._ids import new_id
from ._owner import _object_events as OE
from ._ownership import OwnershipMixin
from ._ref import ObjectRef
from ._refcount import ERROR, INLINE, STORE, FreeStore
from ._rpc import DEFERRED, RpcPeer, Service, error_from_reply, handles
from ._serialization import serialize
from ._store_client import StoreClient, allow_interrupts, defer_interrupts
from ._sync_client import SyncClient
from ._tls import TlsContexts
from ._transport import Listener, best_address, open_connection
from .errors import BlockingCallError, ConnectionBrokenError, NodeDiedError

__all__ = ["CoreRuntime", "NodeInfo"]

logger = logging.getLogger(__name__)

Address = tuple[Any, ...]  # (process id, host, port)

# Dropped refs, frees and unpins wait this long to go out together.
FLUSH_DELAY_S = 0.005


class NodeInfo:
    """What a process learns about its node daemon when it connects."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.node_id: bytes = info["node_id"]
        self.address: tuple[str, int] = tuple(info["address"])  # type: ignore[assignment]
        self.arena_path: str = info["arena_path"]
        self.capacity: int = info["capacity"]
        self.session: str = info["session"]
        self.session_dir: str = info.get("session_dir", "")
        self.unix_name: str = info.get("unix_name", "")
        self.raw = info


class CoreRuntime(OwnershipMixin, Service):
    """One process's runtime: ownership, connections, and the object table."""

    role = "driver"

    def __init__(self, config: Config, token: bytes, my_id: bytes, node: NodeInfo) -> None:
        super().__init__()
        self.config = config
        self.token = token
        self.my_id = my_id
        self.node = node
        self.lock = threading.RLock()  # the connection maps (peers, _connecting) only
        # mutual TLS on TCP links to other nodes' processes, as the node's daemon
        self.tls = TlsContexts.load(node.raw.get("tls"))
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.loop_thread_id = 0
        self.address: Address = (my_id, "", 0)
        self.peers: dict[bytes, RpcPeer] = {}
        self._connecting: dict[bytes, list[Callable[[Any], None]]] = {}
        self._handlers = self.bound_handlers()
        self.listener: Listener | None = None
        self.daemon: RpcPeer = None  # type: ignore[assignment]
        self.store: StoreClient = None  # type: ignore[assignment]
        self._flush_scheduled = False
        # connections holding frames that a caller thread read for the loop
        self.handed_conns: collections.deque[Any] = collections.deque()
        self._frees: list[FreeStore] = []
        self._releases: dict[tuple[Any, ...], list[bytes]] = {}
        self.broken: BaseException | None = None
        self.closing = False
        self.persistent_actors: set[bytes] = set()
        self.namespace = "default"
        self.job_id = b""
        # the runtime env (wire spec) of the work this process submits: the job's in a
        # driver (ac.init(runtime_env=...)), the worker's own in a worker
        self.job_runtime_env: dict[str, Any] | None = None
        from ._owner import ActorClients, TaskSubmitter
        from ._owner._object_shell import ObjectShell

        self.objects = ObjectShell(self)
        self.table = self.objects.table  # read-only outside the loop (published values)
        self.submitter = TaskSubmitter(self)
        self.actors = ActorClients(self)
        from ._owner._stream_shell import GeneratorStreams

        self.streams = GeneratorStreams(self)
        from ._owner._recovery import ObjectRecovery

        self.recovery = ObjectRecovery(self)  # lineage: rebuilds objects lost with a node

    # --- start and stop ----------------------------------------------------------------

    async def astart(self) -> None:
        """Listen, connect to the node daemon, open the store; on the runtime loop."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread_id = threading.get_ident()
        cfg = self.config
        self.listener = Listener(
            self.loop,
            token=self.token,
            role=self.role,
            my_id=self.my_id,
            make_receiver=self._new_peer,
            on_connection=self._on_inbound,
            **cfg.wire_limits(),
            # in a cluster, callers on other nodes reach this process at its node's address
            host=self.node.raw.get("node_ip") or "127.0.0.1"
            if self.node.raw.get("cluster")
            else "127.0.0.1",
            tls=self.tls,
        )
        self.listener.start()
        host, port = self.listener.address
        self.address = (self.my_id, host, port, self.listener.unix_name)
        self.objects.bind(self.address)
        daemon_at = self.node.unix_name or self.node.address
        self.daemon = await self._connect(daemon_at)
        sync = await self.loop.run_in_executor(None, self._open_store_conn)
        cache = self.config.store_read_cache_bytes
        self.store = StoreClient(
            self.node.arena_path,
            self.node.capacity,
            sync,
            self.my_id,
            cache_bytes=None if cache < 0 else cache,
        )
        self.store.on_release = self._schedule_flush
        self.store.attach(self.daemon, self.loop)  # loop threads never wait on the daemon
        await self.register()

    def _open_store_conn(self) -> SyncClient:
        return SyncClient(
            self.node.unix_name or self.node.address,
            token=self.token,
            role=self.role,
            my_id=self.my_id,
            max_header_bytes=self.config.max_header_bytes,
            max_frame_bytes=self.config.max_frame_bytes,
        )

    async def register(self) -> None:
        """Introduce this process to the daemon (subclasses)."""

    async def astop(self) -> None:
        self.closing = True
        self.submitter.close()
        if self.listener is not None:
            self.listener.close()
        for peer in list(self.peers.values()):
            if peer.conn is not None:
                peer.conn.close()
        if self.daemon is not None and self.daemon.conn is not None:
            self.daemon.conn.close()
        await self.cancel_tasks()
        if self.store is not None:
            self.store.close()

    # --- connections ---------------------------------------------------------------------

    def _new_peer(self) -> RpcPeer:
        return RpcPeer(self, self._handlers)

    def _on_inbound(self, conn: Any) -> None:
        peer: RpcPeer = conn.receiver
        peer.conn = conn
        with self.lock:
            old = self.peers.get(conn.peer_id)
            if old is None or old.conn is None or old.conn.closed:
                self.peers[conn.peer_id] = peer

    async def _connect(self, address: tuple[str, int] | str) -> RpcPeer:
        peer = self._new_peer()
        conn = await open_connection(
            self.loop,
            address,
            peer,
            token=self.token,
            role=self.role,
            my_id=self.my_id,
            max_header_bytes=self.config.max_header_bytes,
            max_frame_bytes=self.config.max_frame_bytes,
            tls=self.tls,
            high_water=self.config.send_high_water_bytes,
            max_queued=self.config.send_max_queued_bytes,
        )
        peer.conn = conn
        return peer

    def with_peer(self, address: Address, cb: Callable[[Any], None]) -> None:
        """Call ``cb(peer)`` once connected to the process at ``address`` (or ``cb(exc)``).

        Thread-safe; ``cb`` may run right away in this thread or later on the loop.
        """
        pid = address[0]
        with self.lock:
            peer = self.peers.get(pid)
            if peer is not None and peer.conn is not None and not peer.conn.closed:
                ready = peer
            else:
                ready = None
                waiters = self._connecting.get(pid)
                if waiters is not None:
                    waiters.append(cb)
                    return
                self._connecting[pid] = [cb]
        if ready is not None:
            cb(ready)
            return
        self.call_soon(self._start_connect, address)

    def _start_connect(self, address: Address) -> None:
        self.spawn(self._connect_to(address))

    async def _connect_to(self, address: Address) -> None:
        pid = address[0]
        try:
            if self.broken is not None:
                raise self.broken
            try:
                best = best_address(address, self.config.unix_sockets)
                peer: Any = await self._connect(best)
            except OSError:
                if isinstance(best, str):
                    peer = await self._connect((address[1], address[2]))
                else:
                    raise
            with self.lock:
                old = self.peers.get(pid)
                if old is not None and old.conn is not None and not old.conn.closed:
                    # Both sides connected at once (or this process connected to
                    # itself): keep using the one already known. Never close the new
                    # one: the other side may already be sending on it.
                    peer = old
                else:
                    self.peers[pid] = peer
        except Exception as e:
            peer = ConnectionBrokenError(f"cannot reach process {pid.hex()} at {address[1:]}: {e}")
        with self.lock:
            waiters = self._connecting.pop(pid, [])
            for cb in waiters:
                try:
                    cb(peer)
                except Exception:  # one caller's failure must not strand the others
                    logger.exception("a connection waiter failed")

    def on_peer_closed(self, peer: RpcPeer, exc: BaseException) -> None:
        conn = peer.conn
        if conn is None:
            return
        if peer is self.daemon:
            self._daemon_lost(exc)
            return
        with self.lock:
            if self.peers.get(conn.peer_id) is peer:
                del self.peers[conn.peer_id]
            still = self.peers.get(conn.peer_id)
        if still is None:
            self.objects.post(OE.BorrowerGone(conn.peer_id))
        self.submitter.peer_closed(peer)
        self.actors.peer_closed(peer)

    def node_died(self, node_id: bytes) -> list[bytes]:
        """A node of the cluster is gone (any thread).

        Leases and actors on it are lost (their tasks and calls retried or
        failed), and its store copies forgotten; returns the owned objects
        left without a copy.
        """
        self.submitter.node_died(node_id)
        self.actors.node_died(node_id)
        lost: list[bytes] = self.objects.ask(lambda answer: OE.NodeGone(node_id, answer))
        return lost

    def object_locations(self, oid: bytes) -> frozenset[bytes]:
        """The nodes known to hold a store copy of the owned object ``oid`` (any thread)."""
        found: frozenset[bytes] = self.objects.ask(
            lambda answer: OE.Query(lambda table: table.locations_of(oid), answer)
        )
        return found

    def _daemon_lost(self, exc: BaseException) -> None:
        if self.closing:
            return
        self.broken = NodeDiedError(f"lost the connection to the node daemon: {exc}")
        logger.error("%s", self.broken)
        self.submitter.fail_all(self.broken)

    # --- scheduling work on the loop ----------------------------------------------------------

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread_id

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the runtime loop; from any thread."""
        if threading.get_ident() == self.loop_thread_id:
            self.loop.call_soon(fn, *args)
        else:
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass  # the loop is closed: the runtime is shutting down

    # --- dropping refs and releasing objects ------------------------------------------------

    def drop_ref(self, oid: bytes) -> None:
        """An ObjectRef died (``__del__``, any thread): count it down later."""
        self.objects.note(oid)  # (a bare RefsDropped([oid]))

    def add_refs(self, refs: list[Any]) -> None:
        """ObjectRef instances (or actor handles) just unpickled, counted in one event."""
        self.objects.note(OE.RefsAdded([(r.id, r.owner) for r in refs]))

    def add_ref(self, oid: bytes, owner: tuple[Any, ...]) -> None:
        """A new ObjectRef (or actor handle) instance (any thread): count it, in order."""
        self.objects.note((oid, owner))  # (a bare RefAdded)

    def _schedule_flush(self) -> None:
        """Flush soon, in one batch: one loop wake-up per ``FLUSH_DELAY_S``, not per ref."""
        if self._flush_scheduled or self.closing:
            return
        self._flush_scheduled = True
        self.call_soon(self._arm_flush)

    def _arm_flush(self) -> None:
        self.loop.call_later(FLUSH_DELAY_S, self.flush)

    def deliver_handed(self) -> None:
        """On the loop: deliver what caller threads read off connections, before
        anything queued after it (every inbox drain and flush calls this first)."""
        conns = self.handed_conns
        while conns:
            conns.popleft().deliver_handed()

    def kick_handed(self) -> None:
        """From another thread: have the loop deliver handed frames now."""
        try:
            self.loop.call_soon_threadsafe(self.deliver_handed)
        except RuntimeError:
            pass  # the loop is closed: the runtime is shutting down

    def flush(self) -> None:
        """Count queued ref changes, then send frees, releases and unpins (on the loop)."""
        self._flush_scheduled = False
        if self.handed_conns:
            self.deliver_handed()
        self.objects.catch_up()
        self._send_releases()

    def _send_releases(self) -> None:
        frees, self._frees = self._frees, []  # (the object shell fills these, on the loop)
        releases, self._releases = self._releases, {}
        if frees and self.store is not None:
            # the read cache lets go first: no revocation needed
            self.store.forget([f.oid for f in frees])
        unpins = self.store.take_released() if self.store is not None else []
        if self.broken is not None or self.daemon is None:
            return
        try:
            if unpins:
                self.daemon.send(P.ReleaseObjectsMsg(unpins))
            if frees:
                oids = [f.oid for f in frees]
                holders = [list(f.holders) for f in frees]
                self.daemon.send(P.FreeObjectsMsg(oids, holders if any(holders) else None))
        except ConnectionError:
            return
        for owner, oids in releases.items():
            self.with_peer(owner, functools.partial(self._send_remove_borrowers, oids=oids))

    def _send_remove_borrowers(self, peer: Any, oids: list[bytes]) -> None:
        if isinstance(peer, BaseException):
            return  # the owner is gone, and its objects with it
        try:
            peer.send(P.RemoveBorrowersMsg(list(self.address), oids))
        except ConnectionError:
            pass

    # --- blocking calls to the daemon ----------------------------------------------------------

    def call_daemon(self, msg: Any, timeout: float = 30.0) -> Any:
        """Send a request to the node daemon and wait for its value (not on the runtime loop).

        Raises:
            ConnectionBrokenError: the daemon is gone (the message names the node).
        """
        if self.on_loop_thread():
            raise BlockingCallError("this call blocks; it cannot run on the runtime's own loop")
        if self.broken is not None:
            raise self._daemon_gone(msg, self.broken)
        done = threading.Event()
        box: list[Any] = []

        def cb(reply: Any) -> None:
            box.append(reply)
            done.set()

        try:
            self.daemon.request(msg, cb)
        except ConnectionError as e:
            raise self._daemon_gone(msg, e) from e
        if not done.wait(timeout):
            raise TimeoutError(
                f"the node daemon did not answer {type(msg).__name__} in {timeout} s"
            )
        reply = box[0]
        if isinstance(reply, ConnectionError):
            raise self._daemon_gone(msg, reply) from reply
        if isinstance(reply, BaseException):
            raise reply
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        return reply.value

    def _daemon_gone(self, msg: Any, cause: BaseException) -> ConnectionBrokenError:
        node = self.node
        return ConnectionBrokenError(
            f"the node daemon of node {node.node_id.hex()} (at {node.address[0]}:"
            f"{node.address[1]}) is gone, so {type(msg).__name__} cannot be answered: {cause}"
        )

    # --- messages from the daemon and from workers --------------------------------------------

    @handles(P.Tag.TASKS_RETURNED)
    def on_tasks_returned(self, peer: RpcPeer, msg: P.TasksReturnedMsg, _bufs: list[bytes]) -> Any:
        self.submitter.tasks_returned(peer, list(msg.rids), bool(msg.blocked))
        return DEFERRED

    @handles(P.Tag.NODE_DIED)
    def on_node_died(self, peer: RpcPeer, msg: P.NodeDiedMsg, _bufs: list[bytes]) -> Any:
        if peer is self.daemon:  # only this node's daemon speaks for the cluster
            self.recovery.node_died(bytes(msg.node_id))
        return DEFERRED

    @handles(P.Tag.REVOKE_LEASE)
    def on_revoke_lease(self, peer: RpcPeer, msg: P.RevokeLeaseMsg, _bufs: list[bytes]) -> Any:
        self.submitter.revoke(msg.worker_id)
        return DEFERRED

    @handles(P.Tag.REVOKE_PINS)
    def on_revoke_pins(self, peer: RpcPeer, msg: P.RevokePinsMsg, _bufs: list[bytes]) -> Any:
        """The daemon wants the read cache's pins on some objects back: drop them,
        send the releases, then answer (same connection: they arrive first)."""
        if self.store is None:
            return 0
        self.store.revoke(list(msg.oids))
        unpins = self.store.take_released()
        if unpins:
            peer.send(P.ReleaseObjectsMsg(unpins))
        return len(unpins)

    @handles(P.Tag.GENERATOR_ITEM)
    def on_generator_item(self, peer: RpcPeer, msg: P.GeneratorItemMsg, _bufs: list[bytes]) -> Any:
        self.streams.item(peer, msg)
        return DEFERRED

    @handles(P.Tag.LOG_BATCH)
    def on_log_batch(self, peer: RpcPeer, msg: P.LogBatchMsg, _bufs: list[bytes]) -> Any:
        from ._logs import print_lines

        print_lines(msg.lines)
        return DEFERRED

    def block_begin(self) -> None:
        """This thread is about to wait in get() (workers give their CPU back)."""

    def block_end(self) -> None:
        """The wait in get() is over."""

    def daemon_ref(self, msg: Any) -> Any:
        """An owned ref resolved with the value of the daemon's reply to ``msg``."""
        oid = new_id()
        self.objects.post(OE.ValueOwned(oid, None, None))

        def done(reply: Any) -> None:
            data: Any
            if isinstance(reply, BaseException):
                kind, data = ERROR, reply
            elif reply.TAG == P.Tag.ERROR_REPLY:
                kind, data = ERROR, error_from_reply(reply)
            else:
                kind, data = INLINE, serialize(reply.value).payload()
            self.objects.post(OE.ValueSet(oid, kind, data))

        try:
            self.daemon.request(msg, done)
        except ConnectionError as err:
            done(err)
        return ObjectRef(oid, self.address, _counted=True)

    # --- values ---------------------------------------------------------------------------

    def await_ref(self, ref: Any) -> Any:
        from . import _values

        return _values.await_ref(self, ref)

    def ref_future(self, ref: Any) -> Any:
        from . import _values

        return _values.ref_future(self, ref)

    # --- put --------------------------------------------------------------------------------

    def put(self, value: Any) -> Any:
        if isinstance(value, ObjectRef):
            raise TypeError(
                "ac.put() of an ObjectRef is not allowed: pass the ref itself, "
                "or put a list containing it"
            )
        ser = serialize(value, "the value given to put()")
        if ser.size > self.config.inline_threshold and asyncio._get_running_loop() is not None:
            return self._put_in_background(new_id(), ser)
        return self.put_serialized(ser)

    def put_serialized(self, ser: Any, background: bool = False) -> Any:
        """Own a new object holding ``ser``: inline, or in the store when large.

        ``background``: a large value is written without waiting (the ref resolves
        once it is sealed), for a thread that runs an event loop.
        """
        oid = new_id()
        if background and ser.size > self.config.inline_threshold:
            return self._put_in_background(oid, ser)
        nested = [(r.id, r.owner) for r in ser.nested] if ser.nested else None
        if ser.size <= self.config.inline_threshold:
            self.objects.post(OE.ValueOwned(oid, INLINE, ser.payload(), nested, None))
            return ObjectRef(oid, self.address, _counted=True)
        held = defer_interrupts()  # sealed and owned (or aborted) before a Ctrl-C lands
        try:
            self.store.put(oid, ser, self.my_id)
            self.objects.post(OE.ValueOwned(oid, STORE, ser.size, nested, self.node.node_id))
            ref = ObjectRef(oid, self.address, _counted=True)
        except BaseException:
            allow_interrupts(held)
            raise
        try:
            allow_interrupts(held)
        except BaseException:
            del ref  # (not kept by the traceback: the object is freed)
            raise
        return ref

    def _put_in_background(self, oid: bytes, ser: Any) -> Any:
        """``put`` on a loop thread, which must not wait on the daemon (it may be
        spilling): the ref is returned at once and resolves once the object is
        sealed (or fails with the store's error)."""
        nested = [(r.id, r.owner) for r in ser.nested] if ser.nested else None
        self.objects.post(OE.ValueOwned(oid, None, None, nested, self.node.node_id))
        size = ser.size

        def sealed(result: Any) -> None:
            if isinstance(result, BaseException):
                self.objects.post(OE.ValueSet(oid, ERROR, result))
            else:  # (freed at once if every ref died while it was written)
                self.objects.post(OE.ValueSet(oid, STORE, size))

        self.store.put_then(oid, ser, self.my_id, sealed)
        return ObjectRef(oid, self.address, _counted=True)
