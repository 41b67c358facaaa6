"""``actorcore dashboard --serve``: the dashboard in a process of its own.

It asks a node for state through the state API (``STATE_QUERY``) instead of
reading a daemon's memory, and pushes to browsers every second. Same pages,
same token (derived from the node's cluster token).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from ._observer import dashboard_token

__all__ = ["RemoteObserver", "serve_dashboard"]


class RemoteObserver:
    """What the dashboard app needs (``token``, ``version``, ``query``), from a node's API."""

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = node
        self.token = dashboard_token(bytes.fromhex(node["token"]))
        self._ticks = itertools.count()

    @property
    def version(self) -> int:
        return next(self._ticks)  # no change feed from afar: push every time

    async def query(
        self, kind: str, filters: Any = None, limit: int = 0, options: Any = None
    ) -> list[dict[str, Any]]:
        from ..util.state import query

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, query, kind, filters, limit, options, self.node)


def serve_dashboard(node: dict[str, Any], host: str, port: int) -> None:
    """Serve the dashboard of ``node`` on ``host:port`` until interrupted."""
    from aiohttp import web

    from ._dashboard import dashboard_app
    from ._http import bind

    obs = RemoteObserver(node)
    sock = bind(host, port)  # a taken port: any free one (printed)
    sock.setblocking(True)
    real = sock.getsockname()[1]
    print(f"dashboard: http://{host}:{real} (log in with {obs.token})", flush=True)
    web.run_app(dashboard_app(obs), sock=sock, print=None)  # type: ignore[arg-type]
