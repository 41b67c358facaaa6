"""The wire protocol: bytes <-> typed messages. No sockets, no ``await``.

A frame is::

    prelude   struct "<IH": header length, number of raw buffers
    lengths   one "<Q" per raw buffer
    header    msgpack array [tag, [fields...]]
    buffers   raw bytes (pickle-5 out-of-band data), never inside msgpack

Every message is an immutable ``NamedTuple`` with a class attribute ``TAG``
from :class:`Tag`; :data:`MESSAGES` maps tags back to classes, built once.
Field values are msgpack-native (bytes, str, int, float, bool, None, lists,
dicts).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple, TypeVar, cast

import msgpack

from .errors import MessageTooLargeError, ProtocolError

__all__ = ["MESSAGES", "PROTOCOL_VERSION", "FrameDecoder", "Tag", "check_size", "encode"]

PROTOCOL_VERSION = 1

_M = TypeVar("_M")

_PRELUDE = struct.Struct("<IH")
MAX_BUFFERS = 1024  # raw buffers in one frame
STREAM_MIN_BYTES = 1 << 20  # raw buffers this large are received into their own memory
_BUFLEN = struct.Struct("<Q")


class Tag(IntEnum):
    # handshake
    HELLO = 1
    AUTH = 2
    WELCOME = 3
    REJECT = 4
    # generic replies
    REPLY = 10
    ERROR_REPLY = 11
    # tasks and actor calls (owner <-> worker, direct)
    PUSH_TASK = 20
    TASK_RESULT = 21
    ACTOR_CALL = 22
    CANCEL_TASK = 23
    TASKS_RETURNED = 24
    STEAL_TASKS = 25
    # ownership (borrower <-> owner)
    GET_OBJECT = 30
    ADD_BORROWER = 31
    REMOVE_BORROWERS = 32
    OBJECT_LOCATION = 33
    # node daemon services
    REGISTER_WORKER = 40
    REQUEST_LEASE = 41
    RETURN_LEASE = 42
    REVOKE_LEASE = 43
    WORKER_BLOCKED = 44
    CREATE_ACTOR = 45
    HOST_ACTOR = 46
    KILL_ACTOR = 47
    DROP_ACTOR = 48
    WAIT_ACTOR = 49
    GET_NAMED_ACTOR = 50
    CLUSTER_INFO = 51
    LOG_BATCH = 52
    LIST_STATE = 54
    REGISTER_DRIVER = 55
    SHUTDOWN_NODE = 56
    CREATE_PLACEMENT_GROUP = 58
    WAIT_PLACEMENT_GROUP = 59
    REMOVE_PLACEMENT_GROUP = 70
    GET_PLACEMENT_GROUP = 71
    # object store (client <-> node daemon)
    CREATE_OBJECT = 60
    SEAL_OBJECT = 61
    OPEN_OBJECTS = 62
    RELEASE_OBJECTS = 63
    FREE_OBJECTS = 64
    ABORT_OBJECT = 65
    REVOKE_PINS = 140  # node daemon -> process: drop read-cache pins
    # peer-to-peer object transfer (node daemon <-> node daemon, "transfer" connections)
    PULL_OBJECT = 100
    TRANSFER_STATS = 101
    TRANSFER_OPEN = 102
    TRANSFER_OPENED = 103
    TRANSFER_READ = 104
    TRANSFER_DATA = 105
    TRANSFER_ERROR = 106
    TRANSFER_RELEASE = 107
    # cluster (node daemon <-> node daemon)
    LOAD_REPORT = 80
    PLACER_REPORT = 81
    SPILL_WORK = 82
    NODE_DIED = 83
    OWNER_GONE = 84
    # observability (process -> node daemon; state queries)
    TASK_EVENTS = 90
    STATE_QUERY = 91
    LOG_SUBSCRIBE = 92  # node daemon -> peer node daemon: send me (no more) worker output
    # streaming generators (worker -> owner items, owner -> worker acks)
    GENERATOR_ITEM = 108
    ITEMS_ACK = 109
    # runtime-env packages (process -> its node daemon; node daemon -> peer daemon)
    PACKAGE_PUT = 110
    PACKAGE_GET = 111
    # placement groups across nodes (coordinator <-> node daemons, two-phase; _cluster_pg)
    PG_PREPARE = 170
    PG_COMMIT = 171
    PG_RELEASE = 172
    PG_RECORD = 173


def message(tag: Tag) -> Callable[[type[_M]], type[_M]]:
    """Give a message class its tag (a class attribute, not a tuple field)."""

    def mark(cls: type[_M]) -> type[_M]:
        cls.TAG = tag  # type: ignore[attr-defined]
        return cls

    return mark


# --- handshake ------------------------------------------------------------------


@message(Tag.HELLO)
class HelloMsg(NamedTuple):
    """Server -> client, first frame: who the server is and a nonce to sign."""

    version: int
    role: str
    peer_id: bytes
    nonce: bytes


@message(Tag.AUTH)
class AuthMsg(NamedTuple):
    """Client -> server: proof of the cluster token over the server's nonce."""

    version: int
    role: str
    peer_id: bytes
    nonce: bytes
    proof: bytes


@message(Tag.WELCOME)
class WelcomeMsg(NamedTuple):
    """Server -> client: accepted, with the server's proof over the client nonce."""

    proof: bytes


@message(Tag.REJECT)
class RejectMsg(NamedTuple):
    """Either side, before closing: why the peer was refused."""

    reason: str


# --- generic replies -------------------------------------------------------------


@message(Tag.REPLY)
class ReplyMsg(NamedTuple):
    rid: int
    value: Any


@message(Tag.ERROR_REPLY)
class ErrorReplyMsg(NamedTuple):
    """A request failed: ``kind`` names the error class, ``blob`` pickles it (or None)."""

    rid: int
    kind: str
    message: str
    blob: bytes | None


# --- tasks and actor calls ---------------------------------------------------------


@message(Tag.PUSH_TASK)
class PushTaskMsg(NamedTuple):
    """Owner -> leased worker: run a task.

    ``args`` pickles ``(args, kwargs)`` (b"" for none); ``resolved`` lists the
    top-level ObjectRef arguments already resolved by the owner as
    ``[index, kind, payload]``; ``fn_blob`` is sent the first time a function
    crosses a connection, ``None`` afterwards.
    """

    rid: int
    task_id: bytes
    fn_id: bytes
    fn_blob: bytes | None
    name: str
    args: bytes
    resolved: list[Any]
    return_ids: list[bytes]
    owner: list[Any]
    opts: int
    stream: int = 0  # 0: a plain task; else a streaming generator, back-pressure + 1


@message(Tag.TASK_RESULT)
class TaskResultMsg(NamedTuple):
    """Worker -> owner: ``results`` is one ``[kind, payload, nested]`` per return id."""

    rid: int
    results: list[Any]


@message(Tag.ACTOR_CALL)
class ActorCallMsg(NamedTuple):
    """Caller -> the worker hosting the actor: call a method."""

    rid: int
    actor_id: bytes
    method: str
    task_id: bytes
    args: bytes
    resolved: list[Any]
    return_ids: list[bytes]
    owner: list[Any]
    stream: int = 0  # 0: a plain call; else a streaming generator, back-pressure + 1
    epoch: int = -1  # the incarnation the caller means; another one refuses it (-1: any)


@message(Tag.CANCEL_TASK)
class CancelTaskMsg(NamedTuple):
    """Owner -> worker: cancel a task; ``recursive``: and the tasks it submitted."""

    task_id: bytes
    force: bool
    recursive: bool = False


@message(Tag.TASKS_RETURNED)
class TasksReturnedMsg(NamedTuple):
    """Worker -> owner: these pushed tasks were not started; submit them elsewhere.

    ``blocked``: the worker is waiting in get() (push nothing more to it until
    its running task ends); else it answers a STEAL_TASKS.
    """

    rids: list[int]
    blocked: bool


@message(Tag.STEAL_TASKS)
class StealTasksMsg(NamedTuple):
    """Owner -> leased worker: hand back this owner's tasks that have not started."""


# --- ownership ---------------------------------------------------------------------


@message(Tag.GET_OBJECT)
class GetObjectMsg(NamedTuple):
    """Borrower -> owner: the value (or location) of an object, once ready."""

    rid: int
    oid: bytes


@message(Tag.ADD_BORROWER)
class AddBorrowerMsg(NamedTuple):
    rid: int
    oid: bytes
    borrower: list[Any]


@message(Tag.REMOVE_BORROWERS)
class RemoveBorrowersMsg(NamedTuple):
    borrower: list[Any]
    oids: list[bytes]


@message(Tag.OBJECT_LOCATION)
class ObjectLocationMsg(NamedTuple):
    """Borrower -> owner: a store copy of ``oid`` now lives on node ``node_id`` too."""

    oid: bytes
    node_id: bytes


# --- node daemon services ------------------------------------------------------------


@message(Tag.REGISTER_WORKER)
class RegisterWorkerMsg(NamedTuple):
    rid: int
    worker_id: bytes
    pid: int
    address: list[Any]


@message(Tag.REGISTER_DRIVER)
class RegisterDriverMsg(NamedTuple):
    rid: int
    driver_id: bytes
    pid: int
    address: list[Any]
    embedded: bool
    sys_path: list[str]


@message(Tag.REQUEST_LEASE)
class RequestLeaseMsg(NamedTuple):
    """Owner -> daemon: a worker for ``shape``; ``runtime_env``: the wire spec of the
    env named by the shape's ``runtime_env:<hash>`` key (``actorcore._runtime_env``)."""

    rid: int
    shape: dict[str, float]
    runtime_env: dict[str, Any] | None = None
    # where the first queued task's large arguments live: {node id: bytes}
    # (a cluster node spills work to the placer with it; locality by bytes)
    args: dict[bytes, int] | None = None


@message(Tag.RETURN_LEASE)
class ReturnLeaseMsg(NamedTuple):
    worker_id: bytes
    kill: bool


@message(Tag.REVOKE_LEASE)
class RevokeLeaseMsg(NamedTuple):
    worker_id: bytes


@message(Tag.WORKER_BLOCKED)
class WorkerBlockedMsg(NamedTuple):
    blocked: bool


@message(Tag.CREATE_ACTOR)
class CreateActorMsg(NamedTuple):
    """Owner -> daemon: create an actor; replies once it is placed (or dead)."""

    rid: int
    actor_id: bytes
    spec: dict[str, Any]


@message(Tag.HOST_ACTOR)
class HostActorMsg(NamedTuple):
    """Daemon -> worker: construct an actor here; replies when ``__init__`` ended."""

    rid: int
    actor_id: bytes
    spec: dict[str, Any]
    epoch: int = 0  # its incarnation: calls meant for another one are refused


@message(Tag.KILL_ACTOR)
class KillActorMsg(NamedTuple):
    rid: int
    actor_id: bytes
    no_restart: bool


@message(Tag.DROP_ACTOR)
class DropActorMsg(NamedTuple):
    actor_id: bytes
    reason: str


@message(Tag.WAIT_ACTOR)
class WaitActorMsg(NamedTuple):
    """Caller -> daemon: the actor's address once ALIVE with epoch >= ``min_epoch``."""

    rid: int
    actor_id: bytes
    min_epoch: int


@message(Tag.GET_NAMED_ACTOR)
class GetNamedActorMsg(NamedTuple):
    rid: int
    name: str
    namespace: str


@message(Tag.CLUSTER_INFO)
class ClusterInfoMsg(NamedTuple):
    rid: int
    what: str


@message(Tag.LOG_BATCH)
class LogBatchMsg(NamedTuple):
    lines: list[Any]


@message(Tag.LIST_STATE)
class ListStateMsg(NamedTuple):
    rid: int
    kind: str


@message(Tag.SHUTDOWN_NODE)
class ShutdownNodeMsg(NamedTuple):
    rid: int


@message(Tag.CREATE_PLACEMENT_GROUP)
class CreatePlacementGroupMsg(NamedTuple):
    rid: int
    pg_id: bytes
    bundles: list[dict[str, float]]
    strategy: str
    name: str
    lifetime: str = ""  # "detached": outlives its driver (in a cluster)
    owner: bytes = b""  # forwarded to the cluster's coordinator: the driver it ends with
    owner_node: bytes = b""  # and that driver's node


@message(Tag.WAIT_PLACEMENT_GROUP)
class WaitPlacementGroupMsg(NamedTuple):
    """Replies True once the group holds its bundles (False if it was removed)."""

    rid: int
    pg_id: bytes


@message(Tag.REMOVE_PLACEMENT_GROUP)
class RemovePlacementGroupMsg(NamedTuple):
    rid: int
    pg_id: bytes


@message(Tag.GET_PLACEMENT_GROUP)
class GetPlacementGroupMsg(NamedTuple):
    rid: int
    name: str


# --- object store ----------------------------------------------------------------------


@message(Tag.CREATE_OBJECT)
class CreateObjectMsg(NamedTuple):
    rid: int
    oid: bytes
    size: int
    owner: list[Any]


@message(Tag.SEAL_OBJECT)
class SealObjectMsg(NamedTuple):
    rid: int
    oid: bytes
    meta: bytes


@message(Tag.OPEN_OBJECTS)
class OpenObjectsMsg(NamedTuple):
    rid: int
    oids: list[bytes]


@message(Tag.RELEASE_OBJECTS)
class ReleaseObjectsMsg(NamedTuple):
    oids: list[bytes]


@message(Tag.REVOKE_PINS)
class RevokePinsMsg(NamedTuple):
    """The daemon asks a process to drop the pins its read cache holds on ``oids``;
    the reply comes after the process sent the releases (same connection)."""

    rid: int
    oids: list[bytes]


@message(Tag.FREE_OBJECTS)
class FreeObjectsMsg(NamedTuple):
    """Owner -> its node daemon: free ``oids``; ``holders[i]`` are the nodes holding a
    copy of ``oids[i]`` (None: this node only). Daemon -> a holder's daemon: free
    the copies there of ``owner``'s objects."""

    oids: list[bytes]
    holders: list[list[bytes]] | None = None
    owner: bytes = b""


@message(Tag.ABORT_OBJECT)
class AbortObjectMsg(NamedTuple):
    oid: bytes


# --- peer-to-peer object transfer --------------------------------------------------------


@message(Tag.PULL_OBJECT)
class PullObjectMsg(NamedTuple):
    """Anyone -> node daemon: copy ``oid`` into this node's store from one of ``holders``
    (their transfer addresses, ``[host, port]``); replies with its size once sealed here."""

    rid: int
    oid: bytes
    holders: list[Any]
    owner: bytes


@message(Tag.TRANSFER_STATS)
class TransferStatsMsg(NamedTuple):
    """Anyone -> node daemon: the transfer service's address and counters."""

    rid: int


@message(Tag.TRANSFER_OPEN)
class TransferOpenMsg(NamedTuple):
    """Puller -> holder: pin ``oid`` for this connection; answered by OPENED or ERROR."""

    rid: int
    oid: bytes


@message(Tag.TRANSFER_OPENED)
class TransferOpenedMsg(NamedTuple):
    """Holder -> puller: the object's size and its store layout (``meta``)."""

    rid: int
    size: int
    meta: bytes


@message(Tag.TRANSFER_READ)
class TransferReadMsg(NamedTuple):
    """Puller -> holder: send ``[offset, offset + length)`` of an opened object."""

    rid: int
    oid: bytes
    offset: int
    length: int


@message(Tag.TRANSFER_DATA)
class TransferDataMsg(NamedTuple):
    """Holder -> puller: the bytes of a READ, as the frame's one raw buffer."""

    rid: int


@message(Tag.TRANSFER_ERROR)
class TransferErrorMsg(NamedTuple):
    """Holder -> puller: an OPEN or READ could not be served."""

    rid: int
    reason: str


@message(Tag.TRANSFER_RELEASE)
class TransferReleaseMsg(NamedTuple):
    """Puller -> holder: done with ``oid`` (unpin it once)."""

    oid: bytes


# --- cluster ------------------------------------------------------------------------


@message(Tag.LOAD_REPORT)
class LoadReportMsg(NamedTuple):
    """Node daemon -> peer node daemon: its available resources, sent when they change."""

    node_id: bytes
    available: dict[str, float]


@message(Tag.PLACER_REPORT)
class PlacerReportMsg(NamedTuple):
    """Node daemon -> the placer's node daemon: its load (periodic and on change)."""

    node_id: bytes
    seq: int
    available: dict[str, float]
    total: dict[str, float]
    queue_len: int
    queue_wait_s: float


@message(Tag.SPILL_WORK)
class SpillWorkMsg(NamedTuple):
    """Node daemon -> the placer: choose a node for this work; replies that node's id
    once placed (held meanwhile when nothing fits), an error when it never can.

    ``strategy``: ``"DEFAULT"``, ``"SPREAD"`` or ``[node id, soft]`` (node affinity);
    ``args``: {node id: bytes of the work's arguments held there}.
    """

    rid: int
    work_id: bytes
    shape: dict[str, float]
    strategy: Any
    args: dict[bytes, int]
    report: Any  # the sender's PlacerReportMsg fields now (a fresher view), or None


@message(Tag.NODE_DIED)
class NodeDiedMsg(NamedTuple):
    """Node daemon -> its processes: node ``node_id`` left the cluster (its lease expired
    or it left); its workers, actors and store copies are gone."""

    node_id: bytes


@message(Tag.LOG_SUBSCRIBE)
class LogSubscribeMsg(NamedTuple):
    """Node daemon -> peer node daemon: this node has drivers (``wanted``) and wants
    the output of the peer's workers forwarded to it, or no longer (none left)."""

    wanted: bool


@message(Tag.OWNER_GONE)
class OwnerGoneMsg(NamedTuple):
    """Node daemon -> peer node daemon: process ``owner`` ended; its non-detached
    actors, leases and objects on the peer go too. Sent only to nodes that may hold
    something for it, and passed on to the nodes that pulled its copies from the
    peer; ``told``: the nodes told already (not told again)."""

    owner: bytes
    told: list[bytes] | None = None


# --- observability ---------------------------------------------------------------------


@message(Tag.TASK_EVENTS)
class TaskEventsMsg(NamedTuple):
    """Process -> its node daemon: task state changes and user metric samples, batched.

    ``events`` is the batch msgpack-packed once more (the daemon unpacks it only
    when someone looks); ``counts`` is ``[events, finished, failed]``.
    """

    events: bytes
    counts: list[int]
    samples: list[Any]


@message(Tag.STATE_QUERY)
class StateQueryMsg(NamedTuple):
    """Anyone -> a node daemon: this node's rows of one kind of state (see actorcore._obs)."""

    rid: int
    kind: str
    filters: list[Any]
    limit: int
    options: dict[str, Any]


def _collect() -> dict[int, type]:
    table: dict[int, type] = {}
    for obj in list(globals().values()):
        tag = getattr(obj, "TAG", None)
        if isinstance(obj, type) and isinstance(tag, Tag):
            if tag in table:
                raise RuntimeError(f"duplicate tag {tag!r}")
            table[int(tag)] = obj
    return table


# --- streaming generators --------------------------------------------------------


@message(Tag.GENERATOR_ITEM)
class GeneratorItemMsg(NamedTuple):
    """Worker -> owner: items ``start``, ``start + 1``, ... of the stream ``stream_id``.

    The stream is named by the call's end ref. ``items`` holds ``[oid, result]``
    each, ``result`` being ``[kind, data, nested]`` like a task result;
    ``node_id`` is the producer's node (where store items are). ``rid`` names
    the attempt (the rid of the call's send: a retry is sent with a newer one);
    ``DROPPED_ATTEMPT`` marks items made after the actor was dropped.
    """

    stream_id: bytes
    start: int
    items: list[Any]
    node_id: bytes | None = None
    rid: int = 0


DROPPED_ATTEMPT = -1  # GeneratorItemMsg.rid of items nobody may read (a dropped actor's)


@message(Tag.ITEMS_ACK)
class ItemsAckMsg(NamedTuple):
    """Owner -> worker: the consumer of ``stream_id`` has taken ``consumed`` items."""

    stream_id: bytes
    consumed: int


# --- runtime-env packages ----------------------------------------------------------------


@message(Tag.PACKAGE_PUT)
class PackagePutMsg(NamedTuple):
    """Process -> its node daemon: bytes ``offset..`` of package ``digest`` (``total``
    bytes). An empty ``data`` at offset 0 asks whether the node has it; replies True
    once the node holds the whole package."""

    rid: int
    digest: str
    total: int
    offset: int
    data: bytes


@message(Tag.PACKAGE_GET)
class PackageGetMsg(NamedTuple):
    """Node daemon -> peer daemon: up to ``length`` bytes of package ``digest`` from
    ``offset``; replies ``[total, data]``."""

    rid: int
    digest: str
    offset: int
    length: int


# --- placement groups across nodes (two-phase reservation, see _cluster_pg) ----------------


@message(Tag.PG_RECORD)
class PgRecordMsg(NamedTuple):
    """Coordinator -> the node a group was created through: its record now (the
    one written to etcd; sent straight, so that node's waiters need no watch)."""

    record: bytes


@message(Tag.PG_PREPARE)
class PgPrepareMsg(NamedTuple):
    """Coordinator -> node daemon: hold ``bundles`` ([index, shape] pairs) of a group
    for ``attempt`` (not usable yet); replies ``[held, available]``: False when they
    do not fit now, and the node's available resources after."""

    rid: int
    pg_id: bytes
    attempt: int
    bundles: list[Any]
    coordinator: bytes


@message(Tag.PG_COMMIT)
class PgCommitMsg(NamedTuple):
    """Coordinator -> node daemon: offer the bundles held for ``attempt``; replies
    ``[committed, available]`` (False: nothing held for that attempt)."""

    rid: int
    pg_id: bytes
    attempt: int


@message(Tag.PG_RELEASE)
class PgReleaseMsg(NamedTuple):
    """Any node -> node daemon: give back bundles ``indexes`` of a group (empty: all);
    replies the node's available resources after."""

    rid: int
    pg_id: bytes
    indexes: list[int]


MESSAGES: dict[int, type] = _collect()
_ARITY: dict[int, int] = {tag: len(getattr(cls, "_fields", ())) for tag, cls in MESSAGES.items()}
_new_tuple = tuple.__new__
# tags of messages that carry a request id as their first field
REQUESTS: frozenset[int] = frozenset(
    tag for tag, cls in MESSAGES.items() if getattr(cls, "_fields", ())[:1] == ("rid",)
)

_NO_LENS: list[int] = []
_unpackb = msgpack.unpackb
_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_pack = _packer.pack


class _Packers(threading.local):
    """One msgpack Packer per thread (``packb`` builds a new one per call; a Packer
    is not thread-safe, and frames are encoded on several threads)."""

    pack: Callable[[Any], bytes]

    def __init__(self) -> None:
        self.pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


_packers = _Packers()


def encode(msg: Any, buffers: list[Any] | None = None) -> bytes | list[Any]:
    """Encode one message into a frame.

    Returns one ``bytes`` when there are no buffers, else a list of byte-likes
    to write in order (the buffers themselves are never copied).
    """
    header = _packers.pack((msg.TAG, msg))
    if not buffers:
        return _PRELUDE.pack(len(header), 0) + header
    lens = b"".join(_BUFLEN.pack(memoryview(b).nbytes) for b in buffers)
    return [_PRELUDE.pack(len(header), len(buffers)) + lens + header, *buffers]


def encode_all(msgs: list[Any], max_header_bytes: int, max_frame_bytes: int) -> bytes:
    """The frames of several messages without buffers, one after the other in one bytes.

    Raises:
        MessageTooLargeError: a message is over the limits (see :func:`check_size`).
    """
    pack = _packers.pack
    prelude = _PRELUDE.pack
    parts = []
    for msg in msgs:
        header = pack((msg.TAG, msg))
        if len(header) > max_header_bytes or len(header) + _PRELUDE.size > max_frame_bytes:
            check_size(prelude(len(header), 0) + header, max_header_bytes, max_frame_bytes)
        parts.append(prelude(len(header), 0))
        parts.append(header)
    return b"".join(parts)


def check_size(frame: bytes | list[Any], max_header_bytes: int, max_frame_bytes: int) -> int:
    """The size of an encoded frame; raises if a peer with these limits would refuse it.

    Raises:
        MessageTooLargeError: the header or the whole frame is over its limit.
    """
    if isinstance(frame, bytes):
        size = len(frame)
        header = size - _PRELUDE.size
    else:
        size = sum(memoryview(b).nbytes for b in frame)
        header = _PRELUDE.unpack_from(frame[0])[0]
    if header > max_header_bytes:
        raise MessageTooLargeError(
            f"a message of {header} bytes is over the limit of {max_header_bytes} "
            f"(max_header_bytes); large values belong in the object store (ac.put)"
        )
    if size > max_frame_bytes:
        raise MessageTooLargeError(
            f"a frame of {size} bytes is over the limit of {max_frame_bytes} (max_frame_bytes)"
        )
    return size


def encode_bytes(msg: Any) -> bytes:
    """Encode a message that has no raw buffers (handshake, control) as one bytes."""
    header = msgpack.packb((msg.TAG, msg), use_bin_type=True)
    return _PRELUDE.pack(len(header), 0) + header


def decode_header(header: Any) -> Any:
    """Turn a decoded msgpack header into its typed message, or raise ProtocolError."""
    try:
        tag, fields = header
        cls = MESSAGES[tag]
        if len(fields) == _ARITY[tag]:  # all fields sent: no defaults to fill (a C call)
            return _new_tuple(cls, fields)
        return cls(*fields)
    except KeyError:
        raise ProtocolError(f"unknown message type {header[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"malformed message: {e}") from None


class _Fill:
    """The raw buffers of a frame being received straight into their own memory."""

    __slots__ = ("bufs", "i", "msg", "off", "views")

    def __init__(self, msg: Any, lens: list[int]) -> None:
        self.msg = msg
        self.bufs = [bytearray(n) for n in lens]
        self.views = [memoryview(b) for b in self.bufs]
        self.i = 0
        self.off = 0

    def take(self, data: memoryview) -> memoryview | None:
        """Copy from ``data``; returns what follows the frame once it is whole, else None."""
        views = self.views
        while True:
            while self.i < len(views) and self.off == len(views[self.i]):
                self.i += 1
                self.off = 0
            if self.i == len(views):
                return data
            if not data:
                return None
            view = views[self.i]
            n = min(len(view) - self.off, len(data))
            view[self.off : self.off + n] = data[:n]
            self.off += n
            data = data[n:]


class FrameDecoder:
    """Incremental frame parser: feed bytes, take whole frames.

    ``feed`` returns a list of ``(message, buffers)``. A malformed or oversized
    frame raises :class:`ProtocolError`; after that the stream is unusable.

    Raw buffers of :data:`STREAM_MIN_BYTES` or more are not gathered in the
    decoder's own buffer: once the frame's header arrived (and passed the
    limits), each buffer is allocated at its size and filled as bytes come in,
    and handed out as a ``bytearray`` (one copy, no regrowth).
    """

    __slots__ = ("_buf", "_fill", "_max_frame", "_max_header", "_pos")

    def __init__(self, max_header_bytes: int, max_frame_bytes: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_header = max_header_bytes
        self._max_frame = max_frame_bytes
        self._fill: _Fill | None = None

    def pending_bytes(self) -> int:
        return len(self._buf) - self._pos

    def take_rest(self) -> bytes:
        """The bytes fed but not decoded yet (handed on after a handshake)."""
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest

    def feed(
        self, data: bytes | bytearray | memoryview, limit: int = 0
    ) -> list[tuple[Any, list[bytes]]]:
        """Append ``data``; return the whole frames now decodable.

        ``limit``: decode at most that many frames (0: all). The rest stays
        undecoded bytes: a handshake decodes one frame at a time, so nothing a
        peer sent behind a failed AUTH is ever decoded.
        """
        out: list[tuple[Any, list[bytes]]] = []
        fill = self._fill
        if fill is not None:
            rest = fill.take(memoryview(data).cast("B"))
            if rest is None:
                return out
            self._fill = None
            out.append((fill.msg, cast(list[bytes], fill.bufs)))
            data = rest
        buf = self._buf
        if self._pos == len(buf):  # nothing held back: decode ``data`` in place (no copy)
            if self._pos:
                buf.clear()
                self._pos = 0
            if type(data) is bytes:  # (what a socket read returns: sliced as it is)
                pos = self._decode(data, 0, out, limit)
                if pos < len(data):  # what was not decoded waits in the buffer
                    buf += memoryview(data)[pos:]
                return out
            src: Any = data
        else:
            buf += data
            src = buf
        view = memoryview(src)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        try:
            pos = self._decode(view, self._pos if src is buf else 0, out, limit)
            if src is not buf:  # what was not decoded waits in the buffer
                if pos < view.nbytes:
                    buf += view[pos:]
                self._pos = 0
                return out
        finally:
            view.release()  # (``buf`` may grow or shrink again)
        self._pos = pos
        if pos > 1 << 20:
            del buf[:pos]
            self._pos = 0
        return out

    def _decode(
        self, view: bytes | memoryview, pos: int, out: list[tuple[Any, list[bytes]]], limit: int
    ) -> int:
        """Decode the whole frames in ``view`` (bytes, or a memoryview of bytes) from
        ``pos`` on into ``out``; returns where the first frame not decoded begins."""
        end = len(view)
        unpack_prelude = _PRELUDE.unpack_from
        while end - pos >= 6:
            hlen, nbufs = unpack_prelude(view, pos)
            if nbufs > MAX_BUFFERS:
                raise ProtocolError(f"frame announces {nbufs} buffers, more than {MAX_BUFFERS}")
            if hlen > self._max_header:
                raise MessageTooLargeError(
                    f"frame header of {hlen} bytes exceeds the limit of {self._max_header}"
                )
            if nbufs:
                start = pos + 6 + 8 * nbufs
                if end < start:
                    break
                lens = [_BUFLEN.unpack_from(view, pos + 6 + 8 * i)[0] for i in range(nbufs)]
                total = hlen + sum(lens)
            else:
                start = pos + 6
                lens = _NO_LENS
                total = hlen
            if total > self._max_frame:
                raise MessageTooLargeError(
                    f"frame of {total} bytes exceeds the limit of {self._max_frame}"
                )
            if end - start < total:
                if total - hlen >= STREAM_MIN_BYTES and end - start >= hlen and not limit:
                    pos = self._stream(view, start, hlen, lens, end)
                break
            try:
                header = _unpackb(view[start : start + hlen], use_list=False, raw=False)
            except Exception as e:
                raise ProtocolError(f"undecodable frame header: {e}") from None
            msg = decode_header(header)
            p = start + hlen
            if nbufs:
                bufs: list[bytes] = []
                for n in lens:
                    bufs.append(bytes(view[p : p + n]))  # (a bytes slice is not copied again)
                    p += n
            else:
                bufs = []
            out.append((msg, bufs))
            pos = p
            if limit and len(out) >= limit:
                break
        return pos

    @staticmethod
    def _header(buf: Any, start: int, hlen: int) -> Any:
        try:
            header = msgpack.unpackb(
                memoryview(buf)[start : start + hlen], use_list=False, raw=False
            )
        except Exception as e:
            raise ProtocolError(f"undecodable frame header: {e}") from None
        return decode_header(header)

    def _stream(self, buf: Any, start: int, hlen: int, lens: list[int], end: int) -> int:
        """Receive the rest of this frame's buffers straight into their own memory."""
        fill = _Fill(self._header(buf, start, hlen), lens)
        rest = fill.take(memoryview(buf)[start + hlen : end])
        assert rest is None  # the frame was incomplete
        self._fill = fill
        return end
