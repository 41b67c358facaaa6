"""HTTP ingress: an aiohttp server per node (a proxy actor) and ``serve.mount`` into your app.

Both turn an aiohttp request into a :class:`Request` (plain data, so it
crosses to the replica), call the ingress deployment's ``__call__`` through
this process's router, and turn the value into an HTTP response: an
:class:`HTTPResponse` as given, ``str`` as text, ``bytes`` as octet-stream,
anything else as JSON. When ``__call__`` is a generator, each item is written
as it comes (chunked transfer).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from actorcore.errors import TaskError

from ._handle import DeploymentHandle
from .errors import BackPressureError

__all__ = ["HTTPProxy", "HTTPResponse", "Request", "mount"]

logger = logging.getLogger(__name__)


@dataclass
class Request:
    """What ``__call__`` gets for an HTTP request (it pickles; no socket inside)."""

    method: str
    path: str
    route_prefix: str
    query_params: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def text(self) -> str:
        return self.body.decode()

    @property
    def subpath(self) -> str:
        """The path below the route prefix."""
        rest = self.path[len(self.route_prefix.rstrip("/")) :]
        return rest if rest.startswith("/") else "/" + rest


@dataclass
class HTTPResponse:
    """A reply with its own status, headers or content type."""

    body: Any = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (and anything with ``tolist``) as JSON can take them."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(value: Any) -> tuple[bytes, str]:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), "application/octet-stream"
    if isinstance(value, str):
        return value.encode(), "text/plain"
    return json.dumps(value, default=_plain).encode(), "application/json"


def to_response(value: Any) -> web.Response:
    if isinstance(value, HTTPResponse):
        body, ctype = _encode(value.body)
        return web.Response(
            body=body,
            status=value.status,
            headers=value.headers,
            content_type=value.content_type or ctype,
        )
    if value is None:
        return web.Response(status=204)
    body, ctype = _encode(value)
    return web.Response(body=body, content_type=ctype)


async def to_request(request: web.Request, prefix: str) -> Request:
    body = await request.read() if request.can_read_body else b""
    return Request(
        request.method,
        request.path,
        prefix,
        dict(request.query),
        dict(request.headers),
        body,
    )


def _error_response(e: BaseException) -> web.Response:
    if isinstance(e, BackPressureError):
        return web.Response(status=503, text=f"{e}\n")
    if isinstance(e, TaskError):
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return web.Response(status=500, text=f"{first}\n")
    return web.Response(status=500, text=f"{type(e).__name__}: {e}\n")


async def serve_request(
    request: web.Request, handle: DeploymentHandle, prefix: str
) -> web.StreamResponse:
    """Answer ``request`` with ``handle``'s ``__call__``."""
    router = handle.router()
    router.ensure_polling()
    req = await to_request(request, prefix)
    if "__call__" in router.info.get("stream_methods", ()):
        return await _stream(request, handle, req)
    try:
        value = await router.call("__call__", (req,), {})
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return _error_response(e)
    return to_response(value)


async def _stream(
    request: web.Request, handle: DeploymentHandle, req: Request
) -> web.StreamResponse:
    gen = handle.options(stream=True).remote(req)
    resp: web.StreamResponse | None = None
    try:
        async for item in gen:
            if resp is None:
                resp = web.StreamResponse()
                resp.content_type = _encode(item)[1]
                resp.enable_chunked_encoding()
                await resp.prepare(request)
            chunk = item if isinstance(item, bytes) else _encode(item)[0]
            await resp.write(chunk)
    except asyncio.CancelledError:
        gen.close()
        raise
    except Exception as e:
        gen.close()
        if resp is None:
            return _error_response(e)
        logger.warning("stream from %s failed midway: %r", handle.key, e)
        return resp
    if resp is None:
        return web.Response(status=204)
    await resp.write_eof()
    return resp


def _norm(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"a route prefix starts with '/', not {prefix!r}")
    return prefix.rstrip("/") or "/"


def mount(app: web.Application, prefix: str, handle: DeploymentHandle) -> None:
    """Serve ``handle`` under ``prefix`` in an aiohttp app of yours (before it starts).

    The app's process must have called ``ac.init``; requests are routed from
    this process straight to the replicas (no proxy hop).
    """
    prefix = _norm(prefix)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_request(request, handle, prefix)

    if prefix == "/":
        app.router.add_route("*", "/{tail:.*}", handler)
    else:
        app.router.add_route("*", prefix, handler)
        app.router.add_route("*", prefix + "/{tail:.*}", handler)


class HTTPProxy:
    """An aiohttp server inside an actor: routes requests by prefix to the apps' ingresses."""

    def __init__(self, controller: Any) -> None:
        self._controller = controller
        self._runner: web.AppRunner | None = None
        self._address: tuple[str, int] | None = None
        self._routes: list[tuple[str, DeploymentHandle]] = []
        self._epoch = -1
        self._poller: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0: any free port); the port. Idempotent."""
        if self._address is not None:
            if self._address[0] != host or port not in (0, self._address[1]):
                raise ValueError(
                    f"the proxy already listens on {self._address[0]}:{self._address[1]}"
                )
            return self._address[1]
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self._runner = runner
        bound = runner.addresses[0][1]
        self._address = (host, bound)
        await self._refresh()
        self._poller = asyncio.get_running_loop().create_task(self._poll_routes())
        return bound

    async def _refresh(self, wait: bool = False) -> None:
        snap = await self._controller.listen_routes.remote(self._epoch if wait else -2)
        routes = []
        for prefix, (key, dsnap) in snap["routes"].items():
            routes.append((_norm(prefix), DeploymentHandle(key, self._controller, dsnap)))
        routes.sort(key=lambda r: len(r[0]), reverse=True)
        self._routes = routes
        self._epoch = snap["epoch"]

    async def _poll_routes(self) -> None:
        while True:
            try:
                await self._refresh(wait=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the controller is gone: serve is shutting down
                logger.info("route updates stopped: %r", e)
                return

    def _match(self, path: str) -> tuple[str, DeploymentHandle] | None:
        for prefix, handle in self._routes:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return prefix, handle
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        found = self._match(request.path)
        if found is None:
            return web.Response(status=404, text=f"no application serves {request.path}\n")
        return await serve_request(request, found[1], found[0])

    async def ready(self) -> tuple[str, int] | None:
        return self._address

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
