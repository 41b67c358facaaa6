"""RPC: request/reply matching and the handler table, on top of the transport.

A :class:`Service` declares its handlers with :func:`handles`; the table from
tag to method is built once per class. Each connection gets an
:class:`RpcPeer`, which routes replies to the callbacks of pending requests
and everything else to the service. When the connection ends, every request
pending on it fails at once.

A handler returns the reply value, :data:`DEFERRED` when it replies later by
itself, or a coroutine (run as a task owned by the service; its result is the
reply). An exception in a handler becomes an ``ErrorReplyMsg`` to the sender;
the connection and the process go on.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import pickle
from collections.abc import Callable
from typing import Any, ClassVar

from . import _protocol as P
from ._transport import Connection, Receiver
from .errors import ActorCoreError, MessageTooLargeError, ProtocolError

__all__ = ["DEFERRED", "RpcPeer", "Service", "error_from_reply", "handles", "next_rid"]

logger = logging.getLogger(__name__)

DEFERRED = object()
_REPLY_TAGS = frozenset({P.Tag.REPLY, P.Tag.ERROR_REPLY, P.Tag.TASK_RESULT})

_rids = itertools.count(1)
next_rid = _rids.__next__


def handles(tag: P.Tag) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a :class:`Service` method as the handler of messages with ``tag``."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._handles = tag  # type: ignore[attr-defined]
        return fn

    return mark


class Service:
    """Base of everything that answers messages: daemon, worker, owner."""

    HANDLERS: ClassVar[dict[int, str]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        table: dict[int, str] = {}
        for klass in reversed(cls.__mro__):
            for name, fn in vars(klass).items():
                tag = getattr(fn, "_handles", None)
                if tag is not None:
                    table[int(tag)] = name
        cls.HANDLERS = table

    def __init__(self) -> None:
        self._handler_tasks: set[asyncio.Task[Any]] = set()

    def bound_handlers(self) -> dict[int, Callable[..., Any]]:
        return {tag: getattr(self, name) for tag, name in self.HANDLERS.items()}

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task this service owns (cancelled by :meth:`cancel_tasks`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._handler_tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        tasks = list(self._handler_tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def on_peer_closed(self, peer: RpcPeer, exc: BaseException) -> None:
        """A connection of this service ended (hook)."""


def error_from_reply(msg: Any) -> BaseException:
    """The exception an ``ErrorReplyMsg`` stands for."""
    if msg.blob is not None:
        try:
            exc = pickle.loads(msg.blob)
            if isinstance(exc, BaseException):
                return exc
        except Exception:
            pass
    if msg.kind == "ProtocolError":
        return ProtocolError(msg.message)
    return ActorCoreError(f"{msg.kind}: {msg.message}")


def error_reply(rid: int, exc: BaseException) -> P.ErrorReplyMsg:
    try:
        blob = pickle.dumps(exc)
    except Exception:
        blob = None
    return P.ErrorReplyMsg(rid, type(exc).__name__, str(exc), blob)


class RpcPeer(Receiver):
    """The RPC side of one connection: pending requests and dispatch."""

    def __init__(self, service: Service, handlers: dict[int, Callable[..., Any]]) -> None:
        self.service = service
        self.handlers = handlers
        self.pending: dict[int, Callable[[Any], None]] = {}
        self.conn: Connection | None = None

    # --- requests ---------------------------------------------------------------

    def request(self, msg: Any, callback: Callable[[Any], None]) -> None:
        """Send ``msg`` (which has a ``rid``); ``callback`` gets the reply or an exception.

        Thread-safe. Raises ConnectionClosedError/BrokenError if the connection ended.
        """
        conn = self.conn
        assert conn is not None
        self.pending[msg.rid] = callback
        try:
            conn.send(msg)
        except BaseException:
            self.pending.pop(msg.rid, None)
            raise

    def request_all(self, msgs: list[Any], callbacks: list[Callable[[Any], None]]) -> None:
        """:meth:`request` of several messages without buffers, sent in order in one write.

        Thread-safe. Raises as :meth:`request` (then none of them was sent).
        """
        conn = self.conn
        assert conn is not None
        pending = self.pending
        for msg, cb in zip(msgs, callbacks, strict=True):
            pending[msg.rid] = cb
        try:
            conn.send_all(msgs)
        except BaseException:
            for msg in msgs:
                pending.pop(msg.rid, None)
            raise

    def call(self, msg: Any) -> asyncio.Future[Any]:
        """Send a request from the loop thread; the future gets the reply's value."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(reply: Any) -> None:
            if fut.done():
                return
            if isinstance(reply, BaseException):
                fut.set_exception(reply)
            elif reply.TAG == P.Tag.ERROR_REPLY:
                fut.set_exception(error_from_reply(reply))
            elif reply.TAG == P.Tag.REPLY:
                fut.set_result(reply.value)
            else:
                fut.set_result(reply)

        try:
            self.request(msg, done)
        except BaseException as e:
            fut.set_exception(e)
        return fut

    def send(self, msg: Any) -> None:
        assert self.conn is not None
        self.conn.send(msg)

    def reply(self, rid: int, value: Any) -> None:
        conn = self.conn
        if conn is not None and not conn.closed:
            try:
                conn.send(P.ReplyMsg(rid, value))
            except MessageTooLargeError as e:  # the requester learns why, not nothing
                conn.send(error_reply(rid, e))

    def reply_error(self, rid: int, exc: BaseException) -> None:
        conn = self.conn
        if conn is not None and not conn.closed:
            conn.send(error_reply(rid, exc))

    # --- receiving -----------------------------------------------------------------

    def on_frame(self, conn: Connection, msg: Any, buffers: list[bytes]) -> None:
        tag = msg.TAG
        if tag in _REPLY_TAGS:
            cb = self.pending.pop(msg.rid, None)
            if cb is not None:
                cb(msg)
            return
        handler = self.handlers.get(tag)
        rid = msg.rid if tag in P.REQUESTS else None
        if handler is None:
            err = ProtocolError(
                f"{conn.peer_role} sent {tag.name}, which this side does not handle"
            )
            logger.warning("%s", err)
            if rid is not None:
                self.reply_error(rid, err)
            return
        try:
            result = handler(self, msg, buffers)
        except Exception as e:
            self._handler_failed(rid, tag, e)
            return
        if result is DEFERRED:
            return
        if asyncio.iscoroutine(result):
            task = self.service.spawn(result)
            if rid is not None:
                task.add_done_callback(functools.partial(self._finish, rid))
            return
        if rid is not None:
            self.reply(rid, result)

    def _finish(self, rid: int, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.reply_error(rid, ActorCoreError("the request was cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            if not isinstance(
                exc, ActorCoreError | ValueError | TypeError | KeyError | LookupError
            ):
                logger.error("handler failed", exc_info=exc)
            self.reply_error(rid, exc)
        else:
            result = task.result()
            if result is not DEFERRED:
                self.reply(rid, result)

    def _handler_failed(self, rid: int | None, tag: int, exc: Exception) -> None:
        if not isinstance(exc, ActorCoreError | ValueError | TypeError | LookupError):
            logger.error("handler of %s failed", P.Tag(tag).name, exc_info=exc)
        if rid is not None:
            self.reply_error(rid, exc)

    def on_protocol_error(self, conn: Connection, err: ProtocolError) -> None:
        logger.warning("protocol error from %s: %s; dropping it", conn.peer_role, err)
        try:
            conn.send(P.RejectMsg(str(err)))
        except Exception:
            pass
        conn.close()

    def on_close(self, conn: Connection, exc: BaseException) -> None:
        pending = list(self.pending.values())
        self.pending.clear()
        for cb in pending:
            try:
                cb(exc)
            except Exception:
                logger.exception("failing a pending request raised")
        self.service.on_peer_closed(self, exc)
