"""A worker process: runs tasks pushed by owners and hosts actors.

Started by the node daemon's fork server with the heavy modules already
imported, a worker runs its own event loop on a thread of its own, connects to
its node daemon, and serves owners directly. Sync tasks run on the main thread
(so that a cancel can interrupt them where they block), sync actor methods on
executor threads, ``async def`` code on the loop. A worker ends when its daemon goes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pickle
import sys
import threading
import time
from typing import Any

from . import _global as G
from . import _protocol as P
from . import _task_events as TE
from ._arg_recovery import cancel_recovery, recover_sources
from ._config import Config
from ._execution import (
    ExecPool,
    MainThreadExec,
    TaskContext,
    current_task,
    decode_args,
    decode_args_async,
    encode_error,
    encode_results,
    encode_results_async,
    encode_values,
    store_args,
    store_results,
)
from ._ids import new_id
from ._mailbox import ActorMailbox, TaskQueue
from ._rpc import DEFERRED, RpcPeer, error_reply, handles, next_rid
from ._runtime import CoreRuntime, NodeInfo
from ._streaming import Producers
from ._vouch import Vouch
from .errors import (
    ActorDiedError,
    ObjectLostError,
    TaskCancelledError,
    TaskCancelledInterrupt,
    TaskError,
)

__all__ = ["Call", "WorkerRuntime", "worker_main"]

logger = logging.getLogger(__name__)

# How long a reply waits for owners to acknowledge the borrows it depends on.
BORROW_ACK_WAIT_S = 30.0
_result_msg = tuple.__new__  # (a TaskResultMsg of both fields without its Python __new__)


class Call:
    """One task or actor call received by this worker."""

    __slots__ = (
        "caller",
        "ended",
        "fn",
        "is_async",
        "lend_reading",
        "method",
        "name",
        "owner",
        "payload",
        "peer",
        "resolved",
        "return_ids",
        "rid",
        "stream",
        "task_id",
    )

    def __init__(
        self, peer: RpcPeer, msg: Any, name: str, method: str, fn: Any, is_async: bool
    ) -> None:
        self.peer = peer
        self.rid = msg.rid
        self.task_id = msg.task_id
        self.payload = msg.args
        self.resolved = msg.resolved
        self.return_ids = msg.return_ids
        self.owner = msg.owner
        self.name = name
        self.method = method
        self.fn = fn
        self.is_async = is_async
        self.stream = msg.stream  # 0, or a streaming generator's back-pressure + 1
        self.lend_reading = False  # the reply lends reading to the actor's thread (_mailbox)
        self.ended = False  # an async actor call's slot was freed (ActorMailbox.async_ended)
        self.caller: Any = None  # its caller's record (_mailbox._Caller): an ordered actor's call


class WorkerRuntime(CoreRuntime):
    role = "worker"

    def __init__(self, config: Config, token: bytes, my_id: bytes, node: NodeInfo) -> None:
        super().__init__(config, token, my_id, node)
        self.pool = ExecPool(max(4, config.shared_worker_threads))
        self.task_exec: ExecPool | MainThreadExec = self.pool  # worker_main: the main thread
        self.tasks = TaskQueue(self)
        self.mailboxes: dict[bytes, ActorMailbox] = {}
        self.vouch = Vouch()  # a cluster node's worker answers nothing past it (_fencing)
        self.producers = Producers(self, self.vouch)
        self.functions: dict[bytes, Any] = {}
        self._fn_lock = threading.Lock()
        self._blocked = 0
        self._block_lock = threading.Lock()
        self.stopped: asyncio.Future[None] | None = None
        self._thread_reads = config.actor_thread_reads

    async def register(self) -> None:
        self.stopped = self.loop.create_future()
        sent = time.monotonic()
        info = await self.daemon.call(
            P.RegisterWorkerMsg(next_rid(), self.my_id, os.getpid(), list(self.address))
        )
        if "vouch_s" in info:  # a cluster node: serve only while the daemon vouches (_fencing)
            # the watch starts before this worker can serve anything (no await before it)
            from ._vouch import daemon_vouch_asker, watch_daemon

            if float(info["vouch_s"]) <= 0:  # a daemon that has lost its lease
                self.exit_now("the node daemon does not vouch for this node (fenced)")
            watch_daemon(
                daemon_vouch_asker(self._open_store_conn),
                self.config.node_ttl_s,
                first_until=sent + float(info["vouch_s"]),
                vouch=self.vouch,
            )
        for path in info.get("sys_path", []):
            if path not in sys.path:
                sys.path.append(path)

    def _daemon_lost(self, exc: BaseException) -> None:
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    def exit_now(self, reason: str) -> None:
        logger.info("worker exiting: %s", reason)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    # --- code ----------------------------------------------------------------------------

    def function(self, fn_id: bytes, blob: bytes | None) -> Any:
        fn = self.functions.get(fn_id)
        if fn is not None:
            return fn
        if blob is None:
            raise LookupError(f"function {fn_id.hex()} was never sent to this worker")
        with self._fn_lock:
            fn = self.functions.get(fn_id)
            if fn is None:
                fn = self.functions[fn_id] = pickle.loads(blob)
        return fn

    # --- tasks --------------------------------------------------------------------------

    @handles(P.Tag.PUSH_TASK)
    def on_push_task(self, peer: RpcPeer, msg: P.PushTaskMsg, _bufs: list[bytes]) -> Any:
        fn = self.function(msg.fn_id, msg.fn_blob)
        is_async = asyncio.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        self.tasks.push(Call(peer, msg, msg.name, "", fn, is_async))
        return DEFERRED

    def run_task(self, call: Call) -> None:
        token = current_task.set(TaskContext(call.name, call.task_id, None))
        TE.call_running(call, None)  # observability hook
        try:
            try:
                args, kwargs, reg = decode_args(self, call.payload, call.resolved)
            except ObjectLostError as e:  # not the task's fault: its owner sends it again
                if type(e) is not ObjectLostError:  # its owner died, or it cannot be rebuilt
                    raise
                self._args_lost(call, e)
                return
            value = self.tasks.run_user_code(call, args, kwargs)
            if call.stream:
                value = self.producers.drive_sync(call, value)
            results, waits = encode_results(self, value, call.return_ids, call.owner, call.name)
        except (TaskCancelledError, TaskCancelledInterrupt) as e:
            err = TaskCancelledError(*e.args)  # (the caller's kind of error)
            results, reg, waits = [encode_error(err, call.name)] * len(call.return_ids), None, None
        except BaseException as e:
            results, reg, waits = [encode_error(e, call.name)] * len(call.return_ids), None, None
        finally:
            current_task.reset(token)
        self._reply(call, results, reg, waits)

    async def run_task_async(self, call: Call) -> None:
        token = current_task.set(TaskContext(call.name, call.task_id, None))
        TE.call_running(call, None)  # observability hook
        try:
            try:
                args, kwargs, reg = await decode_args_async(self, call.payload, call.resolved)
            except ObjectLostError as e:  # not the task's fault: its owner sends it again
                if type(e) is not ObjectLostError:  # its owner died, or it cannot be rebuilt
                    raise
                self._args_lost(call, e)
                return
            if call.stream:
                value = await self.producers.drive_async(call, call.fn(*args, **kwargs))
            else:
                value = await call.fn(*args, **kwargs)
            results, waits = await encode_results_async(
                self, value, call.return_ids, call.owner, call.name
            )
        except asyncio.CancelledError:
            err = TaskCancelledError(f"task {call.name} was cancelled")
            results, reg, waits = [encode_error(err, call.name)] * len(call.return_ids), None, None
        except Exception as e:
            results, reg, waits = [encode_error(e, call.name)] * len(call.return_ids), None, None
        finally:
            current_task.reset(token)
        await self._settle(call, reg, waits)
        self._reply(call, results, None, None)

    async def _settle(self, call: Call, reg: Any, waits: Any) -> None:
        """Before an async call's reply, off the loop's back: the owners of refs it
        borrows or lends have acknowledged, and the caller reads again (back-pressure)."""
        if reg is not None or waits:
            await self.loop.run_in_executor(None, self._wait_all, reg, waits)
        conn = call.peer.conn
        if conn is not None and conn.congested:  # the caller is not reading
            await _drain(conn)

    @staticmethod
    def _wait_all(reg: Any, waits: Any) -> None:
        """Wait for the owners of refs we borrow or lend to acknowledge (then reply)."""
        for ev in [reg, *(waits or ())]:
            if ev is not None and not ev.wait(BORROW_ACK_WAIT_S):
                logger.warning(
                    "an owner did not acknowledge a borrow registration in %.0f s; "
                    "replying anyway (the object may be freed early)",
                    BORROW_ACK_WAIT_S,
                )

    def _reply(
        self, call: Call, results: list[Any], reg: Any, waits: Any, alone: bool = False
    ) -> None:
        TE.call_done(call, results)  # observability hook
        if reg is not None or waits:
            self._wait_all(reg, waits)
        if time.monotonic() >= self.vouch.until:  # the cluster may have declared us dead
            self.vouch.wait_renewed(self.config.node_ttl_s)  # (else the process ends there)
        conn = call.peer.conn
        if conn is not None and not conn.closed:
            if call.lend_reading:  # before the reply: the caller's next call may come at once
                call.lend_reading = conn.lend()
            try:
                conn.send(_result_msg(P.TaskResultMsg, (call.rid, results)), None, alone)
            except ConnectionError:
                pass

    def _args_lost(self, call: Call, err: ObjectLostError) -> None:
        """An argument could not be copied here (its node died): a system error reply,
        which the owner answers by resolving the arguments again (issue 10)."""
        TE.call_done(call, [encode_error(err, call.name)] * len(call.return_ids))
        conn = call.peer.conn
        if conn is not None and not conn.closed:
            try:
                conn.send(error_reply(call.rid, err))
            except ConnectionError:
                pass

    def reply_error(self, call: Call, exc: BaseException) -> None:
        self._reply(call, [encode_error(exc, call.name)] * len(call.return_ids), None, None)

    def reply_died(self, call: Call, mb: ActorMailbox, reason: str) -> None:
        self.reply_gone(
            call, ActorDiedError(f"actor {mb.class_name} ({mb.actor_id.hex()}) is gone: {reason}")
        )

    def reply_gone(self, call: Call, err: ActorDiedError) -> None:
        """The call's actor was dropped from this worker: the owner retries the call on
        its next incarnation, as ``max_task_retries`` allows (or fails it with ``err``)."""
        conn = call.peer.conn
        if conn is not None and not conn.closed:
            try:
                conn.send(error_reply(call.rid, err))
            except ConnectionError:
                pass

    def _stream_gone(self, call: Call, err: ActorDiedError) -> None:
        """A streaming call stopped because its actor was dropped (``on_drop_actor``)."""
        TE.call_done(call, [encode_error(err, call.name)] * len(call.return_ids))
        call.lend_reading = False  # (nothing lent: the loop reads on)
        self.reply_gone(call, err)

    @handles(P.Tag.STEAL_TASKS)
    def on_steal_tasks(self, peer: RpcPeer, msg: P.StealTasksMsg, _bufs: list[bytes]) -> Any:
        rids = self.tasks.hand_back(peer).get(peer)
        if rids:
            peer.send(P.TasksReturnedMsg(rids, False))
        return DEFERRED

    @handles(P.Tag.CANCEL_TASK)
    def on_cancel_task(self, peer: RpcPeer, msg: P.CancelTaskMsg, _bufs: list[bytes]) -> Any:
        if msg.recursive:  # first, while the cancelled task cannot submit more
            self.submitter.cancel_children(msg.task_id, msg.force)
        self.producers.cancel(msg.task_id)  # a streaming call stops at its next item
        cancel_recovery(msg.task_id)  # an actor call getting back a lost argument stops
        if not self.tasks.cancel(msg.task_id, msg.force):
            for mb in list(self.mailboxes.values()):
                if mb.cancel(msg.task_id):
                    break
        return DEFERRED

    @handles(P.Tag.ITEMS_ACK)
    def on_items_ack(self, peer: RpcPeer, msg: P.ItemsAckMsg, _bufs: list[bytes]) -> Any:
        self.producers.ack(msg.stream_id, msg.consumed)
        return DEFERRED

    # --- blocking in get ------------------------------------------------------------------

    def block_begin(self) -> None:
        ctx = current_task.get()
        mb = self.mailboxes.get(ctx.actor_id) if ctx is not None and ctx.actor_id else None
        if mb is not None:
            mb.blocked()  # a threaded actor serves a queued call while this one waits
        with self._block_lock:
            self._blocked += 1
            first = self._blocked == 1
        if not first:
            return
        try:
            self.daemon.send(P.WorkerBlockedMsg(True))
        except ConnectionError:
            return
        for peer, rids in self.tasks.hand_back().items():
            try:
                peer.send(P.TasksReturnedMsg(rids, True))
            except ConnectionError:
                pass

    def block_end(self) -> None:
        with self._block_lock:
            self._blocked -= 1
            last = self._blocked == 0
        if last:
            try:
                self.daemon.send(P.WorkerBlockedMsg(False))
            except ConnectionError:
                pass

    # --- actors ---------------------------------------------------------------------------

    @handles(P.Tag.HOST_ACTOR)
    def on_host_actor(self, peer: RpcPeer, msg: P.HostActorMsg, _bufs: list[bytes]) -> Any:
        self.pool.submit(lambda: self._construct(peer, msg))
        return DEFERRED

    def _construct(self, peer: RpcPeer, msg: P.HostActorMsg) -> None:
        spec = msg.spec
        name = spec["class_name"]
        token = current_task.set(TaskContext(name, new_id(), msg.actor_id))
        try:
            cls = self.function(spec["class_id"], spec["class_blob"])
            try:
                args, kwargs, reg = decode_args(self, spec["args"], spec.get("resolved") or [])
            except ObjectLostError as e:  # (a restart elsewhere: its node died) got back
                if type(e) is not ObjectLostError:
                    raise
                payload, resolved = recover_sources(self, spec["args"], spec.get("resolved") or [])
                args, kwargs, reg = decode_args(self, payload, resolved)
            instance = cls(*args, **kwargs)
            self._wait_all(reg, None)
        except BaseException as e:
            err = TaskError(f"{name}.__init__", _format(e), e, pid=os.getpid())
            peer.reply_error(msg.rid, err)
            return
        finally:
            current_task.reset(token)
        max_conc = int(spec.get("max_concurrency") or 1)
        self.pool.resize(max_conc + self.config.shared_worker_threads)
        mb = ActorMailbox(self, msg.actor_id, instance, name, max_conc)
        mb.sync_limit = int(spec.get("sync_concurrency") or max_conc)
        mb.epoch = msg.epoch
        self.mailboxes[msg.actor_id] = mb
        peer.reply(msg.rid, True)

    @handles(P.Tag.ACTOR_CALL)
    def on_actor_call(self, peer: RpcPeer, msg: P.ActorCallMsg, _bufs: list[bytes]) -> Any:
        mb = self.mailboxes.get(msg.actor_id)
        if mb is None:
            raise ActorDiedError(f"actor {msg.actor_id.hex()} is not on this worker")
        if msg.epoch != mb.epoch and msg.epoch >= 0:  # a call racing a restart: not for us
            raise ActorDiedError(
                f"actor {mb.class_name} ({msg.actor_id.hex()}): this is incarnation "
                f"{mb.epoch}, the call was meant for {msg.epoch}"
            )
        if self._thread_reads and mb.max_concurrency == 1:
            conn = peer.conn
            if conn is not None and not conn.lendable:
                conn.enable_lending()  # its thread may wait for the next call on it
        mb.push(Call(peer, msg, mb.call_name(msg.method), msg.method, None, False))
        return DEFERRED

    def _method(self, mb: ActorMailbox, call: Call) -> Any:
        if call.method.startswith("__") and call.method != "__call__":
            raise AttributeError(f"{mb.class_name} has no remote method {call.method!r}")
        try:
            return getattr(mb.instance, call.method)
        except AttributeError:
            if mb.dead is not None:  # dropped meanwhile (its instance is gone)
                raise ActorDiedError(f"actor {mb.class_name} is gone: {mb.dead}") from None
            raise AttributeError(f"{mb.class_name} has no method {call.method!r}") from None

    def run_actor_call(self, mb: ActorMailbox, call: Call) -> None:
        token = current_task.set(TaskContext(mb.class_name, call.task_id, mb.actor_id))
        TE.call_running(call, mb.actor_id)  # observability hook
        try:
            method = self._method(mb, call)
            if call.payload or call.resolved:
                try:
                    args, kwargs, reg = decode_args(self, call.payload, call.resolved)
                except ObjectLostError as e:  # its node died: got back in place (_arg_recovery)
                    if type(e) is not ObjectLostError:
                        raise
                    args, kwargs, reg = self._recovered_args(call)
                value = method(*args, **kwargs)
            else:  # no arguments
                reg = None
                value = method()
            if call.stream:
                value = self.producers.drive_sync(call, value, mb.actor_id)
            results, waits = encode_results(self, value, call.return_ids, call.owner, call.name)
        except BaseException as e:
            if isinstance(e, ActorDiedError) and call.stream and mb.dead is not None:
                self._stream_gone(call, e)  # stopped by its actor's drop: retried
                return
            results, reg, waits = [encode_error(e, call.name)] * len(call.return_ids), None, None
        finally:
            current_task.reset(token)
        self._reply(call, results, reg, waits)

    async def run_actor_call_async(self, mb: ActorMailbox, call: Call) -> None:
        """Run an async actor call on the loop (its task, :meth:`ActorMailbox._start_async`);
        its slot in the mailbox is freed at the end, here: no done callback per call."""
        try:
            token = current_task.set(TaskContext(mb.class_name, call.task_id, mb.actor_id))
            TE.call_running(call, mb.actor_id)  # observability hook
            try:
                method = self._method(mb, call)
                if call.payload or call.resolved or mb.args_ahead is not None:
                    args, kwargs, reg = await self._actor_args(mb, call)
                else:  # no arguments, none to wait for
                    args, kwargs, reg = (), {}, None
                rec = call.caller
                if rec is not None:  # (an actor with sync methods too: _mailbox._Caller)
                    if rec.unbegun is call:  # begun: the caller's sync calls behind it may
                        rec.unbegun = None  # start, after this step (its first await)
                    if rec.held:
                        self.loop.call_soon(mb.release, rec)
                if call.stream:
                    gen = method(*args, **kwargs)
                    value = await self.producers.drive_async(call, gen, mb.actor_id)
                else:
                    value = await method(*args, **kwargs)
                results, to_store, waits = encode_values(
                    self, value, call.return_ids, call.owner, call.name
                )
                if to_store:
                    await store_results(self, results, to_store, call.return_ids, call.owner)
            except asyncio.CancelledError:
                if call.stream and mb.dead is not None:  # stopped by its actor's drop: retried
                    self._stream_gone(
                        call, ActorDiedError(f"actor {mb.class_name} is gone: {mb.dead}")
                    )
                    return
                err = TaskCancelledError(f"call {call.method}() was cancelled")
                results, reg, waits = _failed(call, err)
            except Exception as e:
                if isinstance(e, ActorDiedError) and call.stream and mb.dead is not None:
                    self._stream_gone(call, e)  # (as above)
                    return
                results, reg, waits = _failed(call, e)
            finally:
                current_task.reset(token)
            await self._settle(call, reg, waits)
            # the only call of its actor: the reply need not wait for others this turn
            self._reply(call, results, None, None, mb.running == 1 and not mb.queue)
        finally:
            mb.async_ended(call)

    def _recovered_args(self, call: Call) -> tuple[Any, Any, Any]:
        """An actor call's argument was lost with its node: the call keeps its place in
        the mailbox while the argument's owner rebuilds it (or says why it cannot)."""
        payload, resolved = recover_sources(self, call.payload, call.resolved, call.task_id)
        return decode_args(self, payload, resolved)

    async def _actor_args(self, mb: ActorMailbox, call: Call) -> tuple[Any, Any, Any]:
        """An async call's arguments, in call order: while a call before it still waits
        for its own (a copy from another node, a lost one got back), it waits too."""
        ahead = mb.args_ahead
        if ahead is None and not store_args(call.payload, call.resolved):
            return decode_args(self, call.payload, call.resolved, pulled=True)  # (all inline)
        mine = mb.args_ahead = self.loop.create_future()
        try:
            try:
                out = await decode_args_async(self, call.payload, call.resolved)
            except ObjectLostError as e:  # its node died: got back in place (_arg_recovery)
                if type(e) is not ObjectLostError:
                    raise
                payload, resolved = await self.loop.run_in_executor(
                    None, recover_sources, self, call.payload, call.resolved, call.task_id
                )
                out = await decode_args_async(self, payload, resolved)
            if ahead is not None:
                await asyncio.shield(ahead)  # (a cancel of this call leaves it be)
            return out
        finally:
            if ahead is None or ahead.done():
                _open_gate(mb, mine)
            else:  # (failed or cancelled first: the calls behind still wait for the one ahead)
                ahead.add_done_callback(lambda _f: _open_gate(mb, mine))

    @handles(P.Tag.DROP_ACTOR)
    def on_drop_actor(self, peer: RpcPeer, msg: P.DropActorMsg, _bufs: list[bytes]) -> Any:
        mb = self.mailboxes.pop(msg.actor_id, None)
        if mb is not None:
            mb.close(msg.reason)
            mb.instance = None  # its state goes now (store views, memory), not at a later gc
            err = ActorDiedError(
                f"actor {mb.class_name} ({mb.actor_id.hex()}) is gone: {msg.reason}"
            )
            self.producers.actor_gone(mb.actor_id, err)
        return DEFERRED


def _failed(call: Call, exc: BaseException) -> tuple[list[Any], None, None]:
    """The results of a call that raised ``exc`` (no borrows to wait for)."""
    return [encode_error(exc, call.name)] * len(call.return_ids), None, None


def _open_gate(mb: ActorMailbox, gate: asyncio.Future[None]) -> None:
    """The calls behind ``gate``'s call may start (see ``WorkerRuntime._actor_args``)."""
    if not gate.done():
        gate.set_result(None)
    if mb.args_ahead is gate:
        mb.args_ahead = None


async def _drain(conn: Any) -> None:
    """Wait until the caller took most of what is queued to it."""
    try:
        await conn.drain()
    except ConnectionError:
        pass  # the reply finds the connection closed and is dropped


def _format(e: BaseException) -> str:
    from ._serialization import format_exception

    return format_exception(e)


def worker_main(boot: dict[str, Any]) -> None:
    """Entry point of a worker process (in the child of the fork server)."""
    from . import _logs
    from ._ids import reset_after_fork

    reset_after_fork()
    config = Config.from_dict(boot["config"])
    token = bytes.fromhex(boot["token"])
    my_id = new_id()
    node = NodeInfo(boot["node"])
    if config.loop == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    rt = WorkerRuntime(config, token, my_id, node)
    if boot.get("runtime_env"):  # set before anything runs: what it submits inherits its env
        from . import _runtime_env

        rt.job_runtime_env = dict(boot["runtime_env"])
        _runtime_env.register(rt.job_runtime_env)
    G.runtime = rt
    TE.worker_started(rt)  # observability hook: settings, `ps` title actorcore::idle
    _logs.capture_output(rt)
    # Sync tasks run on this (main) thread, where a cancel's signal interrupts
    # blocking calls; the event loop gets a thread of its own.
    main = rt.task_exec = MainThreadExec()
    rt.tasks.install_cancel_signal()

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(rt.astart())
            assert rt.stopped is not None
            loop.run_until_complete(rt.stopped)
        except BaseException as e:  # a worker that cannot start just ends
            logger.error("worker failed: %r", e)
        finally:
            main.close()

    threading.Thread(target=run_loop, name="actorcore-loop", daemon=True).start()
    try:
        main.serve()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
