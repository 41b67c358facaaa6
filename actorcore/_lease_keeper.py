"""A node's etcd lease, refreshed from a thread of its own.

A node is declared dead when its lease is not refreshed for one TTL (2 s by
default), so the refresh must not wait behind anything else the daemon does:
a long pickling, a burst of messages or a garbage collection on the daemon's
loop would otherwise read as death on a loaded machine. :class:`LeaseKeeper`
runs the refresh on a thread with its own event loop and its own etcd client
(gRPC channels belong to one loop, ETCD.md gotcha 7), every ``TTL / 4``; a
refresh that finds the lease gone (TTL 0) reports it to the daemon's loop,
which registers again. A refresh slow to answer does not hold the next one
back (up to four in flight); one that fails (etcd unreachable) is tried again
at the next period; the keeper never gives up on its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from actorcore.gcs import ControlStoreError, EtcdControlStore, EtcdOptions

__all__ = ["LeaseKeeper"]

logger = logging.getLogger(__name__)

REFRESHES_PER_TTL = 4


class LeaseKeeper:
    """Refreshes the lease ``lease()`` names every ``ttl_s / 4`` from its own thread.

    Args:
        address, options: the etcd to talk to.
        ttl_s: the lease's TTL.
        lease: returns the lease to refresh now (0: none yet); read on the thread.
        on_lost: called on ``loop`` with a lease etcd reports gone.
        loop: the daemon's loop.
    """

    def __init__(
        self,
        address: str,
        options: EtcdOptions,
        ttl_s: float,
        lease: Callable[[], int],
        on_lost: Callable[[int], None],
        loop: asyncio.AbstractEventLoop,
        on_refreshed: Callable[[float], None] | None = None,
    ) -> None:
        self._address = address
        self._options = options
        self._ttl_s = ttl_s
        self.period_s = ttl_s / REFRESHES_PER_TTL
        self._lease = lease
        self._on_lost = on_lost
        self._on_refreshed = (
            on_refreshed  # called on ``loop`` with when a confirmed refresh was sent
        )
        self._loop = loop
        self._thread: threading.Thread | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self.refreshes = 0
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()
        self._started.wait(5.0)

    def stop(self) -> None:
        """Stop refreshing (idempotent); returns once the thread ended (or after 5 s)."""
        loop, stop = self._own_loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # its loop already closed
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            logger.exception("the lease keeper stopped")

    async def _main(self) -> None:
        self._own_loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        # a refresh slow to answer (a loaded machine, etcd busy) is not given up early:
        # the next one starts on time beside it, and either keeps the lease
        store = EtcdControlStore(self._address, options=self._options, call_timeout=self._ttl_s)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), self.period_s)
                    break
                except TimeoutError:
                    pass  # the refresh period is over
                if len(in_flight) < REFRESHES_PER_TTL:
                    task = asyncio.get_running_loop().create_task(self._refresh(store))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
        finally:
            for task in list(in_flight):
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await store.aclose()

    async def _refresh(self, store: EtcdControlStore) -> None:
        lease = self._lease()
        if not lease:
            return
        sent = time.monotonic()
        try:
            ttl = await store.refresh_lease(lease)
        except (ControlStoreError, TimeoutError) as e:
            self.failures += 1
            logger.warning("could not refresh this node's lease: %s", e)
            return
        self.refreshes += 1
        if ttl > 0 and self._on_refreshed is not None:
            try:
                self._loop.call_soon_threadsafe(self._on_refreshed, sent)
            except RuntimeError:
                pass  # the daemon's loop is closed: it is shutting down
        if ttl <= 0:
            try:
                self._loop.call_soon_threadsafe(self._on_lost, lease)
            except RuntimeError:
                pass  # the daemon's loop is closed: it is shutting down
