"""Handles to deployments and the responses their calls return.

``handle.remote(...)`` / ``handle.method.remote(...)`` / ``await handle.method(...)``
route one call to a replica (see :mod:`._router`) and return a
:class:`DeploymentResponse`. A response is an :class:`actorcore.ObjectRef` of
the reply, so ``ac.get``, ``ac.wait`` and passing it to other calls work; it is
awaitable and has ``result(timeout_s=)``. Awaiting or ``result()`` also retry
the call on another replica when the replica died under it (up to
``max_request_retries``); ``ac.get`` reads the first attempt as it is.

When every replica is full: a plain thread blocks in ``remote()`` until one
has room (back pressure), at most ``queue_timeout_s``; on an event loop
``remote()`` returns at once and the call is sent as soon as there is room.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from typing import Any

import actorcore as ac
from actorcore import ObjectRef
from actorcore.errors import ActorDiedError, BlockingCallError, TaskError

from ._router import Router, router_for

__all__ = ["DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator"]

# True while a version hash is computed: handles then pickle without their replica snapshot
hashing: contextvars.ContextVar[bool] = contextvars.ContextVar("serve_hashing", default=False)


def _on_loop() -> bool:
    return asyncio._get_running_loop() is not None


def _died(e: BaseException) -> bool:
    """The replica itself died (not: user code raised an ActorDiedError of its own)."""
    return isinstance(e, ActorDiedError) and not isinstance(e, TaskError)


class DeploymentHandle:
    """Calls a deployment's replicas; pass it to other deployments to compose them."""

    def __init__(
        self,
        key: str,
        controller: Any,
        snapshot: dict[str, Any] | None = None,
        *,
        method: str = "__call__",
        stream: bool = False,
    ) -> None:
        self.key = key
        self._controller = controller
        self._snapshot = snapshot
        self._method = method
        self._stream = stream
        self._router: Router | None = None

    @property
    def app_name(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def deployment_name(self) -> str:
        return self.key.split("/", 1)[1]

    def router(self) -> Router:
        r = self._router
        if r is None:
            r = self._router = router_for(self.key, self._controller, self._snapshot)
            self._snapshot = None
        return r

    def options(self, *, method_name: str | None = None, stream: bool | None = None) -> Any:
        """The same handle calling ``method_name`` and/or returning a stream."""
        h = DeploymentHandle(
            self.key,
            self._controller,
            method=method_name or self._method,
            stream=self._stream if stream is None else stream,
        )
        h._router = self._router
        h._snapshot = self._snapshot
        return h

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method; a DeploymentResponse (or a DeploymentResponseGenerator with stream).

        Raises:
            BackPressureError: (plain threads) no replica had room within ``queue_timeout_s``.
        """
        router = self.router()
        if self._stream:
            return DeploymentResponseGenerator(router, self._method, args, kwargs)
        return DeploymentResponse.call(router, self._method, args, kwargs)

    __call__ = remote

    def __reduce__(self) -> Any:
        snap = None
        if not hashing.get():
            r = self._router
            snap = self._snapshot if r is None else _snapshot_of(r)
        return (_rebuild, (self.key, self._controller, snap, self._method, self._stream))

    def __repr__(self) -> str:
        return f"DeploymentHandle({self.key}, method={self._method})"


def _snapshot_of(r: Router) -> dict[str, Any] | None:
    if r.epoch < 0:
        return None
    return {"epoch": r.epoch, "replicas": dict(r.replicas), "info": dict(r.info)}


def _rebuild(key: str, controller: Any, snap: Any, method: str, stream: bool) -> DeploymentHandle:
    return DeploymentHandle(key, controller, snap, method=method, stream=stream)


class DeploymentResponse(ObjectRef):
    """The reply of one call: ``await resp``, ``resp.result(timeout_s=)``, ``ac.get(resp)``."""

    __slots__ = ("_args", "_error", "_kwargs", "_method", "_ref", "_rid", "_router", "_task")

    def __init__(
        self, router: Router, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        # ObjectRef.__init__ runs in _assign, once the call has been sent
        self._router = router
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._ref: Any = None
        self._rid: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @classmethod
    def call(
        cls, router: Router, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> DeploymentResponse:
        resp = cls(router, method, args, kwargs)
        if not _on_loop():
            resp._send(router.acquire_blocking())
            return resp
        rid = router.try_acquire()
        if rid is not None:
            resp._send(rid)
        else:
            resp._task = asyncio.get_running_loop().create_task(resp._send_when_room())
        return resp

    def _send(self, rid: str) -> None:
        router = self._router
        ref = router.send(rid, self._method, self._args, self._kwargs)
        router.track(rid, ref)
        first = self._ref is None
        self._ref, self._rid = ref, rid
        if first:
            ObjectRef.__init__(self, ref.id, ref.owner)

    async def _send_when_room(self) -> None:
        try:
            self._send(await self._router.acquire())
        except asyncio.CancelledError:
            self._error = asyncio.CancelledError()
            raise
        except Exception as e:  # kept for whoever awaits the response
            self._error = e

    def _retry_blocking(self, e: BaseException) -> None:
        assert self._rid is not None
        self._router.replica_died(self._rid)
        self._send(self._router.acquire_blocking())

    async def _retry(self) -> None:
        assert self._rid is not None
        self._router.replica_died(self._rid)
        self._send(await self._router.acquire())

    async def _resolve(self) -> Any:
        if self._task is not None:
            await asyncio.shield(self._task)
            if self._error is not None:
                raise self._error
        for attempt in range(self._router.max_retries + 1):
            try:
                return await self._ref
            except ActorDiedError as e:
                if not _died(e) or attempt >= self._router.max_retries:
                    raise
                await self._retry()
        raise AssertionError("unreachable")

    def __await__(self) -> Any:
        return self._resolve().__await__()

    def result(self, *, timeout_s: float | None = None) -> Any:
        """Block until the reply is there (plain threads only).

        Raises:
            BlockingCallError: called on a thread running an event loop (await it instead).
            GetTimeoutError: ``timeout_s`` passed first.
        """
        if _on_loop():
            raise BlockingCallError("result() blocks; on an event loop, `await response` instead")
        if self._ref is None:
            raise BlockingCallError(
                "this response was made on an event loop and is still queued: await it there"
            )
        for attempt in range(self._router.max_retries + 1):
            try:
                return ac.get(self._ref, timeout=timeout_s)
            except ActorDiedError as e:
                if not _died(e) or attempt >= self._router.max_retries:
                    raise
                self._retry_blocking(e)
        raise AssertionError("unreachable")

    def __del__(self) -> None:
        if self._ref is not None:
            ObjectRef.__del__(self)

    # identity, not the object id: a queued response has none yet
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __reduce__(self) -> Any:
        if self._ref is None:
            raise TypeError("a response still waiting for a replica cannot be passed on: await it")
        return self._ref.__reduce__()

    def __repr__(self) -> str:
        state = self._ref.hex() if self._ref is not None else "queued"
        return f"DeploymentResponse({self._router.key}.{self._method}, {state})"


class DeploymentResponseGenerator:
    """The items of a generator method, as they come: ``async for`` or ``for``.

    Items travel in chunks: each pull returns what the replica's generator has
    produced since the last one (at least one item), so a slow producer is
    seen item by item and a fast one in batches.
    """

    def __init__(
        self, router: Router, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._router = router
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._rid: str | None = None
        self._sid: int | None = None
        self._buf: deque[Any] = deque()
        self._done = False

    def _take(self, reply: tuple[int, list[Any], bool]) -> None:
        self._sid, items, done = reply
        self._buf.extend(items)
        if done:
            self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            if self._rid is not None:
                self._router.release(self._rid)

    def _replica(self) -> Any:
        assert self._rid is not None
        h = self._router.replica_handle(self._rid)
        if h is None:
            self._finish()
            raise ActorDiedError(f"replica {self._rid} of {self._router.key} is gone")
        return h

    def _pull(self) -> Any:
        h = self._replica()
        if self._sid is None:
            return h.stream_start.remote(self._method, self._args, self._kwargs)
        return h.stream_next.remote(self._sid)

    def __aiter__(self) -> DeploymentResponseGenerator:
        return self

    async def __anext__(self) -> Any:
        while not self._buf:
            if self._done:
                raise StopAsyncIteration
            if self._rid is None:
                self._rid = await self._router.acquire()
            try:
                self._take(await self._pull())
            except BaseException:
                self.close()
                raise
        return self._buf.popleft()

    def __iter__(self) -> DeploymentResponseGenerator:
        return self

    def __next__(self) -> Any:
        while not self._buf:
            if self._done:
                raise StopIteration
            if self._rid is None:
                self._rid = self._router.acquire_blocking()
            try:
                self._take(ac.get(self._pull()))
            except BaseException:
                self.close()
                raise
        return self._buf.popleft()

    def close(self) -> None:
        """Stop the replica's generator (if it still runs) and free the slot."""
        if self._done:
            return
        if self._sid is not None and self._rid is not None:
            h = self._router.replica_handle(self._rid)
            if h is not None:
                h.stream_cancel.remote(self._sid)
        self._finish()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # the runtime may be gone at exit
            pass
