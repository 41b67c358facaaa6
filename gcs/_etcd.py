"""Control store on a real etcd server (3.4+), through ``aetcd``'s gRPC channel.

Every key lives under a namespace taken from the address:
``etcd://host:2379/NAME`` stores key ``k`` as ``NAME/`` + ``k`` and hands
keys back without it, so several clusters can share one etcd.

aetcd gives us the channel (with our reconnect options) and the generated
stubs; the calls are made on the stubs directly because aetcd's helpers lack
lease compares and prefix operations inside transactions, and because its
shared watch stream does not resume after an outage. Each watch here owns one
gRPC stream and re-watches from the last revision it saw + 1 when etcd comes
back (see /work/shared/ETCD.md, gotchas 1-6).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import aetcd
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from ._embedded import check_txn
from ._etcd_config import EtcdAddress, EtcdOptions
from ._interface import (
    Compare,
    ControlStore,
    ControlStoreError,
    ControlStoreUnavailableError,
    DeleteOp,
    EventType,
    GetOp,
    KeyValue,
    LeaseExpiredError,
    PutOp,
    RevisionCompactedError,
    TxnResult,
    Watch,
    WatchEvent,
)

__all__ = ["EtcdAddress", "EtcdControlStore", "EtcdOptions"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PAGE: Final = 1000  # keys per range request: stay under the 4 MiB receive limit
_CHANNEL_OPTIONS: Final = {
    # ETCD.md gotcha 4: the default backoff reaches ~6.5 s after an outage
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    # notice a dead peer under an idle watch; etcd allows pings every 5 s
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.max_receive_message_length": 32 * 1024 * 1024,
}
_RETRY_WATCH_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,  # the server went away mid-stream
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
_SETTLE_TIMEOUT: Final = 0.5
_CLOSE_GRACE: Final = 1.0  # seconds for a cancelled watch stream to wind down
_WATCH_BACKOFF: Final = (0.05, 1.0)  # first retry after 0.1 s, then doubling to 1 s
_TARGETS: Final = {
    "value": (rpc.Compare.VALUE, "value"),
    "version": (rpc.Compare.VERSION, "version"),
    "create": (rpc.Compare.CREATE, "create_revision"),
    "mod": (rpc.Compare.MOD, "mod_revision"),
    "lease": (rpc.Compare.LEASE, "lease"),
}
_RESULTS: Final = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}


class _Client(aetcd.Client):
    """aetcd's client on one gRPC target (several endpoints), optionally over TLS.

    Only the channel, the login and the stubs the store uses are set up here.
    """

    def __init__(self, target: str, opts: EtcdOptions, options: dict[str, Any]) -> None:
        super().__init__(username=opts.user, password=opts.password, options=options)
        self._target = target
        self._opts = opts

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        opts = self._opts
        if opts.ca is not None:
            files = (_read(opts.ca), _read(opts.key), _read(opts.cert))
            creds = grpc.ssl_channel_credentials(*files)
            channel = grpc.aio.secure_channel(self._target, creds, self._options.items())
        else:
            channel = grpc.aio.insecure_channel(self._target, self._options.items())
        if opts.user is not None and opts.password is not None:
            request = rpc.AuthenticateRequest(name=opts.user, password=opts.password)
            try:
                reply = await rpc.AuthStub(channel).Authenticate(request, timeout=5.0)
            except grpc.aio.AioRpcError as exc:
                await channel.close()
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise ControlStoreError(
                        f"etcd at {self._target} refused user {opts.user!r}: {exc.details()}"
                    ) from exc
                raise _map_error(exc, self._target) from exc
            self.metadata = (("token", reply.token),)
        self.channel = channel
        self.kvstub = rpc.KVStub(channel)
        self.leasestub = rpc.LeaseStub(channel)
        self._connected.set()


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _map_error(exc: grpc.aio.AioRpcError, where: object) -> Exception:
    code, details = exc.code(), exc.details() or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ControlStoreUnavailableError(f"etcd at {where} is unreachable: {details}")
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
        return LeaseExpiredError(details)
    if "user name is empty" in details or code == grpc.StatusCode.PERMISSION_DENIED:
        return ControlStoreError(
            f"etcd at {where} refused the request ({details}): it needs a user and password "
            f"with access to this cluster's keys (--etcd-user/--etcd-password)"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(details)
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return RevisionCompactedError(details)
    return ControlStoreError(f"etcd at {where} failed: {code.name}: {details}")


async def _finish(call: Any) -> None:
    """End a streaming call (a no-op if it has ended) and wait for its status."""
    call.cancel()
    await call.code()


class EtcdControlStore(ControlStore):
    """:class:`~gcs._interface.ControlStore` on etcd.

    Create it inside the event loop that will use it (gRPC channels belong to
    one loop). Entering it (``async with``) or :meth:`connect` checks that etcd
    answers.

    Args:
        address: ``etcd://host[:port][,host[:port]...][/NAME]``; NAME defaults
            to ``default``; with several IP endpoints gRPC fails over between them.
        call_timeout: seconds before a call fails with ControlStoreUnavailableError.
        options: etcd user/password and TLS files (:class:`EtcdOptions`).

    Raises:
        ValueError: a malformed address.
    """

    def __init__(
        self, address: str, *, call_timeout: float = 5.0, options: EtcdOptions | None = None
    ) -> None:
        self.address = EtcdAddress.parse(address)
        self._ns = self.address.namespace.encode() + b"/"
        target = self.address.grpc_target()
        self._client = _Client(target, options or EtcdOptions(), dict(_CHANNEL_OPTIONS))
        self._call_timeout = call_timeout
        self._watches: set[_EtcdWatch] = set()
        self._closing = False
        self._closed = False

    @classmethod
    async def connect(
        cls, address: str, *, call_timeout: float = 5.0, options: EtcdOptions | None = None
    ) -> EtcdControlStore:
        """Open a store and check that etcd answers.

        Raises:
            ControlStoreUnavailableError: etcd did not answer within ``call_timeout``.
        """
        return await cls(address, call_timeout=call_timeout, options=options).__aenter__()

    async def __aenter__(self) -> EtcdControlStore:
        """Check that etcd answers; closes the store and raises if it does not."""
        try:
            await self.ping()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def ping(self) -> int:
        """Ask etcd for its current revision (a cheap range read)."""
        response = await self._kv("Range", rpc.RangeRequest(key=self._ns, count_only=True))
        return int(response.header.revision)

    # --- plumbing ----------------------------------------------------------

    def _key(self, key: bytes) -> bytes:
        return self._ns + key

    def _strip(self, kv: Any) -> KeyValue:
        return KeyValue(
            kv.key[len(self._ns) :],
            kv.value,
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease,
        )

    async def _invoke(
        self, method: Callable[..., Awaitable[T]], request: object, deadline_s: float | None = None
    ) -> T:
        deadline_s = self._call_timeout if deadline_s is None else deadline_s
        try:
            return await method(request, timeout=deadline_s, metadata=self._client.metadata)
        except grpc.aio.AioRpcError as exc:
            raise _map_error(exc, self.address) from exc

    async def _kv(self, name: str, request: object) -> Any:
        await self._connected()
        return await self._invoke(getattr(self._client.kvstub, name), request)

    async def _lease(self, name: str, request: object) -> Any:
        await self._connected()
        return await self._invoke(getattr(self._client.leasestub, name), request)

    async def _connected(self) -> None:
        if self._closed:
            raise ControlStoreError("the control store is closed")
        await self._client.connect()  # creates the channel once; no I/O

    # --- keys --------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        response = await self._kv("Range", rpc.RangeRequest(key=self._key(key)))
        return self._strip(response.kvs[0]) if response.kvs else None

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        start, end = self._key(prefix), prefix_range_end(self._key(prefix))
        out: list[KeyValue] = []
        revision = 0  # the first page fixes the revision every later page reads at
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=_PAGE, revision=revision)
            response = await self._kv("Range", request)
            revision = revision or response.header.revision
            out.extend(self._strip(kv) for kv in response.kvs)
            if not response.more:
                return out, revision
            start = response.kvs[-1].key + b"\0"

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        if not key:
            raise ValueError("empty key")
        request = rpc.PutRequest(key=self._key(key), value=value, lease=lease)
        response = await self._kv("Put", request)
        return int(response.header.revision)

    async def delete(self, key: bytes) -> bool:
        response = await self._kv("DeleteRange", rpc.DeleteRangeRequest(key=self._key(key)))
        return bool(response.deleted)

    async def delete_prefix(self, prefix: bytes) -> int:
        key = self._key(prefix)
        request = rpc.DeleteRangeRequest(key=key, range_end=prefix_range_end(key))
        response = await self._kv("DeleteRange", request)
        return int(response.deleted)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[PutOp | DeleteOp | GetOp],
        failure: Sequence[PutOp | DeleteOp | GetOp] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure``.

        Raises:
            ValueError: more than 128 compares or operations in a branch, or a
                branch writing one key twice (etcd's rules, checked here first).
            LeaseExpiredError: the branch taken puts under a dead lease.
        """
        check_txn(compares, success, failure)
        request = rpc.TxnRequest(
            compare=[self._compare(c) for c in compares],
            success=[self._op(op) for op in success],
            failure=[self._op(op) for op in failure],
        )
        response = await self._kv("Txn", request)
        revision = int(response.header.revision)
        results = [self._op_result(r, revision) for r in response.responses]
        return TxnResult(bool(response.succeeded), revision, results)

    def _compare(self, c: Compare) -> Any:
        target, field = _TARGETS[c.target]
        return rpc.Compare(
            key=self._key(c.key), target=target, result=_RESULTS[c.op], **{field: c.operand}
        )

    def _op(self, op: PutOp | DeleteOp | GetOp) -> Any:
        key = self._key(op.key)
        if isinstance(op, PutOp):
            return rpc.RequestOp(
                request_put=rpc.PutRequest(key=key, value=op.value, lease=op.lease)
            )
        end = prefix_range_end(key) if op.prefix else b""
        if isinstance(op, DeleteOp):
            return rpc.RequestOp(
                request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end)
            )
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=end))

    def _op_result(self, response: Any, revision: int) -> object:
        kind = response.WhichOneof("response")
        if kind == "response_put":
            return revision  # every write of a transaction shares its revision
        if kind == "response_delete_range":
            return int(response.response_delete_range.deleted)
        return [self._strip(kv) for kv in response.response_range.kvs]

    # --- leases ------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> int:
        """A new lease; etcd counts whole seconds and may raise the TTL to its minimum."""
        if not ttl > 0:
            raise ValueError(f"a lease TTL must be > 0, not {ttl!r}")
        response = await self._lease("LeaseGrant", rpc.LeaseGrantRequest(TTL=math.ceil(ttl)))
        if response.error:
            raise ControlStoreError(f"etcd refused a lease: {response.error}")
        return int(response.ID)

    async def refresh_lease(self, lease_id: int) -> float:
        """Returns the TTL etcd granted again; 0.0 when the lease is gone (gotcha 1)."""
        await self._connected()
        call = self._client.leasestub.LeaseKeepAlive(
            timeout=self._call_timeout, metadata=self._client.metadata
        )
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            await call.done_writing()  # etcd then ends the stream: every operation completes
            reply = await call.read()
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            raise _map_error(exc, self.address) from exc
        finally:
            await _finish(call)
        if reply is grpc.aio.EOF:
            raise ControlStoreUnavailableError(f"etcd at {self.address} closed a lease refresh")
        return max(0.0, float(reply.TTL))

    async def revoke_lease(self, lease_id: int) -> None:
        """End a lease now; a lease already gone is not an error."""
        try:
            await self._lease("LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id))
        except LeaseExpiredError:
            logger.debug("lease %x was already gone when revoked", lease_id)

    # --- watches and maintenance -------------------------------------------

    def watch_prefix(self, prefix: bytes, *, start_revision: int | None = None) -> Watch:
        """Events under ``prefix`` at or after ``start_revision`` (default: from now).

        Must be called in the store's event loop. The stream opens in the
        background; ``async with store.watch_prefix(p) as w`` waits until etcd
        has accepted it, so a write made after entering is never missed.
        """
        if self._closing:
            raise ControlStoreError("the control store is closed")
        start = start_revision if start_revision and start_revision > 0 else None
        watch = _EtcdWatch(self, self._key(prefix), start)
        self._watches.add(watch)
        return watch

    async def compact(self, revision: int) -> None:
        """Forget history before ``revision`` (etcd's compaction, for the whole etcd)."""
        await self._kv("Compact", rpc.CompactionRequest(revision=revision, physical=True))

    async def aclose(self) -> None:
        """Close every watch and the gRPC channel; idempotent."""
        if self._closing:
            return
        self._closing = True
        for watch in list(self._watches):
            await watch.aclose()
        if self._client.channel is not None:
            await self._settle()
        self._closed = True
        await self._client.close()

    async def _settle(self) -> None:
        # A cancelled stream's status arrives from gRPC's poller thread a little
        # later; if this event loop closed first, gRPC would hand it to the next
        # loop. One round trip on the channel comes back after it.
        try:
            request = rpc.RangeRequest(key=self._ns, count_only=True)
            await self._invoke(self._client.kvstub.Range, request, deadline_s=_SETTLE_TIMEOUT)
        except (ControlStoreError, ValueError) as exc:  # unreachable, or refused
            logger.debug("etcd did not answer while closing: %s", exc)


_CLOSED: Final = object()


class _EtcdWatch(Watch):
    """One gRPC watch stream, resumed from the last revision seen after an outage.

    A pump task reads the stream into a bounded queue. Closing cancels the
    gRPC call rather than the task whenever it can: an operation abandoned by
    a cancelled task completes later, on whatever event loop runs then.
    """

    def __init__(self, store: EtcdControlStore, key: bytes, start: int | None) -> None:
        self._store = store
        self._key = key
        self._next_revision = start  # None: etcd's "now", fixed when the stream opens
        # bounded: a slow consumer stalls the stream (gRPC flow control), not memory
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)
        loop = asyncio.get_running_loop()
        self._established: asyncio.Future[None] = loop.create_future()
        self._closed = False
        self._failures = 0  # stream losses since the last accepted watch
        self._call: Any = None  # the open gRPC stream, if any
        self._opened: asyncio.Future[None] = loop.create_future()  # the current stream's
        self._pump = loop.create_task(self._run(), name=f"gcs-etcd-watch-{key!r}")

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __aenter__(self) -> _EtcdWatch:
        """Wait until etcd has accepted the watch.

        Raises:
            ControlStoreUnavailableError: etcd did not accept it in time.
        """
        try:
            await asyncio.wait_for(asyncio.shield(self._established), self._store._call_timeout)
        except TimeoutError:
            await self.aclose()
            raise ControlStoreUnavailableError(
                f"etcd at {self._store.address} did not open a watch in time"
            ) from None
        return self

    async def __anext__(self) -> WatchEvent:
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # wake any other reader too
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            await self.aclose()
            raise item
        assert isinstance(item, WatchEvent)
        return item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store._watches.discard(self)
        await self._stop_pump()
        self._drain()
        self._queue.put_nowait(_CLOSED)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _stop_pump(self) -> None:
        pump = self._pump
        if self._call is not None:
            # a stream half opened has gRPC operations in flight: let it finish opening
            await asyncio.wait(
                {pump, self._opened}, timeout=_CLOSE_GRACE, return_when=asyncio.FIRST_COMPLETED
            )
        if self._call is not None:
            self._call.cancel()  # the pending read() fails now, on this loop
            self._drain()  # unblock a put into a full queue
            await asyncio.wait({pump}, timeout=_CLOSE_GRACE)
        if not pump.done():
            pump.cancel()
            await asyncio.wait({pump})
        if not pump.cancelled() and (exc := pump.exception()) is not None:
            logger.error("watch on %r failed while closing", self._key, exc_info=exc)

    async def _run(self) -> None:
        try:
            while not self._closed:
                try:
                    await self._stream()
                    reason = "etcd ended the stream"
                except ControlStoreUnavailableError as exc:
                    reason = str(exc)
                if self._closed:
                    return
                level = logging.DEBUG if self._failures else logging.INFO
                logger.log(
                    level,
                    "watch on %r lost etcd (%s); will resume at revision %s",
                    self._key,
                    reason,
                    self._next_revision,
                )
                self._failures += 1
                # retry pacing, not synchronization
                await asyncio.sleep(min(_WATCH_BACKOFF[0] * 2**self._failures, _WATCH_BACKOFF[1]))
        except Exception as exc:  # compacted, refused, or a bug: the reader gets it
            await self._queue.put(exc)
        finally:
            _resolve(self._established)  # let __aenter__ go on: any error is queued

    async def _stream(self) -> None:
        await self._store._connected()
        client = self._store._client
        self._opened = asyncio.get_running_loop().create_future()
        call = self._call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        try:
            create = rpc.WatchCreateRequest(
                key=self._key,
                range_end=prefix_range_end(self._key),
                start_revision=self._next_revision or 0,
                prev_kv=True,
            )
            await call.write(rpc.WatchRequest(create_request=create))
            while not self._closed and (response := await call.read()) is not grpc.aio.EOF:
                await self._handle(response)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _RETRY_WATCH_CODES:
                raise ControlStoreUnavailableError(exc.details() or exc.code().name) from exc
            raise _map_error(exc, self._store.address) from exc
        finally:
            _resolve(self._opened)
            await _finish(call)
            self._call = None

    async def _handle(self, response: Any) -> None:
        if response.created:
            if self._next_revision is None:
                self._next_revision = response.header.revision + 1
            _resolve(self._established)
            _resolve(self._opened)
            if self._failures:
                logger.info("watch on %r resumed at revision %s", self._key, self._next_revision)
                self._failures = 0
        if response.compact_revision:
            raise RevisionCompactedError(
                f"watch start revision {self._next_revision} is compacted "
                f"(etcd keeps revisions from {response.compact_revision})"
            )
        if response.canceled:
            raise ControlStoreError(f"etcd cancelled the watch: {response.cancel_reason}")
        for event in response.events:
            if self._closed:
                return
            await self._queue.put(self._event(event))
            self._next_revision = event.kv.mod_revision + 1

    def _event(self, event: Any) -> WatchEvent:
        kv = self._store._strip(event.kv)
        prev = self._store._strip(event.prev_kv) if event.HasField("prev_kv") else None
        if event.type == rpc.Event.DELETE:
            # a DELETE carries only the key and the revision: the value is in prev_kv
            return WatchEvent(EventType.DELETE, kv.key, kv.mod_revision, None, prev)
        return WatchEvent(EventType.PUT, kv.key, kv.mod_revision, kv, prev)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
