"""Actor mailboxes and the task queue of a worker.

An :class:`ActorMailbox` holds one actor's calls in arrival order. Sync
methods run on the worker's executor threads, at most ``max_concurrency`` at a
time (1 by default: one at a time, in order); an executor thread drains the
mailbox without going back to the event loop between calls. ``async def``
methods run on the loop and interleave at ``await`` up to ``max_concurrency``.

The :class:`TaskQueue` runs a leased worker's tasks one at a time, in order,
sync ones on the worker's main thread, where a cancel can interrupt them even
inside a blocking call (:meth:`TaskQueue.install_cancel_signal`).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import functools
import inspect
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from ._lending import TIMED_OUT
from ._protocol import Tag
from .errors import TaskCancelledError, TaskCancelledInterrupt

if TYPE_CHECKING:
    from ._worker import Call, WorkerRuntime

__all__ = ["ActorMailbox", "TaskQueue"]

CANCEL_SIGNAL = signal.SIGUSR2  # interrupts a sync task on the worker's main thread
_FAIR_BATCH = 64
_GROW_AFTER_S = 0.001  # a threaded actor adds a thread when no call finished for this long
_WAIT_SLICE_S = 0.05  # a thread waiting for its caller's next call looks around this often
_WAIT_IDLE_S = 0.2  # and gives reading back to the loop after this long without one
_WAIT_SKIP = 64  # after a call of another actor came in, do not wait for this many calls
_LATE_S = 20e-6  # a wait for the next call shorter than this: the call was there before
_CROWD_CHECK_EVERY = 16  # calls read by the thread itself between looks at its CPU waits
_CROWDED_NS = 30_000  # a wait for a CPU longer than this per call: crowded
_CROWDED_SKIP = 4096  # calls then left to the loop's hand-off
_ACTOR_CALL = Tag.ACTOR_CALL


def _call_class() -> Any:
    from ._worker import Call  # (imports this module)

    return Call


def interrupt_thread(thread_id: int, exc_type: type[BaseException] | None) -> bool:
    """Raise ``exc_type`` in another thread at its next bytecode (cancelling sync code);
    ``None`` takes back an interrupt that has not fired yet."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else ctypes.py_object()
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)
    return n == 1


class ActorMailbox:
    """One actor: its instance, its queue of calls, and how they may run."""

    def __init__(
        self,
        worker: WorkerRuntime,
        actor_id: bytes,
        instance: Any,
        class_name: str,
        max_concurrency: int,
    ) -> None:
        self.worker = worker
        self.actor_id = actor_id
        self.instance = instance
        self.class_name = class_name
        self.max_concurrency = max_concurrency
        # sync methods at once: max_concurrency when the user set it (a threaded
        # actor), else 1 (an async actor's sync methods run one at a time, as in Ray)
        self.sync_limit = max_concurrency
        self.epoch = 0  # its incarnation (HOST_ACTOR): calls meant for another are refused
        self.queue: collections.deque[Call] = collections.deque()
        self.running = 0
        self.sync_running = 0  # threads draining sync calls
        self.completed = 0  # sync calls finished (progress, for growing)
        self._grow_armed = False
        self.lock = threading.Lock()
        self.dead: str | None = None
        self._is_coro: dict[str, bool] = {}
        self._names: dict[str, str] = {}
        self.async_tasks: dict[bytes, tuple[asyncio.Task[Any], Call]] = {}
        # the last async call still getting its arguments: the next ones wait for it (loop)
        self.args_ahead: asyncio.Future[None] | None = None
        self.read_direct = 0  # calls its own thread read off a connection (_read_calls)
        self._wait_skip = 0
        self._late = 0  # calls in a row that were there before this thread waited
        self._run_delay: tuple[int, int, int] | None = None  # (thread, ns waited for a CPU, calls)

    def call_name(self, method: str) -> str:
        """``Class.method``, for logs and task events (made once per method)."""
        name = self._names.get(method)
        if name is None:
            if len(self._names) > 1000:  # (names sent by callers: bounded)
                self._names.clear()
            name = self._names[method] = f"{self.class_name}.{method}"
        return name

    def is_coroutine(self, method: str) -> bool:
        flag = self._is_coro.get(method)
        if flag is None:
            fn = getattr(type(self.instance), method, None)
            flag = self._is_coro[method] = inspect.iscoroutinefunction(
                fn
            ) or inspect.isasyncgenfunction(fn)
        return flag

    def push(self, call: Call) -> None:
        """A call arrived (loop thread)."""
        with self.lock:
            reason = self.dead
            if reason is None:
                is_async = self.is_coroutine(call.method)
                # nothing waits and a slot is free: it starts now (what _fill would do)
                now = (
                    not self.queue
                    and self.running < self.max_concurrency
                    and (is_async or not self.sync_running)
                )
                if now:
                    self.running += 1
                    if not is_async:
                        self.sync_running += 1
                else:
                    self.queue.append(call)
        if reason is not None:
            self.worker.reply_died(call, self, reason)
        elif now:
            self._start(call, is_async)
        else:
            self._fill()

    def _fill(self) -> None:
        """Start queued calls while slots are free (any thread).

        Async calls start at once, up to ``max_concurrency``. Sync calls get one
        draining thread; more threads join only while the running ones make no
        progress (blocking calls), so fast calls do not fight over the GIL.
        """
        while True:
            with self.lock:
                if self.dead is not None or not self.queue or self.running >= self.max_concurrency:
                    return
                is_async = self.is_coroutine(self.queue[0].method)
                if not is_async and self.sync_running:
                    self._arm_grow()
                    return
                call = self.queue.popleft()
                self.running += 1
                if not is_async:
                    self.sync_running += 1
            self._start(call, is_async)

    def _start(self, call: Call, is_async: bool) -> None:
        """Run ``call``, its slot taken: a sync one on an executor thread (which then
        drains the calls behind it), an async one as a task on the loop."""
        if not is_async:
            self.worker.pool.submit(functools.partial(self._drain, call))
        elif threading.get_ident() == self.worker.loop_thread_id:
            self._start_async(call)  # (its first step runs on the loop's next turn)
        else:
            self.worker.call_soon(self._start_async, call)

    def _arm_grow(self) -> None:
        """(under the lock) check for a stall soon, unless a check is pending."""
        if not self._grow_armed:
            self._grow_armed = True
            self.worker.call_soon(self._schedule_grow, self.completed)

    def _schedule_grow(self, seen: int) -> None:
        self.worker.loop.call_later(_GROW_AFTER_S, self._grow, seen)

    def _grow(self, seen: int) -> None:
        """No sync call finished since the last look: add a thread (up to the limit)."""
        with self.lock:
            self._grow_armed = False
            if self.completed != seen and self._can_grow():
                self._arm_grow()
                return
            call = self._take_for_new_thread()
        if call is not None:
            self.worker.pool.submit(functools.partial(self._drain, call))

    def blocked(self) -> None:
        """A running sync call of this actor waits in get() (its executor thread).

        It is stalled for sure: a queued sync call gets a thread at once (up to
        the limit) instead of after the progress check. Two actors calling each
        other at the same moment each serve the other's call this way, however
        late the loop runs the check under load.
        """
        with self.lock:
            call = self._take_for_new_thread()
        if call is not None:
            self.worker.pool.submit(functools.partial(self._drain, call))

    def _can_grow(self) -> bool:
        """(under the lock) a queued sync call waits and a slot is free."""
        return (
            self.dead is None
            and bool(self.queue)
            and not self.is_coroutine(self.queue[0].method)
            and self.running < self.max_concurrency
            and self.sync_running < self.sync_limit
        )

    def _take_for_new_thread(self) -> Call | None:
        """(under the lock) the head call with a new thread's slot taken, if one may start."""
        if not self._can_grow():
            return None
        call = self.queue.popleft()
        self.running += 1
        self.sync_running += 1
        self._arm_grow()
        return call

    def _start_async(self, call: Call) -> None:
        task = self.worker.loop.create_task(self.worker.run_actor_call_async(self, call))
        self.async_tasks[call.task_id] = (task, call)

    def async_ended(self, call: Call, _task: Any = None) -> None:
        """(loop) An async call is over: its slot is free. Called at the end of the
        call's coroutine, and by its task's end when cancelled (a task cancelled
        before it began never runs its coroutine); the first call counts."""
        if call.ended:
            return
        call.ended = True
        entry = self.async_tasks.get(call.task_id)
        if entry is not None and entry[1] is call:
            del self.async_tasks[call.task_id]
        with self.lock:
            self.running -= 1
        self._fill()

    def _cancel_async(self, task: asyncio.Task[Any], call: Call) -> None:
        task.cancel()
        task.add_done_callback(functools.partial(self.async_ended, call))

    def _drain(self, call: Call) -> None:
        """Run sync calls while the head of the queue is one (executor thread).

        The slot taken for ``call`` stays taken between calls, so a sync actor
        runs its calls one after another without a trip through the loop.
        After a batch the thread is handed back (with the next call) if jobs
        wait for a thread, so that other actors of a shared worker get their turn.

        With nothing queued, the thread of a one-at-a-time actor then waits for
        its caller's next call on the connection itself: the reply lends it
        reading (the loop does not read that connection meanwhile), and a sync
        call of this actor that comes in is run here at once, one wake-up per
        call instead of two (the loop's, then this thread's). Anything else, and
        every frame behind it, goes to the loop in order; reading goes back to
        the loop before a call runs, so a method that calls ``get``, waits on a
        borrow or streams is served as before (:meth:`_read_calls`).
        """
        pool = self.worker.pool
        budget = _FAIR_BATCH
        while True:
            conn = call.peer.conn
            wait = not self.queue and self._may_wait(conn)
            call.lend_reading = wait
            self.worker.run_actor_call(self, call)
            lent = wait and call.lend_reading
            with self.lock:
                self.completed += 1
                more = (
                    self.dead is None
                    and bool(self.queue)
                    and not self.is_coroutine(self.queue[0].method)
                )
                if more:
                    call = self.queue.popleft()
                else:
                    self.running -= 1
                    self.sync_running -= 1
            if more:
                # calls come in bursts here: the loop reads them while this thread
                # runs, and a thread waiting on the socket would only answer sooner
                # in the middle of a burst (the caller then spends its time reading
                # replies instead of sending): do not wait for a while
                self._wait_skip = _WAIT_SKIP
                if lent and conn is not None:
                    conn.give_back()
                if wait:
                    pool.end_wait()
                budget -= 1
                if budget == 0:
                    if pool.jobs_waiting():  # others wait for a thread: take turns
                        pool.submit(functools.partial(self._drain, call))
                        return
                    budget = _FAIR_BATCH
                continue
            if not lent or conn is None:
                if wait:
                    pool.end_wait()
                self._fill()
                return
            try:
                next_call = self._read_calls(conn)
            finally:
                pool.end_wait()
            if next_call is None:
                return
            call = next_call
            budget = _FAIR_BATCH

    def _note_late(self, late: bool) -> None:
        """Whether the next call was there already when this thread came to wait for it.

        On a busy machine the thread that replied is often preempted before it
        waits again (the caller it woke runs first), and a call then waits for
        it to get a CPU back; a thread asleep in the pool (the loop's hand-off)
        gets one sooner. Twice late in a row: go back to the hand-off for a while.
        """
        if not late:
            self._late = 0
            return
        self._late += 1
        if self._late >= 2:
            self._late = 0
            self._wait_skip = _WAIT_SKIP

    def _check_crowding(self) -> None:
        """(under the lock) Go back to the loop's hand-off for a while when this thread
        waits long for a CPU after it is woken (an overloaded machine).

        A thread that does all of a call's work uses more CPU than the two it
        replaces, and a fair scheduler then lets it wait longer when woken than
        a thread that mostly sleeps: on a crowded machine the hand-off wins.
        Measured from the thread's runqueue wait (``/proc/thread-self/schedstat``)
        over the last calls it read itself.
        """
        try:
            with open("/proc/thread-self/schedstat", "rb") as f:
                delay = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            return
        me = threading.get_ident()
        last, self._run_delay = self._run_delay, (me, delay, self.read_direct)
        if last is None or last[0] != me:
            return
        if (delay - last[1]) / max(1, self.read_direct - last[2]) > _CROWDED_NS:
            self._wait_skip = _CROWDED_SKIP
            self._run_delay = None  # measure afresh when trying again

    def _may_wait(self, conn: Any) -> bool:
        """Whether this thread may wait for its caller's next call on ``conn`` (it then
        holds one of the pool's waiting places: :meth:`ExecPool.begin_wait`)."""
        if self.max_concurrency != 1 or conn is None or not conn.lendable:
            return False
        if self._wait_skip > 0:  # the connection carried calls of other actors lately
            self._wait_skip -= 1
            return False
        return self.worker.pool.begin_wait()

    def _read_calls(self, conn: Any) -> Call | None:
        """(reading lent to this thread) The next call of this actor read off ``conn``,
        its slot taken; None: reading went back to the loop and nothing is to run here."""
        idle = 0.0
        first_read = True
        while True:
            with self.lock:
                busy = self.dead is not None or bool(self.queue) or self.running > 0
            if busy or self.worker.closing:
                conn.give_back()
                self._fill()  # an async call may wait at the head of the queue
                return None
            began = time.perf_counter()
            frames = conn.read_lent(_WAIT_SLICE_S)
            if frames is None:
                return None
            if first_read and frames:
                first_read = False
                self._note_late(time.perf_counter() - began < _LATE_S)
            if not frames:
                if frames is TIMED_OUT:
                    idle += _WAIT_SLICE_S
                    if idle >= _WAIT_IDLE_S:
                        conn.give_back()
                        return None
                continue
            return self._take(conn, frames)

    def _take(self, conn: Any, frames: list[tuple[Any, list[bytes]]]) -> Call | None:
        """(reading lent to this thread) Queue the calls of this actor in ``frames``,
        the first with its slot taken when nothing runs (returned: run it here), and
        give reading back; from the first frame that is anything else on, the loop
        delivers them, in order."""
        first: Call | None = None
        make_call = _call_class()
        rest: list[tuple[Any, list[bytes]]] = []
        for i, (msg, _bufs) in enumerate(frames):
            if msg.TAG != _ACTOR_CALL or msg.actor_id != self.actor_id:
                if msg.TAG == _ACTOR_CALL:
                    self._wait_skip = _WAIT_SKIP  # a connection shared with other actors
                rest = frames[i:]
                break
            if msg.epoch != self.epoch and msg.epoch >= 0:  # the loop refuses it
                rest = frames[i:]
                break
            if self.is_coroutine(msg.method):
                rest = frames[i:]
                break
            call = make_call(
                conn.receiver, msg, f"{self.class_name}.{msg.method}", msg.method, None, False
            )
            with self.lock:
                if self.dead is not None:  # the loop answers calls to a dead actor
                    rest = frames[i:]
                    break
                if first is None and not self.queue and self.running == 0:
                    self.running += 1
                    self.sync_running += 1
                    self.read_direct += 1
                    first = call
                    if self.read_direct % _CROWD_CHECK_EVERY == 0:
                        self._check_crowding()
                else:
                    self.queue.append(call)  # behind ``first`` or a running call
        conn.give_back(rest)  # the loop delivers these first, then reads on
        if first is None:
            self._fill()
        return first

    def cancel(self, task_id: bytes) -> bool:
        with self.lock:
            for call in self.queue:
                if call.task_id == task_id:
                    self.queue.remove(call)
                    break
            else:
                call = None
        if call is not None:
            self.worker.reply_error(call, TaskCancelledError(f"call {call.method}() was cancelled"))
            return True
        entry = self.async_tasks.get(task_id)
        if entry is not None:
            self._cancel_async(*entry)
            return True
        return False

    def close(self, reason: str) -> None:
        """The actor is gone: refuse queued calls (callers then look for it elsewhere)."""
        with self.lock:
            self.dead = reason
            calls = list(self.queue)
            self.queue.clear()
        for call in calls:
            self.worker.reply_died(call, self, reason)
        for task, call in list(self.async_tasks.values()):
            self._cancel_async(task, call)


class TaskQueue:
    """A leased worker's tasks: one at a time, in the order they were pushed."""

    def __init__(self, worker: WorkerRuntime) -> None:
        self.worker = worker
        self.queue: collections.deque[Call] = collections.deque()
        self.running: Call | None = None
        self.busy = False
        self.lock = threading.Lock()
        self.thread_id = 0
        self.async_task: asyncio.Task[Any] | None = None
        self.in_user_code: Call | None = None  # interrupts land only while this is set
        self.cancel_target: Call | None = None  # the call the cancel signal is meant for
        self.signal_thread = 0  # the thread the cancel signal interrupts (0: none)

    def run_user_code(self, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a sync task's function; a cancel may interrupt it only in here."""
        me = threading.get_ident()
        if me == self.signal_thread and signal.getsignal(CANCEL_SIGNAL) != self._on_cancel_signal:
            signal.signal(CANCEL_SIGNAL, self._on_cancel_signal)  # a task took it for itself
        with self.lock:
            self.in_user_code = call
        try:
            return call.fn(*args, **kwargs)
        finally:
            self.in_user_code = None  # first: the signal handler reads it without the lock
            self.cancel_target = None
            if me != self.signal_thread:
                interrupt_thread(me, None)  # a late interrupt must not land in our code

    def install_cancel_signal(self) -> None:
        """Let a cancel interrupt a sync task where it blocks (call on the main thread).

        The loop thread sends :data:`CANCEL_SIGNAL` to the main thread, which
        runs the sync tasks; the handler raises :class:`TaskCancelledInterrupt`
        (a KeyboardInterrupt) in the task if it is still the one to cancel.
        ``time.sleep``, socket reads and lock waits return into Python on a
        signal, so the cancel lands there within moments; a ``finally`` in user
        code still runs. A task that takes the signal for itself (its own
        handler, or SIG_IGN) has it back before the next task runs.
        """
        signal.signal(CANCEL_SIGNAL, self._on_cancel_signal)
        self.signal_thread = threading.get_ident()

    def _on_cancel_signal(self, _signum: int, _frame: Any) -> None:
        target = self.cancel_target  # no lock here: the handler may run while it is held
        if target is not None and self.in_user_code is target:
            self.cancel_target = None
            raise TaskCancelledInterrupt(f"task {target.name} was cancelled")

    def push(self, call: Call) -> None:
        with self.lock:
            self.queue.append(call)
            if self.busy:
                return
            self.busy = True
        self._next()

    def _next(self) -> None:
        with self.lock:
            if not self.queue:
                self.busy = False
                self.running = None
                return
            head = self.queue[0]
            if head.is_async:
                self.queue.popleft()
                self.running = head
        if head.is_async:
            self.worker.call_soon(self._start_async, head)
        else:
            self.worker.task_exec.submit(self._drain)

    def _start_async(self, call: Call) -> None:
        self.async_task = task = self.worker.loop.create_task(self.worker.run_task_async(call))
        task.add_done_callback(lambda _t: self._after_async())

    def _after_async(self) -> None:
        self.async_task = None
        self._next()

    def _drain(self) -> None:
        self.thread_id = threading.get_ident()
        while True:
            with self.lock:
                if not self.queue:
                    self.busy = False
                    self.running = None
                    return
                call = self.queue[0]
                if call.is_async:
                    break
                self.queue.popleft()
                self.running = call
            try:
                self.worker.run_task(call)
            except TaskCancelledInterrupt:
                pass  # an interrupt that arrived after the task ended
        self._next()

    def hand_back(self, peer: Any = None) -> dict[Any, list[int]]:
        """Take the tasks not started yet (of ``peer`` only, if given); ``{peer: [rid, ...]}``."""
        with self.lock:
            calls = [c for c in self.queue if peer is None or c.peer is peer]
            if peer is None:
                self.queue.clear()
            else:
                for c in calls:
                    self.queue.remove(c)
        out: dict[Any, list[int]] = {}
        for c in calls:
            out.setdefault(c.peer, []).append(c.rid)
        return out

    def cancel(self, task_id: bytes, force: bool) -> bool:
        with self.lock:
            for call in self.queue:
                if call.task_id == task_id:
                    self.queue.remove(call)
                    break
            else:
                call = None
            running = self.running
        if call is not None:
            self.worker.reply_error(call, TaskCancelledError(f"task {call.name} was cancelled"))
            return True
        if running is None or running.task_id != task_id:
            return False
        if force:
            self.worker.exit_now("force-cancelled")
        if running.is_async:
            if self.async_task is not None:
                self.async_task.cancel()
            return True
        with self.lock:
            if self.in_user_code is not running:
                return True
            if self.thread_id == self.signal_thread:
                self.cancel_target = running
                signal.pthread_kill(self.thread_id, CANCEL_SIGNAL)
            else:
                interrupt_thread(self.thread_id, TaskCancelledInterrupt)
        return True
