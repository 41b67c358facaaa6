"""A Chrome / Perfetto trace of recent tasks and actor calls, from the task history.

One "X" (complete) event per task that ran: ``pid`` is the node, ``tid`` the
worker process, so each worker is one row; metadata events name the rows.
Open the file in ``chrome://tracing`` or https://ui.perfetto.dev.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chrome_trace"]


def chrome_trace(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trace events for task rows (``list_tasks`` rows with start and end times)."""
    events: list[dict[str, Any]] = []
    rows: dict[tuple[str, int], str] = {}
    for t in sorted(tasks, key=lambda r: r.get("start_time_ms") or 0):
        start, end = t.get("start_time_ms"), t.get("end_time_ms")
        if start is None or t.get("worker_pid") is None:
            continue
        node = (t.get("node_id") or "?")[:8]
        pid = int(t["worker_pid"])
        rows.setdefault((node, pid), t.get("worker_id") or "")
        dur_ms = (end if end is not None else start) - start
        events.append(
            {
                "name": t["name"],
                "cat": t.get("type", "task"),
                "ph": "X",
                "ts": start * 1000,
                "dur": max(dur_ms * 1000, 1),
                "pid": f"node {node}",
                "tid": pid,
                "args": {
                    "task_id": t["task_id"],
                    "state": t["state"],
                    "args_bytes": t.get("args_bytes", 0),
                    "actor_id": t.get("actor_id"),
                    "error": t.get("error_message"),
                },
            }
        )
    meta = [
        {
            "name": "thread_name",
            "ph": "M",
            "pid": f"node {node}",
            "tid": pid,
            "args": {"name": f"worker {pid}"},
        }
        for (node, pid) in rows
    ]
    return meta + events
