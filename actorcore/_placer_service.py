"""The cluster's global placer in a node daemon: election and the placer's shell.

* :class:`PlacerElection` (every node): campaigns for the etcd key ``/placer``
  (under the cluster's namespace) with a put-if-absent transaction bound to
  the node's lease, and watches it. The key's value names the holder (node id
  and daemon address). When the holder's node dies or loses its lease, etcd
  deletes the key with the lease (within the TTL); every node sees the DELETE
  and campaigns again; one wins.
* :class:`PlacerHost` (the elected node only): feeds the sans-IO
  :class:`~actorcore.scheduler.Placer` with the nodes' load reports
  (``PLACER_REPORT``, straight from each node), membership changes and spill
  requests (``SPILL_WORK``), and carries out its instructions. A new holder
  starts with an empty view: it learns the nodes from the membership table
  (assumed idle) and their load from their next reports, which every node
  sends as soon as it sees the new holder.

A node daemon exposes the election to other parts through
:meth:`PlacerElection.subscribe` (``on_elected`` / ``on_lost`` callbacks, e.g.
to run a cluster-wide service on the placer's node only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

import msgpack

from actorcore.gcs import ControlStoreError, EventType
from actorcore.scheduler import Placer, PlacerConfig
from actorcore.scheduler import placer_msgs as M

from . import _protocol as P

__all__ = ["PLACER_KEY", "PlacerElection", "PlacerHost", "PlacerMovedError", "strategy_from_wire"]

logger = logging.getLogger(__name__)

PLACER_KEY = b"/placer"
_RETRY_S = 0.3  # pacing of campaigns after etcd errors, not synchronization
TICK_S = 0.2  # the placer's clock while it holds work (warm-up, retries)


class PlacerMovedError(ConnectionError):
    """Raised when the placer a node asked lost its election before answering."""


def strategy_from_wire(strategy: Any) -> M.Strategy:
    """``"DEFAULT"``, ``"SPREAD"`` or ``[node id, soft]`` -> a placer strategy."""
    if isinstance(strategy, list | tuple):
        return M.NodeAffinity(bytes(strategy[0]), bool(strategy[1]))
    return M.SPREAD if strategy == M.SPREAD else M.DEFAULT


def strategy_to_wire(strategy: M.Strategy) -> Any:
    if isinstance(strategy, M.NodeAffinity):
        return [strategy.node_id, strategy.soft]
    return str(strategy)


# --- election -------------------------------------------------------------------------


class PlacerElection:
    """Campaign for and observe the ``/placer`` key (one per node daemon).

    Args:
        membership: the node's :class:`~actorcore._membership.Membership` (its
            store and its lease, which the key is bound to).
        address: this node's daemon address, published with the node id.
    """

    def __init__(self, membership: Any, address: tuple[str, int]) -> None:
        self.membership = membership
        self.node_id: bytes = membership.node_id
        self._value = bytes(
            msgpack.packb(
                {"node_id": self.node_id, "address": [address[0], int(address[1])]},
                use_bin_type=True,
            )
        )
        self.holder: bytes | None = None  # the node holding the placer now
        self.changed = asyncio.Event()  # set (and replaced) whenever ``holder`` changes
        self._elected: list[Callable[[], None]] = []
        self._lost: list[Callable[[], None]] = []
        self._watchers: list[Callable[[bytes | None], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._resigned = False
        self._closing = False

    @property
    def is_placer(self) -> bool:
        return self.holder == self.node_id

    def subscribe(
        self,
        on_elected: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """Be called when this node becomes the placer's node, and when it stops being it.

        Callbacks run on the daemon's loop, synchronously (start tasks from them;
        do not block). Subscribing while this node already holds the placer
        calls ``on_elected`` at once.
        """
        if on_elected is not None:
            self._elected.append(on_elected)
            if self.is_placer:
                _call(on_elected)
        if on_lost is not None:
            self._lost.append(on_lost)

    def watch(self, on_holder: Callable[[bytes | None], None]) -> None:
        """Be called with the holder's node id (None: none now) whenever it changes."""
        self._watchers.append(on_holder)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="placer-election")

    async def aclose(self) -> None:
        self._closing = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task}, timeout=2.0)
            if not task.done():
                logger.warning("the placer election did not stop in time")
        self._set(None)

    async def resign(self) -> None:
        """Give the placer up now and campaign no more (a leaving node): the others
        campaign at once."""
        self._resigned = True
        if self.is_placer:
            with contextlib.suppress(ControlStoreError, TimeoutError):
                await asyncio.wait_for(self.membership.store.delete(PLACER_KEY), 2.0)

    async def wait_holder(self) -> bytes:
        """The node holding the placer, once there is one."""
        while self.holder is None:
            await self.changed.wait()
        return self.holder

    def _set(self, holder: bytes | None) -> None:
        if holder == self.holder:
            return
        was = self.is_placer
        self.holder = holder
        logger.info("the placer is on node %s", holder.hex() if holder else None)
        old, self.changed = self.changed, asyncio.Event()
        old.set()
        for watcher in self._watchers:
            _call(lambda w=watcher: w(holder))  # type: ignore[misc]
        if was and not self.is_placer:
            for cb in self._lost:
                _call(cb)
        if self.is_placer and not was:
            for cb in self._elected:
                _call(cb)

    async def _run(self) -> None:
        store = self.membership.store
        while not self._closing:  # (the etcd client may swallow a cancel mid-call)
            try:
                kv = await self._campaign(store)
                if kv is None:  # deleted between the transaction and the read, or no
                    if not self.membership.lease or self._resigned:  # lease: pace it
                        await asyncio.sleep(_RETRY_S)
                    continue
                self._set(bytes(msgpack.unpackb(kv.value, raw=False)["node_id"]))
                await self._observe(store, kv.mod_revision + 1)
            except asyncio.CancelledError:
                raise
            except (ControlStoreError, OSError, TimeoutError) as e:
                logger.warning("placer election: %s; campaigning again", e)
                await asyncio.sleep(_RETRY_S)
            except Exception:
                logger.exception("placer election failed; campaigning again")
                await asyncio.sleep(_RETRY_S)

    async def _campaign(self, store: Any) -> Any:
        lease = self.membership.lease
        if lease and not self._resigned:
            await store.put_if_absent(PLACER_KEY, self._value, lease=lease)
        return await store.get(PLACER_KEY)

    async def _observe(self, store: Any, revision: int) -> None:
        """Until the key is deleted (its holder's lease ended) or changes hands."""
        async with store.watch_prefix(PLACER_KEY, start_revision=revision) as watch:
            async for event in watch:
                if event.key != PLACER_KEY:
                    continue  # (a longer key under the same prefix)
                if event.type is EventType.DELETE or event.kv is None:
                    self._set(None)
                    return
                self._set(bytes(msgpack.unpackb(event.kv.value, raw=False)["node_id"]))


def _call(cb: Callable[[], None]) -> None:
    try:
        cb()
    except Exception:
        logger.exception("a placer election callback failed")


# --- the placer's shell -----------------------------------------------------------------


class PlacerHost:
    """The placer running in this (elected) node daemon.

    Args:
        live: the membership table's live records ({node id: record}), read
            at start to know every node before its first report.
        config: the placer's tunables.
    """

    def __init__(self, live: dict[bytes, dict[str, Any]], config: PlacerConfig | None = None):
        self.placer = Placer(config or PlacerConfig(hold_when_full=True), now=time.monotonic())
        self._waiting: dict[Hashable, asyncio.Future[bytes]] = {}
        self._tick: asyncio.Task[None] | None = None
        self.closed = False
        self.spilled = 0
        # carries out the placer's placement-group instructions (Prepare, Commit,
        # Release, PlacementGroupReady/Failed, BundlesLost, RetryAt); None: dropped
        self.group_carrier: Callable[[M.Instruction], None] | None = None
        joins = [M.NodeJoined(n, _totals(rec)) for n, rec in live.items()]
        self._carry(self.placer.handle(*joins))

    def start(self) -> None:
        self._tick = asyncio.get_running_loop().create_task(self._ticker(), name="placer-tick")

    def close(self) -> None:
        """Stop: every node waiting for an answer asks the next placer."""
        self.closed = True
        if self._tick is not None:
            self._tick.cancel()
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(PlacerMovedError("the placer moved to another node"))

    # --- events in ---------------------------------------------------------------------

    def feed(self, *events: M.Event) -> None:
        """Hand the placer other events (placement groups: ``PlacementGroupRequest``,
        ``PrepareReplied``, ``CommitReplied``, ``RemovePlacementGroup``); what it
        asks besides work placement goes to :attr:`group_carrier`."""
        self._carry(self.placer.handle(*events))

    def node_joined(self, node_id: bytes, record: dict[str, Any]) -> None:
        self._carry(self.placer.handle(M.NodeJoined(node_id, _totals(record))))

    def node_left(self, node_id: bytes) -> None:
        self._carry(self.placer.handle(M.NodeDied(node_id)))

    def report(self, msg: P.PlacerReportMsg) -> None:
        ev = M.LoadReport(
            bytes(msg.node_id),
            _floats(msg.available),
            int(msg.queue_len),
            float(msg.queue_wait_s),
            int(msg.seq),
            totals=_floats(msg.total),
        )
        self._carry(self.placer.handle(ev))

    def place(
        self,
        work_id: bytes,
        shape: dict[str, float],
        strategy: M.Strategy,
        args: dict[bytes, int],
        origin: bytes | None,
    ) -> asyncio.Future[bytes]:
        """The node chosen for this work (the future waits while the placer holds it).

        A request repeated with the same ``work_id`` (its sender lost the reply's
        connection) is answered once, by the same decision.
        """
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(PlacerMovedError("this node no longer holds the placer"))
            return fut
        old = self._waiting.get(work_id)
        self._waiting[work_id] = fut
        if old is not None and not old.done():
            old.cancel()
            return fut  # already held or being placed: the decision answers this one
        self.spilled += 1
        req = M.SpillRequest(work_id, shape, strategy, args, origin)
        self._carry(self.placer.handle(req))
        return fut

    # --- instructions out --------------------------------------------------------------

    def _carry(self, instructions: list[M.Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, M.PlaceOn):
                fut = self._waiting.pop(ins.work_id, None)
                self.placer.handle(M.WorkAccepted(ins.work_id))  # the owner's lease takes it
                if fut is not None and not fut.done():
                    fut.set_result(bytes(ins.node_id))  # type: ignore[arg-type]
            elif isinstance(ins, M.WorkFailed):
                fut = self._waiting.pop(ins.work_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ValueError(ins.reason))
            elif isinstance(ins, M.Infeasible):
                pass  # the placer logged it; the node that spilled tells its drivers
            elif self.group_carrier is not None:
                self.group_carrier(ins)  # placement groups (Prepare, Commit, Release, ...)
            else:
                logger.debug("placer instruction %r not carried out here", ins)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)  # the placer's clock, not synchronization
            self._carry(self.placer.handle(M.Tick(time.monotonic())))

    def statistics(self) -> dict[str, Any]:
        return {
            "nodes": len(self.placer.view),
            "spilled": self.spilled,
            "decisions": self.placer.decisions,
            "held": len(self.placer.held()),
            "view": {
                (n.node_id.hex() if isinstance(n.node_id, bytes) else str(n.node_id)): {
                    "free": n.free_map(),
                    "queue_len": n.queue_len,
                    "reported": n.reported,
                }
                for n in self.placer.view
            },
        }


def _floats(d: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in dict(d or {}).items()}


def _totals(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: v
        for k, v in _floats(record.get("resources")).items()
        if k not in ("memory", "object_store_memory")
    }
