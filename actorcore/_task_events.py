"""Task history and user metrics, process side: record cheaply, ship in batches.

Every process that submits or runs work (drivers and workers) records state
changes of tasks and actor calls here: an append of a small tuple to a bounded
deque, nothing else on the hot path. The runtime loop ships what accumulated
to the node daemon about every 100 ms (or sooner when many events wait) in one
:class:`TaskEventsMsg`; the daemon keeps the node's bounded history
(:mod:`actorcore._obs._history`).

User metric samples (:mod:`actorcore.util.metrics`) ride on the same batches.

An event is a tuple ``(task_id, state, time, name, actor_id, info)``; ``info``
is the task kind for pending events, the arguments' size for RUNNING, the
error text for FAILED. A worker's end event appends ``(started, args_size)``:
a call that ends before the next flush costs a single event, and the flush
reports RUNNING only for the calls still running then.
"""

from __future__ import annotations

import collections
import itertools
import logging
import operator
import os
import pickle
import time
from typing import Any

import msgpack

from . import _global as G
from . import _protocol as P

__all__ = [
    "STATE_NAMES",
    "call_done",
    "call_running",
    "owner_failed",
    "pending_actor_call",
    "pending_task",
    "ran_elsewhere",
    "record_metric",
]

logger = logging.getLogger(__name__)

# state codes on the wire (order = progress; terminal states last)
PENDING_ARGS_AVAIL = 0
PENDING_NODE_ASSIGNMENT = 1
PENDING_ACTOR_TASK_ARGS_FETCH = 2
SUBMITTED_TO_WORKER = 3
RUNNING = 4
FINISHED = 5
FAILED = 6
RAN_ELSEWHERE = 7  # not a state: the owner learns its task ran on another node
STATE_NAMES = (
    "PENDING_ARGS_AVAIL",
    "PENDING_NODE_ASSIGNMENT",
    "PENDING_ACTOR_TASK_ARGS_FETCH",
    "SUBMITTED_TO_WORKER",
    "RUNNING",
    "FINISHED",
    "FAILED",
)
NORMAL_TASK = "NORMAL_TASK"
ACTOR_TASK = "ACTOR_TASK"

FLUSH_INTERVAL_S = 0.1
FLUSH_AT = 2000  # events waiting: ship at once
BUFFER_EVENTS = 20000  # the oldest are dropped beyond this (a stalled loop)
_ERROR = 2  # result kind of an error (actorcore._refcount.ERROR)

_events: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=BUFFER_EVENTS)
_running: dict[bytes, tuple[float, str, bytes | None, int]] = {}  # started, not replied
_shown: set[bytes] = set()  # running calls whose RUNNING event has been shipped
_samples: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=BUFFER_EVENTS)
_off = False  # task history disabled by the config
_armed = False  # a flush is scheduled
_rt: Any = None  # the runtime the settings were read from
_now = time.time
_pack = msgpack.Packer(use_bin_type=True).pack  # only on the loop thread (flush)
_append = _events.append
_popleft = _events.popleft
_state_of = operator.itemgetter(1)
_take = itertools.islice
_title: list[str] = [""]  # the process title set last


# --- the hot path -------------------------------------------------------------------------


def pending_task(task_id: bytes, name: str, has_deps: bool) -> None:
    """The owner submitted a task."""
    if _off:
        return
    state = PENDING_ARGS_AVAIL if has_deps else PENDING_NODE_ASSIGNMENT
    _append((task_id, state, _now(), name, None, NORMAL_TASK))
    if not _armed:
        _arm()


def pending_actor_call(task_id: bytes, name: str, actor_id: bytes, has_deps: bool) -> None:
    """The owner submitted an actor call."""
    if _off:
        return
    state = PENDING_ACTOR_TASK_ARGS_FETCH if has_deps else SUBMITTED_TO_WORKER
    _append((task_id, state, _now(), name, actor_id, ACTOR_TASK))
    if not _armed:
        _arm()


def call_running(call: Any, actor_id: bytes | None) -> None:
    """A worker starts running ``call`` (a task or an actor call).

    No event yet: a call that ends before the next flush costs one event (its
    end, carrying its start); the flush reports the calls still running.
    """
    if _off:
        return
    payload = call.payload
    size = len(payload) if type(payload) is bytes else 0
    _running[call.task_id] = (_now(), call.name, actor_id, size)
    if not _armed:
        _arm()


def call_done(call: Any, results: list[Any]) -> None:
    """A worker replies to ``call``: FINISHED, or FAILED when a result is an error."""
    if _off:
        return
    task_id = call.task_id
    run = _running.pop(task_id, None)
    if _shown:
        _shown.discard(task_id)
    if results and results[0][0] == _ERROR:
        state, info = FAILED, _error_text(results[0][1])
    else:
        state, info = FINISHED, None
    if run is None:  # refused before it ran (cancelled in the queue)
        _append((task_id, state, _now(), call.name, None, info))
    else:
        _append((task_id, state, _now(), run[1], run[2], info, run[0], run[3]))
    if not _armed:
        _arm()


def ran_elsewhere(task_id: bytes, node_id: bytes) -> None:
    """The owner got the results of a task another node ran (that node has its record)."""
    if _off:
        return
    _append((task_id, RAN_ELSEWHERE, _now(), "", None, node_id.hex()))
    if not _armed:
        _arm()


def owner_failed(task_id: bytes, name: str, err: BaseException) -> None:
    """The owner failed a task without a worker's reply (worker died, bad argument, ...)."""
    if _off:
        return
    _append((task_id, FAILED, _now(), name, None, f"{type(err).__name__}: {err}"))
    if not _armed:
        _arm()


def record_metric(sample: tuple[Any, ...]) -> None:
    """A user metric sample or definition (see :mod:`actorcore.util.metrics`)."""
    _samples.append(sample)
    if not _armed:
        _arm()


# --- shipping -------------------------------------------------------------------------------


def _error_text(blob: Any) -> str:
    if blob is None:
        return "an exception that could not be pickled"
    try:
        return str(pickle.loads(blob))
    except Exception as e:
        return f"an exception that could not be read back ({e!r})"


def bind(rt: Any) -> None:
    """Read the settings of runtime ``rt`` (called at ``init`` and lazily in workers).

    A new runtime starts afresh: a flush scheduled on an earlier runtime's loop
    (stopped by ``shutdown``) never ran, and its events have nowhere to go.
    """
    global _rt, _off, _armed
    if rt is not _rt:
        _events.clear()
        _samples.clear()
        _running.clear()
        _shown.clear()
        _armed = False
    _rt = rt
    _off = not getattr(rt.config, "task_events", True)
    if _off:
        _events.clear()


def worker_started(rt: Any) -> None:
    """A worker process starts: read its settings, show it idle in ``ps``."""
    bind(rt)
    _set_title("idle")


def _arm() -> None:
    """Schedule a flush on the runtime loop (from any thread)."""
    global _armed
    rt = G.runtime
    if rt is None or rt.loop is None:
        return  # no runtime (yet): the events wait in the bounded buffer
    if rt is not _rt:
        bind(rt)
    if _off and not _samples:
        return  # history is off (user metrics still ship)
    _armed = True
    delay = 0.0 if len(_events) >= FLUSH_AT else FLUSH_INTERVAL_S
    try:
        rt.call_soon(_later, rt, delay)
    except RuntimeError:  # the loop is closed
        _armed = False


def _later(rt: Any, delay: float) -> None:
    rt.loop.call_later(delay, flush, rt)


def flush(rt: Any = None) -> None:
    """Ship what accumulated (on the runtime loop)."""
    global _armed
    _armed = False
    rt = rt or G.runtime
    # popped in C (a loop of popleft() calls, no Python frame per event): other
    # threads may append meanwhile; what they add after len() waits for the next flush
    events = list(_take(iter(_popleft, None), len(_events)))
    samples = list(_take(iter(_samples.popleft, None), len(_samples))) if _samples else []
    running = list(_running.items())  # one C call: safe while other threads add and pop
    for task_id, (t, name, actor_id, size) in running:
        if task_id not in _shown:
            _shown.add(task_id)
            events.append((task_id, RUNNING, t, name, actor_id, size))
    if len(_shown) > len(running):  # a call ended between the copy and the add
        _shown.intersection_update(_running)
    _show(running[-1][1][1] if running else None)
    if not (events or samples) or rt is None or rt.daemon is None:
        return
    states = list(map(_state_of, events))
    counts = [len(events), states.count(FINISHED), states.count(FAILED)]
    msg = P.TaskEventsMsg(_pack(events), counts, samples)
    try:
        rt.daemon.send(msg)
    except ConnectionError:
        pass


def _show(running: str | None) -> None:
    """``ps`` shows what this worker runs (the title changes at most once per flush)."""
    if not _title[0]:
        return  # not a worker (a driver): its title is the user's
    what = running or "idle"
    if _title[0] != what:
        _set_title(what)


def _set_title(what: str) -> None:
    _title[0] = what
    set_process_title(what)


def set_process_title(what: str) -> None:
    """``ps`` shows ``actorcore::<what>`` for this process (when setproctitle is installed)."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle("actorcore::" + what)


def reset_after_fork() -> None:
    """A forked child starts with an empty buffer and reads its settings again."""
    global _armed, _rt
    _events.clear()
    _samples.clear()
    _running.clear()
    _shown.clear()
    _armed = False
    _rt = None
    _title[0] = ""
    logger.debug("task events reset in pid %d", os.getpid())
