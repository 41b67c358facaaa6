"""The dashboard: an aiohttp app, token-protected, pushing live data by SSE.

Every request needs the dashboard token (derived from the cluster token, see
:func:`dashboard_token`): as the ``ac_dash`` cookie that ``/login`` sets, or
as ``Authorization: Bearer``. Without it a request gets 401 and no data: the
login page for pages, a JSON error for the API. ``/?token=...`` logs in and
drops the token from the address.

Pages are one static app (``static/``, shipped in the package: no CDN) with
hash routes; it opens ``/api/stream?view=...`` (server-sent events) and
re-renders on each message, with no page reloads.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._timeline import chrome_trace
from ._views import VIEWS, view_payload
from ._web import bearer_ok, json_response

if TYPE_CHECKING:
    from ._observer import NodeObserver
    from ._standalone import RemoteObserver

__all__ = ["COOKIE", "dashboard_app"]

logger = logging.getLogger(__name__)

COOKIE = "ac_dash"
STATIC = os.path.join(os.path.dirname(__file__), "static")
PUSH_EVERY_S = 1.0
_OPEN = frozenset({"/login", "/favicon.ico"})


def _authorized(request: web.Request, token: str) -> bool:
    cookie = request.cookies.get(COOKIE, "")
    return (bool(cookie) and hmac.compare_digest(cookie, token)) or bearer_ok(request, token)


def _login_page(message: str = "", status: int = 401) -> web.Response:
    with open(os.path.join(STATIC, "login.html")) as f:
        html = f.read().replace("{{message}}", message)
    return web.Response(text=html, status=status, content_type="text/html")


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


def _logged_in(location: str, token: str) -> web.Response:
    resp = _redirect(location)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
    return resp


def _auth_middleware(token: str) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in _OPEN:
            return await handler(request)
        given = request.query.get("token")
        if given is not None and hmac.compare_digest(given, token):
            return _logged_in(request.path, token)
        if not _authorized(request, token):
            if request.path.startswith("/api/"):
                return json_response({"error": "unauthorized: log in first"}, status=401)
            return _login_page()
        return await handler(request)

    return auth


def dashboard_app(obs: NodeObserver | RemoteObserver) -> web.Application:
    """The dashboard of the node (or cluster) that ``obs`` observes."""
    token = obs.token
    app = web.Application(middlewares=[_auth_middleware(token)])
    rows = obs.query

    async def login_get(request: web.Request) -> web.Response:
        return _login_page(status=200)

    async def login_post(request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", "")).strip()
        if given and hmac.compare_digest(given, token):
            return _logged_in("/", token)
        return _login_page("That token is not right.")

    async def logout(request: web.Request) -> web.Response:
        resp = _redirect("/login")
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(os.path.join(STATIC, "index.html"))

    async def api(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        q = request.query
        try:
            data = await rows(kind, q.getall("filter", []), int(q.get("limit", 0)), dict(q))
        except ValueError as e:
            return json_response({"error": str(e)}, status=400)
        return json_response(data)

    async def timeline(request: web.Request) -> web.Response:
        return json_response(chrome_trace(await rows("tasks")))

    async def stream(request: web.Request) -> web.StreamResponse:
        view = request.query.get("view", "overview")
        if view not in VIEWS:
            return json_response({"error": f"no page {view!r}"}, status=404)
        return await _stream(request, obs, view, request.query.get("arg", ""))

    app.router.add_get("/login", login_get)
    app.router.add_post("/login", login_post)
    app.router.add_get("/logout", logout)
    app.router.add_get("/", index)
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/api/timeline", timeline)
    app.router.add_get("/api/{kind}", api)
    app.router.add_static("/static/", STATIC)
    return app


async def _stream(
    request: web.Request, obs: NodeObserver | RemoteObserver, view: str, arg: str
) -> web.StreamResponse:
    """Server-sent events: the page's data now, then whenever it changed (at most 1/s)."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    state: dict[str, Any] = {}
    seen = -1
    quiet = 0
    try:
        while True:
            if obs.version != seen or quiet >= 5:
                seen, quiet = obs.version, 0
                payload = await view_payload(obs.query, view, arg, state)
                await resp.write(b"data: " + json.dumps(payload, default=str).encode() + b"\n\n")
            else:
                quiet += 1
            await asyncio.sleep(PUSH_EVERY_S)
    except (ConnectionResetError, ConnectionError):
        pass
    return resp
