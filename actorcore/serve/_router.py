"""The router of one deployment in one process: replicas, in-flight counts, waiting callers.

It wraps a :class:`RouterCore` (the decisions) with what the core cannot do:
the replicas' actor handles, learning of replica changes from the controller
(a long poll: ``controller.listen`` answers when the replica set changes; the
answer's callback asks again), and waking callers that waited for room, which
may be threads blocked in a plain script or coroutines on any event loop.

The core is changed under one small lock because its events come from
several threads: callers (any thread), and completion callbacks (the
runtime's loop thread). Nothing is called while the lock is held; grants are
delivered after it is released.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import actorcore as ac
from actorcore.errors import ActorDiedError, TaskError

from ._router_core import Grant, RouterCore
from .errors import BackPressureError

__all__ = ["Router", "router_for"]

logger = logging.getLogger(__name__)

_routers: dict[tuple[str, str, Any], Router] = {}
_routers_lock = threading.Lock()


def _process_key() -> str:
    """Changes with every ``ac.init``: routers of an earlier runtime are not reused."""
    return ac.get_runtime_context().get_worker_id()


def router_for(key: str, controller: Any, snapshot: dict[str, Any] | None) -> Router:
    """This process's router for deployment ``key`` (made on first use)."""
    pk = (_process_key(), key, controller)  # a new controller (after shutdown): new routers
    r = _routers.get(pk)
    if r is None:
        with _routers_lock:
            r = _routers.get(pk)
            if r is None:
                r = _routers[pk] = Router(key, controller, snapshot)
    return r


class _SyncWaiter:
    """A thread blocked until a replica has room."""

    __slots__ = ("event", "rid")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.rid: str | None = None

    def deliver(self, router: Router, rid: str) -> None:
        self.rid = rid
        self.event.set()


class _AsyncWaiter:
    """A coroutine waiting on its own loop until a replica has room."""

    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[str] = loop.create_future()

    def deliver(self, router: Router, rid: str) -> None:
        def settle() -> None:
            if self.fut.done():  # it gave up meanwhile: hand the slot back
                router.release(rid)
            else:
                self.fut.set_result(rid)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # that loop is closed
            router.release(rid)


class Router:
    """Routes the requests of one process to the replicas of one deployment."""

    def __init__(self, key: str, controller: Any, snapshot: dict[str, Any] | None) -> None:
        self.key = key
        self.controller = controller
        self.epoch = -1
        self.replicas: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self.queue_timeout_s = 30.0
        self.max_retries = 3
        self._core = RouterCore(5)
        self._lock = threading.Lock()
        self._poll_ref: Any = None
        self._polling = False
        if snapshot:
            self._apply(snapshot)

    # --- replica set ---------------------------------------------------------------------

    def _apply(self, snap: dict[str, Any]) -> None:
        if snap["epoch"] <= self.epoch:
            return
        replicas = dict(snap["replicas"])
        with self._lock:
            self.epoch = snap["epoch"]
            self.replicas = replicas
            self.info = snap["info"]
            self.queue_timeout_s = float(snap["info"]["queue_timeout_s"])
            self.max_retries = int(snap["info"]["max_request_retries"])
            self._core.max_ongoing = int(snap["info"]["max_ongoing_requests"])
            grants = self._core.set_replicas(list(replicas))
        self._deliver(grants)

    def ensure_polling(self) -> None:
        """Start the long poll for replica changes (idempotent; any thread)."""
        if self._polling:
            return
        with self._lock:
            if self._polling:
                return
            self._polling = True
        self._ask()

    def _ask(self) -> None:
        try:
            ref = self.controller.listen.remote(self.key, self.epoch)
        except Exception:  # the runtime is shutting down
            self._polling = False
            return
        self._poll_ref = ref
        ref.future().add_done_callback(self._answered)

    def _answered(self, fut: Any) -> None:
        try:
            snap = fut.result()
        except Exception as e:
            logger.debug("replica updates for %s stopped: %r", self.key, e)
            self._polling = False
            return
        if snap is None:  # the deployment was deleted
            self._polling = False
            self._apply({"epoch": self.epoch + 1, "replicas": {}, "info": self.info})
            return
        self._apply(snap)
        self._ask()

    # --- slots ---------------------------------------------------------------------------

    def _deliver(self, grants: list[Grant]) -> None:
        for g in grants:
            g.waiter.deliver(self, g.replica)

    def release(self, rid: str) -> None:
        """A request sent to ``rid`` is over; from any thread."""
        with self._lock:
            grants = self._core.release(rid)
        self._deliver(grants)

    def replica_died(self, rid: str) -> None:
        """Stop routing to ``rid`` until the controller names it again."""
        with self._lock:
            grants = self._core.remove(rid)
            self.replicas = {k: v for k, v in self.replicas.items() if k != rid}
        self._deliver(grants)

    def try_acquire(self) -> str | None:
        self.ensure_polling()
        with self._lock:
            return self._core.try_acquire()

    def acquire_blocking(self) -> str:
        """A replica with room, waiting up to ``queue_timeout_s`` (plain threads only).

        Raises:
            BackPressureError: no replica had room in time.
        """
        rid = self.try_acquire()
        if rid is not None:
            return rid
        w = _SyncWaiter()
        with self._lock:
            grants = self._core.enqueue(w)
        self._deliver(grants)
        if not w.event.wait(self.queue_timeout_s):
            with self._lock:
                queued = self._core.cancel(w)
            if queued:
                raise self._backpressure()
            w.event.wait()
        assert w.rid is not None
        return w.rid

    async def acquire(self) -> str:
        """A replica with room, waiting up to ``queue_timeout_s``.

        Raises:
            BackPressureError: no replica had room in time.
            CancelledError: the waiter is taken out of the queue (a slot it got is handed back).
        """
        rid = self.try_acquire()
        if rid is not None:
            return rid
        w = _AsyncWaiter(asyncio.get_running_loop())
        with self._lock:
            grants = self._core.enqueue(w)
        self._deliver(grants)
        try:
            return await asyncio.wait_for(asyncio.shield(w.fut), self.queue_timeout_s)
        except (TimeoutError, asyncio.CancelledError) as e:
            with self._lock:
                queued = self._core.cancel(w)
            if not queued:  # granted meanwhile: hand the slot back
                if w.fut.done() and not w.fut.cancelled():
                    self.release(w.fut.result())
                else:
                    w.fut.cancel()  # the settle callback, still to run, releases it
            if isinstance(e, TimeoutError):
                raise self._backpressure() from None
            raise

    def _backpressure(self) -> BackPressureError:
        return BackPressureError(
            f"no replica of {self.key} had room for {self.queue_timeout_s} s "
            f"({len(self.replicas)} replica(s), max_ongoing_requests="
            f"{self._core.max_ongoing} each)"
        )

    def send(self, rid: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``method`` on replica ``rid`` (whose slot is held); the reply's ObjectRef.

        Raises:
            ActorDiedError: the replica is gone from this router's view (its slot is released).
        """
        h = self.replicas.get(rid)
        if h is None:
            self.release(rid)
            raise ac.errors.ActorDiedError(f"replica {rid} of {self.key} is gone")
        return h.handle_request.remote(method, args, kwargs)

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Route one call and await its value (the proxies' path: no response object).

        The slot is released when the value is read, on this loop, without a
        completion callback; a replica that died under the call is replaced
        by another, up to ``max_retries`` times.

        Raises:
            BackPressureError: no replica had room within ``queue_timeout_s``.
            TaskError: the method raised.
        """
        attempt = 0
        while True:
            rid = await self.acquire()
            try:
                return await self.send(rid, method, args, kwargs)
            except ActorDiedError as e:
                if isinstance(e, TaskError) or attempt >= self.max_retries:
                    raise
                attempt += 1
                self.replica_died(rid)
            finally:
                self.release(rid)

    def replica_handle(self, rid: str) -> Any:
        return self.replicas.get(rid)

    def track(self, rid: str, ref: Any) -> None:
        """Release ``rid``'s slot once ``ref`` is resolved (whoever reads it, or nobody)."""
        fut = ref.future()
        # the callback holds ``ref``: the object lives (and its waiter fires) until then
        fut.add_done_callback(lambda _f, ref=ref: self.release(rid))

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            return {
                "epoch": self.epoch,
                "in_flight": dict(self._core.in_flight),
                "queued": len(self._core.queue),
            }
