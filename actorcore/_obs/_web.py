"""The ``/metrics`` web app of a node (Prometheus text exposition).

Read-only and open by default, like Ray's; with ``metrics_token`` set a
scrape must carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from ._observer import NodeObserver

__all__ = ["CONTENT_TYPE", "bearer_ok", "metrics_app"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def bearer_ok(request: web.Request, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``."""
    got = request.headers.get("Authorization", "")
    return got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip(), token)


def metrics_app(obs: NodeObserver) -> web.Application:
    token = obs.daemon.config.metrics_token

    async def metrics(request: web.Request) -> web.Response:
        if token and not bearer_ok(request, token):
            return web.Response(status=401, text="a bearer token is required\n")
        return web.Response(body=obs.metrics_text(), headers={"Content-Type": CONTENT_TYPE})

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="actorcore node metrics: see /metrics\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", root)
    return app


def json_response(data: Any, status: int = 200) -> web.Response:
    import json

    return web.Response(
        text=json.dumps(data, default=str), status=status, content_type="application/json"
    )
