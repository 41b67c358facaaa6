"""``ac.timeline()``: a Chrome/Perfetto trace of recent tasks and actor calls."""

from __future__ import annotations

import json
from typing import Any

from ._timeline import chrome_trace

__all__ = ["timeline"]


def timeline(filename: str | None = None) -> list[dict[str, Any]]:
    """The trace events of the tasks in the node's history; written to ``filename`` if given.

    One row per worker process, one "X" event per task or actor call (name,
    duration, arguments' size in ``args``). Open the file in ``chrome://tracing``
    or https://ui.perfetto.dev.
    """
    from ..util.state import query

    trace = chrome_trace(query("tasks", None, 0))
    if filename is not None:
        with open(filename, "w") as f:
            json.dump(trace, f)
    return trace
