"""``serve.run``, ``serve.start``, ``serve.status``, ``serve.delete``, ``serve.shutdown``.

Each blocks in a plain script; on a thread running an event loop it returns
an awaitable instead (``handle = await serve.run(app)``), doing the blocking
part on a worker thread so the loop keeps running.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

import actorcore as ac
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ._controller import CONTROLLER_NAME, NAMESPACE, DeploymentSpec, ServeController
from ._deployment import Application, substitute
from ._handle import DeploymentHandle, hashing
from ._http import HTTPProxy
from .errors import DeploymentFailedError, ServeError

__all__ = [
    "ApplicationStatus",
    "DeploymentStatus",
    "ReplicaStatus",
    "ServeStatus",
    "delete",
    "get_app_handle",
    "get_deployment_handle",
    "run",
    "shutdown",
    "start",
    "status",
]


def _dual(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if asyncio._get_running_loop() is None:
        return fn(*args, **kwargs)

    async def off_loop() -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: fn(*args, **kwargs))

    return off_loop()


def _controller(create: bool = True) -> Any:
    try:
        return ac.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        if not create:
            return None
    h = (
        ac.remote(ServeController)
        .options(
            name=CONTROLLER_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=10000,
        )
        .remote()
    )
    ac.get(h.ensure_running.remote())
    return h


# --- run -----------------------------------------------------------------------------------


def _version(cls_blob: bytes, app: Application) -> str:
    token = hashing.set(True)
    try:
        c = app.deployment.config
        blob = cloudpickle.dumps((app.args, app.kwargs, c.max_ongoing_requests, c.actor_options))
    finally:
        hashing.reset(token)
    return hashlib.blake2b(cls_blob + blob, digest_size=16).hexdigest()


def _stream_methods(cls: type) -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(cls)
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    ]


def _specs(app: Application, name: str, controller: Any) -> list[DeploymentSpec]:
    """One spec per deployment of the tree, children first, handles in place of children."""
    handles: dict[int, DeploymentHandle] = {}
    specs: dict[str, DeploymentSpec] = {}
    for node in app.walk():
        d = node.deployment
        spec_args = tuple(substitute(a, handles) for a in node.args)
        spec_kwargs = {k: substitute(v, handles) for k, v in node.kwargs.items()}
        bound = Application(d, spec_args, spec_kwargs)
        cls_blob = cloudpickle.dumps(d.func_or_class)
        spec = DeploymentSpec(
            d.name,
            cls_blob,
            spec_args,
            spec_kwargs,
            d.config,
            _version(cls_blob, bound),
            _stream_methods(d.func_or_class),
        )
        if d.name in specs and specs[d.name].version != spec.version:
            raise ValueError(
                f"two different deployments are named {d.name!r} in app {name!r}: "
                f"give one another name with .options(name=...)"
            )
        specs[d.name] = spec
        handles[id(node)] = DeploymentHandle(f"{name}/{d.name}", controller)
    return list(specs.values())


def _run(
    app: Application, name: str, route_prefix: str | None, timeout_s: float
) -> DeploymentHandle:
    if not isinstance(app, Application):
        raise TypeError(
            f"serve.run takes an app made with Deployment.bind(...), not {type(app).__name__}"
        )
    ac.init(ignore_reinit_error=True)
    controller = _controller()
    specs = _specs(app, name, controller)
    ingress = app.deployment.name
    ac.get(controller.deploy_app.remote(name, route_prefix, specs, ingress))
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        st = ac.get(controller.app_status.remote(name, max(min(left, 5.0), 0.0)))
        if st == "RUNNING":
            break
        if st == "DEPLOY_FAILED":
            raise DeploymentFailedError(f"app {name!r} failed to deploy:\n{_messages(name)}")
        if left <= 0:
            raise ServeError(
                f"app {name!r} was not running after {timeout_s} s ({st}):\n{_messages(name)}"
            )
    return _get_handle(name, None)


def _messages(name: str) -> str:
    app = _status().applications.get(name)
    if app is None:
        return ""
    return "\n".join(f"  {d}: {s.status} {s.message}" for d, s in app.deployments.items())


def run(
    app: Application,
    *,
    name: str = "default",
    route_prefix: str | None = "/",
    timeout_s: float = 120.0,
) -> Any:
    """Deploy ``app`` (or update it in place, rolling replicas over) and return its handle.

    Blocks until every deployment runs its target replicas (await it on a loop).

    Raises:
        DeploymentFailedError: replicas kept failing to start.
        ServeError: not running after ``timeout_s``.
        ValueError: ``route_prefix`` is taken by another app.
    """
    return _dual(_run, app, name, route_prefix, timeout_s)


def _get_handle(app_name: str, deployment: str | None) -> DeploymentHandle:
    controller = _controller(create=False)
    if controller is None:
        raise ServeError("serve is not running: serve.run(...) an app first")
    info = ac.get(controller.handle_info.remote(app_name, deployment))
    return DeploymentHandle(info["key"], controller, info["snapshot"])


def get_app_handle(name: str = "default") -> Any:
    """A handle to the ingress deployment of app ``name``."""
    return _dual(_get_handle, name, None)


def get_deployment_handle(deployment_name: str, app_name: str = "default") -> Any:
    """A handle to one deployment of an app (from a driver or from inside a replica)."""
    return _dual(_get_handle, app_name, deployment_name)


def _delete(name: str) -> None:
    controller = _controller(create=False)
    if controller is not None:
        ac.get(controller.delete_app.remote(name))


def delete(name: str) -> Any:
    """Remove app ``name``: its replicas drain and stop."""
    return _dual(_delete, name)


# --- HTTP ----------------------------------------------------------------------------------


def _start(http_host: str, http_port: int, location: str) -> dict[str, int]:
    ac.init(ignore_reinit_error=True)
    if location not in ("EveryNode", "HeadOnly"):
        raise ValueError(f"location must be 'EveryNode' or 'HeadOnly', not {location!r}")
    controller = _controller()
    nodes = [n for n in ac.nodes() if n.get("Alive", n.get("alive", True))]
    if location == "HeadOnly":
        here = ac.get_runtime_context().get_node_id()
        nodes = [n for n in nodes if _node_id(n) == here] or nodes[:1]
    ports: dict[str, int] = {}
    for n in nodes:
        node_id = _node_id(n)
        proxy = (
            ac.remote(HTTPProxy)
            .options(
                name=f"SERVE_PROXY:{node_id}",
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=100000,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id),
            )
            .remote(controller)
        )
        port = ac.get(proxy.start.remote(http_host, http_port))
        ac.get(controller.register_proxy.remote(node_id, proxy, http_host, port))
        ports[node_id] = port
    return ports


def _node_id(n: dict[str, Any]) -> str:
    nid = n.get("node_id") or n.get("NodeID") or ""
    return nid.hex() if isinstance(nid, bytes) else str(nid)


def start(
    *, http_host: str = "127.0.0.1", http_port: int = 8000, location: str = "EveryNode"
) -> Any:
    """Start serve's controller and an HTTP proxy on every node (or only this one: "HeadOnly").

    ``http_port=0`` picks a free port. Returns ``{node_id: port}``.
    """
    return _dual(_start, http_host, http_port, location)


# --- status and shutdown -------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    state: str
    version: str
    pid: int | None
    node_id: str | None
    ongoing: int


@dataclass(frozen=True)
class DeploymentStatus:
    status: str
    target_replicas: int
    message: str
    replicas: list[ReplicaStatus]


@dataclass(frozen=True)
class ApplicationStatus:
    status: str
    route_prefix: str | None
    deployments: dict[str, DeploymentStatus]


@dataclass(frozen=True)
class ServeStatus:
    applications: dict[str, ApplicationStatus]
    proxies: dict[str, dict[str, Any]]


def _status() -> ServeStatus:
    controller = _controller(create=False)
    if controller is None:
        return ServeStatus({}, {})
    raw = ac.get(controller.status.remote())
    apps = {}
    for name, a in raw["applications"].items():
        deps = {
            d: DeploymentStatus(
                s["status"],
                s["target_replicas"],
                s["message"],
                [ReplicaStatus(**r) for r in s["replicas"]],
            )
            for d, s in a["deployments"].items()
        }
        apps[name] = ApplicationStatus(a["status"], a["route_prefix"], deps)
    return ServeStatus(apps, raw["proxies"])


def status() -> Any:
    """Applications, deployments and replicas with their states (a :class:`ServeStatus`)."""
    return _dual(_status)


def _shutdown() -> None:
    if not ac.is_initialized():
        return
    controller = _controller(create=False)
    if controller is None:
        return
    proxies = ac.get(controller.shutdown.remote())
    for p in proxies:
        try:
            ac.get(p.stop.remote(), timeout=10)
        except Exception:  # a proxy that is already gone
            pass
        ac.kill(p)
    ac.kill(controller)


def shutdown() -> Any:
    """Stop every app, the proxies and the controller."""
    return _dual(_shutdown)
