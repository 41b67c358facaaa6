"""A node's side of the global placer: load reports to it, spill requests to it.

:class:`PlacerClient` sends this node's load straight to the daemon holding the
placer (``PLACER_REPORT``: never through etcd): when it changes (looked at
every ``POLL_S``, and at once when a lease request pokes it) and every
``REPORT_PERIOD_S`` otherwise,
and a full report as soon as a new placer is elected, which rebuilds its view
from these. :meth:`PlacerClient.place` asks the placer for a node; while there
is no placer (an election under way) the request waits, and a request whose
placer died or moved is asked again of the next one with the same work id
(a placer answers a work id once, and the request's sender acts on one answer
only: nothing runs twice, nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from actorcore.scheduler import placer_msgs as M

from . import _protocol as P
from ._placer_service import PlacerElection, PlacerHost, PlacerMovedError, strategy_to_wire
from ._rpc import next_rid

__all__ = ["REPORT_PERIOD_S", "LoadSample", "PlacerClient"]

logger = logging.getLogger(__name__)

REPORT_PERIOD_S = 0.5  # a report at least this often (a heartbeat of the load view)
POLL_S = 0.01  # the load is looked at this often (a few dict reads); sent when changed
MIN_GAP_S = 0.002  # reports on change: at most one per this gap (coalesced)
_RETRY_S = 0.05  # pacing of a spill retried after a broken link, not synchronization
_IGNORED = ("memory", "object_store_memory")

LoadSample = tuple[dict[str, float], dict[str, float], int, float]  # avail, total, qlen, wait


class PlacerClient:
    """Reports this node's load to the placer and asks it where work goes.

    Args:
        election: who holds the placer.
        membership: links to peer daemons.
        sample: this node's (available, total, queue length, oldest wait s) now.
        host: the placer's shell on this node while it holds it (None otherwise).
    """

    def __init__(
        self,
        election: PlacerElection,
        membership: Any,
        sample: Callable[[], LoadSample],
        host: Callable[[], PlacerHost | None],
    ) -> None:
        self.election = election
        self.membership = membership
        self.node_id: bytes = membership.node_id
        self._sample = sample
        self._host = host
        self._seq = itertools.count(1)
        self._poke = asyncio.Event()
        self._sent: tuple[Any, ...] | None = None
        self._sent_to: bytes | None = None
        self._ids = itertools.count(1)
        self._prefix = self.node_id[:8] + os.urandom(4)
        self._task: asyncio.Task[None] | None = None
        self.spills = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._report(), name="placer-report")

    async def aclose(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task}, timeout=2.0)

    def poke(self) -> None:
        """This node's load changed: report it soon."""
        self._poke.set()

    # --- reports -------------------------------------------------------------------------

    def report_msg(self) -> P.PlacerReportMsg:
        avail, total, qlen, wait = self._sample()
        avail = {k: v for k, v in avail.items() if k not in _IGNORED}
        total = {k: v for k, v in total.items() if k not in _IGNORED}
        return P.PlacerReportMsg(self.node_id, next(self._seq), avail, total, qlen, wait)

    async def _report(self) -> None:
        last = 0.0
        while True:
            # (not wait_for: on 3.11 it can swallow a cancel that races the poke)
            waiter = asyncio.ensure_future(self._poke.wait())
            try:
                await asyncio.wait({waiter}, timeout=POLL_S)
            finally:
                waiter.cancel()
            self._poke.clear()
            holder = self.election.holder
            if holder is None:
                await self.election.changed.wait()
                continue
            sample = self._sample()
            key = (sample[0], sample[2])
            now = time.monotonic()
            fresh = key != self._sent or holder != self._sent_to
            if not fresh and now - last < REPORT_PERIOD_S:
                continue
            try:
                self.deliver(holder, self.report_msg())
                self._sent, self._sent_to, last = key, holder, now
            except (OSError, ConnectionError, TimeoutError, LookupError) as e:
                logger.debug("load report to the placer failed: %s", e)
            await asyncio.sleep(MIN_GAP_S)  # coalesce a burst of changes into one report

    def deliver(self, holder: bytes, msg: P.PlacerReportMsg) -> None:
        host = self._host()
        if holder == self.node_id and host is not None:
            host.report(msg)
            return
        peer = self.membership._peers.get(holder)
        if peer is None or peer.conn is None or peer.conn.closed:
            self._connect_then(holder, msg)
            return
        peer.send(msg)

    def _connect_then(self, holder: bytes, msg: P.PlacerReportMsg) -> None:
        async def go() -> None:
            try:
                peer = await self.membership._link(holder)
                peer.send(msg)
            except (OSError, ConnectionError, TimeoutError, LookupError) as e:
                logger.debug("load report to the placer failed: %s", e)
                self._sent = None

        task = asyncio.get_running_loop().create_task(go())
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    # --- spills --------------------------------------------------------------------------

    def new_work_id(self) -> bytes:
        return self._prefix + next(self._ids).to_bytes(8, "little")

    async def place(
        self,
        work_id: bytes,
        shape: dict[str, float],
        strategy: M.Strategy,
        args: dict[bytes, int],
    ) -> bytes:
        """The node the placer chose; waits through elections and placer deaths.

        Raises:
            ValueError: the placer says the work can never be placed as asked
                (e.g. hard affinity to a dead node).
        """
        self.spills += 1
        shape = {k: v for k, v in shape.items() if k not in _IGNORED}
        while True:
            holder = await self.election.wait_holder()
            changed = self.election.changed
            try:
                answer = await self._ask(holder, work_id, shape, strategy, args, changed)
            except (PlacerMovedError, OSError, ConnectionError, LookupError, TimeoutError) as e:
                logger.info("spill %s: placer %s: %s; asking again", work_id.hex(), holder.hex(), e)
                if self.election.holder == holder:
                    await asyncio.sleep(_RETRY_S)  # the link broke but the holder is the same
                continue
            if answer is not None:
                return answer

    async def _ask(
        self,
        holder: bytes,
        work_id: bytes,
        shape: dict[str, float],
        strategy: M.Strategy,
        args: dict[bytes, int],
        changed: asyncio.Event,
    ) -> bytes | None:
        """One placer's answer; None when the placer changed first (ask the next)."""
        host = self._host()
        if holder == self.node_id and host is not None:
            host.report(self.report_msg())  # the freshest view of this node
            fut: asyncio.Future[Any] = host.place(work_id, shape, strategy, args, self.node_id)
        else:
            peer = await self.membership._link(holder)
            report = list(self.report_msg())
            msg = P.SpillWorkMsg(
                next_rid(), work_id, shape, strategy_to_wire(strategy), args, report
            )
            fut = peer.call(msg)
        waiter = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({fut, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not fut.done():
            fut.cancel()
            return None
        return bytes(fut.result())
