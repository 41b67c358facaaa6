"""The node's bounded task history and recent log lines (sans-IO).

:class:`TaskHistory` folds the batches of task events that processes send
(:mod:`actorcore._task_events`) into one record per task, keeping the newest
``max_tasks``. Events of one task come from two processes (the owner's
pending event, the worker's running and terminal events) in batches that may
arrive in any order: a pending event never replaces a later state, and a
newer event replaces an older one.

:class:`LogRing` keeps the last lines that workers printed, numbered, for the
dashboard and ``actorcore logs --follow``.
"""

from __future__ import annotations

import bisect
import collections
import time
from typing import Any

import msgpack

from .._task_events import FAILED, FINISHED, RAN_ELSEWHERE, RUNNING, STATE_NAMES

__all__ = ["LATENCY_BUCKETS", "LogRing", "TaskHistory", "TaskRecord"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class TaskRecord:
    """What this node knows of one task or actor call."""

    __slots__ = (
        "actor_id",
        "args_bytes",
        "elsewhere",
        "error",
        "kind",
        "name",
        "node_id",
        "pid",
        "state",
        "state_t",
        "task_id",
        "times",
        "worker_id",
    )

    def __init__(self, task_id: bytes) -> None:
        self.task_id = task_id
        self.name = ""
        self.kind = ""
        self.actor_id: bytes | None = None
        self.state = -1
        self.state_t = 0.0
        self.times: dict[int, float] = {}
        self.worker_id: bytes | None = None
        self.pid: int | None = None
        self.node_id = ""
        self.error: str | None = None
        self.args_bytes = 0
        self.elsewhere: str | None = None  # the node that ran it (its owner's record here)

    def brief(self) -> dict[str, Any]:
        """``task_id``, ``name`` and ``state`` only (cheap: counting, merging)."""
        return {
            "task_id": self.task_id.hex(),
            "name": self.name,
            "state": STATE_NAMES[self.state] if self.state >= 0 else "NIL",
        }

    def row(self, detail: bool = False) -> dict[str, Any]:
        """This task as a dict with Ray's field names."""
        t = self.times
        start = t.get(RUNNING)
        end = t.get(FINISHED, t.get(FAILED))
        created = min(t.values()) if t else None
        row: dict[str, Any] = {
            "task_id": self.task_id.hex(),
            "name": self.name,
            "state": STATE_NAMES[self.state] if self.state >= 0 else "NIL",
            "type": self.kind or ("ACTOR_TASK" if self.actor_id else "NORMAL_TASK"),
            "func_or_class_name": self.name,
            "actor_id": self.actor_id.hex() if self.actor_id else None,
            "node_id": self.node_id or None,
            "worker_id": self.worker_id.hex() if self.worker_id else None,
            "worker_pid": self.pid,
            "error_type": self.error.split(":", 1)[0] if self.error else None,
            "error_message": _clip(self.error) if not detail else self.error,
            "args_bytes": self.args_bytes,
            "creation_time_ms": _ms(created),
            "start_time_ms": _ms(start),
            "end_time_ms": _ms(end),
        }
        if detail:
            row["events"] = [
                {"state": STATE_NAMES[s], "created_ms": _ms(ts)} for s, ts in sorted(t.items())
            ]
        return row


ERROR_CLIP = 4000  # characters of an error in listings (``get task`` has all of it)


def _clip(error: str | None) -> str | None:
    """A long traceback cut for listings: thousands of them must fit in one reply."""
    if error is None or len(error) <= ERROR_CLIP:
        return error
    return (
        error[: ERROR_CLIP // 2]
        + "\n[... cut: `actorcore get task ID` shows it all ...]\n"
        + error[-ERROR_CLIP // 2 :]
    )


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


class Histogram:
    """Cumulative bucket counts, a sum and a count (Prometheus style)."""

    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        i = bisect.bisect_left(self.buckets, v)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += v
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for b, c in zip(self.buckets, self.counts, strict=True):
            acc += c
            out.append((repr(b), acc))
        out.append(("+Inf", self.count))
        return out


class TaskHistory:
    """The newest ``max_tasks`` tasks of a node, and running totals for metrics.

    Batches are kept as they come and folded into records only when someone
    looks (a query, a scrape): under a flood of tasks that nobody watches the
    daemon only counts them, and drops the oldest batches beyond what the
    bounded history could show anyway. The latency histograms therefore
    cover the tasks that were folded (all of them, unless batches were dropped).
    """

    def __init__(self, node_id: str, max_tasks: int = 10_000) -> None:
        self.node_id = node_id
        self.max_tasks = max_tasks
        self.records: collections.OrderedDict[bytes, TaskRecord] = collections.OrderedDict()
        self.finished_total = 0
        self.failed_total = 0
        self.run_seconds = Histogram()
        self.latency_seconds = Histogram()
        self.events_total = 0
        self.dropped_events = 0
        self._raw: collections.deque[tuple[Any, int, bytes | None, int | None]] = (
            collections.deque()
        )
        self._raw_events = 0
        self._raw_limit = 4 * max_tasks  # a task has ~3 events: more cannot be shown

    def ingest(self, events: list[Any], worker_id: bytes | None, pid: int | None) -> None:
        """Take a batch of ``(task_id, state, t, name, actor_id, info)`` from one process."""
        finished = sum(1 for e in events if e[1] == FINISHED)
        failed = sum(1 for e in events if e[1] == FAILED)
        self.ingest_packed(events, [len(events), finished, failed], worker_id, pid)

    def ingest_packed(
        self, batch: Any, counts: list[int], worker_id: bytes | None, pid: int | None
    ) -> None:
        """Take a batch as a process ships it: msgpack bytes (decoded only when folded)
        and its ``[events, finished, failed]`` counts."""
        n, finished, failed = (int(c) for c in counts)
        self.events_total += n
        self.finished_total += finished
        self.failed_total += failed
        self._raw.append((batch, n, worker_id, pid))
        self._raw_events += n
        while self._raw_events > self._raw_limit and len(self._raw) > 1:
            old = self._raw.popleft()[1]
            self._raw_events -= old
            self.dropped_events += old

    def fold(self) -> None:
        """Fold the waiting batches into records (before any read)."""
        raw = self._raw
        while raw:
            batch, _n, worker_id, pid = raw.popleft()
            events = msgpack.unpackb(batch) if isinstance(batch, bytes) else batch
            for ev in events:
                task_id, state, t, name, actor_id, info = ev[:6]
                task_id = bytes(task_id)
                if len(ev) > 6:  # a worker's end event also carries its start and size
                    self._apply(task_id, RUNNING, ev[6], name, actor_id, ev[7], worker_id, pid)
                self._apply(task_id, int(state), float(t), name, actor_id, info, worker_id, pid)
        self._raw_events = 0
        over = len(self.records) - self.max_tasks
        for _ in range(max(0, over)):
            self.records.popitem(last=False)

    def _apply(
        self,
        task_id: bytes,
        state: int,
        t: float,
        name: str,
        actor_id: Any,
        info: Any,
        worker_id: bytes | None,
        pid: int | None,
    ) -> None:
        rec = self.records.get(task_id)
        if state == RAN_ELSEWHERE:  # the owner's note: another node has the run's record
            if rec is not None:
                rec.elsewhere = str(info)
            return
        if rec is None:
            rec = self.records[task_id] = TaskRecord(task_id)
        if name:
            rec.name = name
        if actor_id:
            rec.actor_id = bytes(actor_id)
        first_terminal = state >= FINISHED and FINISHED not in rec.times and FAILED not in rec.times
        rec.times[state] = t
        if state < RUNNING:
            if isinstance(info, str):
                rec.kind = info
        elif state == RUNNING:
            rec.worker_id, rec.pid, rec.node_id = worker_id, pid, self.node_id
            rec.args_bytes = int(info or 0)
        elif state == FAILED:
            rec.error = info
        if rec.state < 0 or (t >= rec.state_t and not (state < RUNNING <= rec.state)):
            rec.state, rec.state_t = state, t
        elif rec.state < RUNNING <= state:
            rec.state, rec.state_t = state, t
        if state >= FINISHED and first_terminal:
            self._count_end(rec, state, t)
        elif state < RUNNING and (FINISHED in rec.times or FAILED in rec.times):
            self.latency_seconds.observe(max(0.0, rec.state_t - t))

    def _count_end(self, rec: TaskRecord, state: int, t: float) -> None:
        started = rec.times.get(RUNNING)
        if started is not None:
            self.run_seconds.observe(max(0.0, t - started))
        pending = [ts for s, ts in rec.times.items() if s < RUNNING]
        if pending:
            self.latency_seconds.observe(max(0.0, t - min(pending)))

    def get(self, task_id: bytes) -> TaskRecord | None:
        self.fold()
        return self.records.get(task_id)

    def newest(self) -> list[TaskRecord]:
        """The records, newest first."""
        self.fold()
        return list(reversed(self.records.values()))

    def counts_by_state(self) -> dict[str, int]:
        self.fold()
        c: collections.Counter[str] = collections.Counter()
        for rec in self.records.values():
            if rec.elsewhere is not None and rec.state < RUNNING:
                continue  # its run is counted by the node that ran it
            c[STATE_NAMES[rec.state] if rec.state >= 0 else "NIL"] += 1
        return dict(c)


class LogRing:
    """The last ``maxlen`` lines printed by this node's workers, numbered from 1."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.lines: collections.deque[tuple[int, float, str, str, str, int | None]] = (
            collections.deque(maxlen=maxlen)
        )
        self.seq = 0

    def add(self, lines: list[Any], pid: int | None) -> None:
        now = time.time()
        for kind, label, text in lines:
            self.seq += 1
            self.lines.append((self.seq, now, kind, label, text, pid))

    def rows(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Lines numbered above ``after``, oldest first, at most the last ``limit``."""
        out = [
            {"seq": s, "time": t, "stream": k, "label": lb, "line": x, "pid": p}
            for s, t, k, lb, x, p in self.lines
            if s > after
        ]
        return out[-limit:] if limit > 0 else out
