"""The coordinator of placement groups across nodes: the async shell of the placer's
two-phase group table (``scheduler._placer_pg`` inside a
:class:`~actorcore.scheduler.Placer`).

Every node daemon has one; the cluster's coordinator node (see
``actorcore._cluster_pg``) uses it for every new group, and the elected
global placer can host the same object later (one entry point:
:meth:`GroupCoordinator.handle` with the placer's events). It feeds the placer
the nodes of the cluster (joins, deaths, load reports) and carries out what it
returns: ``Prepare``/``Commit``/``Release`` become ``PG_PREPARE``/``PG_COMMIT``/
``PG_RELEASE`` calls to node daemons (a failed or timed-out call is a refusal,
so the attempt is aborted and what was prepared is released), ``RetryAt``
becomes a timer, and ``PlacementGroupReady``/``BundlesLost``/``Infeasible`` go
to the callbacks of :class:`Outcomes`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from actorcore.scheduler import Placer, PlacerConfig
from actorcore.scheduler import placer_msgs as M

from . import _protocol as P
from ._rpc import next_rid

__all__ = ["GroupCoordinator", "Outcomes"]

logger = logging.getLogger(__name__)

_IGNORED = ("memory", "object_store_memory")
# A peer's load report sent before one of its replies arrives within this (a report
# period, 0.1 s, plus a round trip); reports are sent only when the load changed.
REPORT_LAG_S = 0.25
Call = Callable[[bytes, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What the coordinator tells the rest of the node."""

    ready: Callable[[bytes, tuple[bytes, ...]], None]  # group id, node of each bundle
    lost: Callable[[bytes, bytes, tuple[int, ...]], None]  # group id, node, bundle indexes
    warn: Callable[[bytes, Mapping[str, float], Mapping[str, float]], None]  # missing, offer


def usable(resources: Mapping[str, Any]) -> dict[str, float]:
    """A node's resources as the placer sees them (no memory, no group resources)."""
    return {
        str(k): float(v)
        for k, v in resources.items()
        if k not in _IGNORED and "_group_" not in str(k) and not str(k).startswith("node:")
    }


class GroupCoordinator:
    """Places groups on nodes in two phases; one per node for now (see the module doc).

    Args:
        me: this node (named as the coordinator in its prepares).
        loads: the nodes' available resources: this node's now, the peers' last
            reports (a new report is a new mapping).
        call: sends a message to a node's daemon (this node's too) and returns its reply.
        outcomes: callbacks for ready groups, lost bundles and infeasible groups.
        config: the placer's tunables (prepare timeout, retry delay, warm-up).
    """

    def __init__(
        self,
        me: bytes,
        loads: Callable[[], Mapping[bytes, Mapping[str, float]]],
        call: Call,
        outcomes: Outcomes,
        config: PlacerConfig | None = None,
    ) -> None:
        self.me = me
        self._loop = asyncio.get_running_loop()
        self.placer = Placer(config or PlacerConfig(warmup_s=0.5), now=self._loop.time())
        self._call = call
        self._out = outcomes
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._wakeups: list[float] = []  # times the placer asked to be woken at
        self._seq = 0
        self._fed: dict[bytes, dict[str, float]] = {}
        self._busy: dict[bytes, int] = {}  # calls in flight per node
        self._seen: dict[bytes, Any] = {}  # the peer's report fed last
        self._replied: dict[bytes, float] = {}  # when its last reply was fed
        self._loads = loads
        self._closed = False
        self._carry: dict[type, Callable[[Any], None]] = {
            M.Prepare: self._prepare,
            M.Commit: self._commit,
            M.Release: self._release,
            M.PlacementGroupReady: lambda i: self._out.ready(i.pg_id, tuple(i.placement)),
            M.PlacementGroupFailed: lambda i: logger.info(
                "placement group %s: %s", i.pg_id.hex(), i.reason
            ),
            M.BundlesLost: lambda i: self._out.lost(i.pg_id, i.node_id, tuple(i.indexes)),
            M.Infeasible: lambda i: self._out.warn(i.work_id, i.missing, i.largest_offer),
            M.RetryAt: self._retry_at,
            M.PlaceOn: lambda i: None,  # no work is spilled through this placer (yet)
            M.WorkFailed: lambda i: None,
        }

    # --- the one entry point ------------------------------------------------------------

    def handle(self, *events: M.Event) -> None:
        """Feed the placer ``events`` and carry out its instructions.

        The placer's clock is set to now first; a ``Tick`` (which also scans every
        group for timeouts and retries) is fed only when a ``RetryAt`` fires.
        """
        if self._closed:
            return
        self.placer.now = max(self.placer.now, self._loop.time())
        instrs = self.placer.handle(*events)
        for ins in instrs:
            self._carry[type(ins)](ins)

    # --- what the node daemon tells it ------------------------------------------------------

    def request(self, pg_id: bytes, bundles: list[dict[str, float]], strategy: str) -> None:
        self.handle(M.PlacementGroupRequest(pg_id, tuple(bundles), strategy))

    def adopt(
        self,
        pg_id: bytes,
        bundles: list[dict[str, float]],
        strategy: str,
        nodes: tuple[bytes | None, ...],
    ) -> None:
        """Coordinate a group whose coordinator died (bundles on live nodes stay)."""
        if self._closed:
            return
        self.placer.now = max(self.placer.now, self._loop.time())
        placement = {i: n for i, n in enumerate(nodes) if n is not None}
        for ins in self.placer.groups.adopt(pg_id, tuple(bundles), strategy, placement):
            self._carry[type(ins)](ins)

    def remove(self, pg_id: bytes) -> bool:
        """Release every bundle of a group placed here; False: not one of ours."""
        if self.placer.groups.get(pg_id) is None:
            return False
        self.handle(M.RemovePlacementGroup(pg_id))
        return True

    def node_joined(self, node_id: bytes, resources: Mapping[str, Any]) -> None:
        if node_id not in self.placer.view.nodes:
            self.handle(M.NodeJoined(node_id, usable(resources)))

    def reschedule_bundles_of(self, node_id: bytes) -> None:
        """``node_id`` is dead: abort attempts that asked it and place its bundles
        again on the other nodes (a no-op for a node already known dead)."""
        self._fed.pop(node_id, None)
        self.handle(M.NodeDied(node_id))

    def refresh_loads(self) -> None:
        """Feed the placer the nodes' available resources: this node's now, a peer's
        when it sent a new report. The placer counts what it asked a node to
        prepare until that node's next report, so a node with a call in flight is
        skipped (the call's reply carries the node's resources after it), and a
        peer's report is trusted only ``REPORT_LAG_S`` after its last reply (by
        then a report sent before the reply has arrived, and a newer one follows
        it when the node's resources changed).
        """
        now = self._loop.time()
        events: list[M.Event] = []
        for node_id, avail in self._loads().items():
            if node_id not in self.placer.view.nodes or self._busy.get(node_id):
                continue
            if node_id != self.me:
                if self._seen.get(node_id) is avail:
                    continue  # no report since the last one fed
                if now < self._replied.get(node_id, 0.0) + REPORT_LAG_S:
                    continue  # it may have been sent before the node's last reply
                self._seen[node_id] = avail
            events += self._report(node_id, avail)
        if events:
            self.handle(*events)

    def _replied_with(self, node_id: bytes, avail: Mapping[str, Any]) -> list[M.Event]:
        """A reply of ``node_id`` said what it has available now."""
        if self._busy.get(node_id):
            return []  # another call's reply follows
        self._replied[node_id] = self._loop.time()
        return self._report(node_id, avail)

    def _report(self, node_id: bytes, avail: Mapping[str, Any]) -> list[M.Event]:
        clean = usable(avail)
        if self._fed.get(node_id) == clean:
            return []
        self._fed[node_id] = clean
        self._seq += 1
        return [M.LoadReport(node_id, clean, 0, 0.0, self._seq)]

    def groups(self) -> list[bytes]:
        return list(self.placer.groups.groups)

    def pending(self) -> bool:
        """Whether a group waits for room (then feed :meth:`loads` as they change)."""
        return bool(self.placer.groups.pending)

    async def aclose(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- instructions ----------------------------------------------------------------------

    def _spawn_call(self, node_id: bytes, coro: Any) -> None:
        self._busy[node_id] = self._busy.get(node_id, 0) + 1  # at once: see refresh_loads
        self._spawn(coro)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _prepare(self, ins: M.Prepare) -> None:
        bundles = [[i, dict(b)] for i, b in ins.bundles]
        msg = P.PgPrepareMsg(next_rid(), ins.pg_id, ins.attempt, bundles, self.me)
        self._spawn_call(
            ins.node_id, self._ask(ins.node_id, msg, M.PrepareReplied, ins.pg_id, ins.attempt)
        )

    def _commit(self, ins: M.Commit) -> None:
        msg = P.PgCommitMsg(next_rid(), ins.pg_id, ins.attempt)
        self._spawn_call(
            ins.node_id, self._ask(ins.node_id, msg, M.CommitReplied, ins.pg_id, ins.attempt)
        )

    async def _ask(self, node_id: Any, msg: Any, reply: Any, pg_id: bytes, attempt: int) -> None:
        ok, avail = False, None
        try:
            ok, avail = await self._busy_call(node_id, msg)
        except Exception as e:  # unreachable or refused: the attempt is aborted
            logger.info("placement group %s: node %s: %r", pg_id.hex(), node_id.hex(), e)
        events = self._replied_with(node_id, avail) if isinstance(avail, dict) else []
        self.handle(*events, reply(pg_id, node_id, attempt, bool(ok)))

    async def _busy_call(self, node_id: bytes, msg: Any) -> Any:
        """Call ``node_id`` (counted busy from when the instruction was carried out)."""
        try:
            return await self._call(node_id, msg)
        finally:
            left = self._busy.pop(node_id, 1) - 1
            if left:
                self._busy[node_id] = left

    def _release(self, ins: M.Release) -> None:
        msg = P.PgReleaseMsg(next_rid(), ins.pg_id, list(ins.indexes))
        self._spawn_call(ins.node_id, self._tell(ins.node_id, msg))

    async def _tell(self, node_id: bytes, msg: Any) -> None:
        try:
            avail = await self._busy_call(node_id, msg)
        except Exception as e:  # a node that is gone released everything with itself
            logger.info("release of group %s on %s: %r", msg.pg_id.hex(), node_id.hex(), e)
            return
        if isinstance(avail, dict):
            self.handle(*self._replied_with(node_id, avail))

    def _retry_at(self, ins: M.RetryAt) -> None:
        heapq.heappush(self._wakeups, ins.when)
        self._arm()

    def _arm(self) -> None:
        """One timer, for the earliest wake-up asked for."""
        if not self._wakeups or self._closed:
            return
        first = self._wakeups[0]
        if self._timer is not None:
            if self._timer_at <= first:
                return
            self._timer.cancel()
        self._timer_at = first
        self._timer = self._loop.call_at(first, self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        self.handle(M.Tick(now))
        self._arm()
