"""The serve controller: a named, detached actor that owns the deployments.

Why an actor: its state (what should run, which replicas exist) must outlive
the driver that called ``serve.run`` and be reachable from every process
(routers in other deployments, HTTP proxies, ``actorcore serve status``); a
named detached actor gives exactly that on the public API, and its mailbox
serializes changes without locks. It carries out what each
:class:`DeploymentState` decides, polls replicas for their load every
``CONTROL_PERIOD_S`` and runs health checks. Routers learn of replica
changes by long polls (``listen``), proxies of route changes the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import actorcore as ac
from actorcore.errors import ActorDiedError

from ._config import DeploymentConfig
from ._replica import Replica
from ._state import (
    DeploymentState,
    DeploymentStatusKind,
    DrainReplica,
    Instruction,
    Publish,
    ReplicaState,
    StartReplica,
    StopReplica,
)

__all__ = ["CONTROLLER_NAME", "NAMESPACE", "ServeController"]

logger = logging.getLogger(__name__)

CONTROLLER_NAME = "SERVE_CONTROLLER"
NAMESPACE = "serve"
CONTROL_PERIOD_S = 0.1
LISTEN_TIMEOUT_S = 10.0
START_TIMEOUT_S = 120.0
METRICS_TIMEOUT_S = 5.0
DRAIN_QUIET_S = 0.05


@dataclass
class DeploymentSpec:
    """What the driver sends for one deployment (the class as cloudpickled bytes)."""

    name: str
    cls_blob: bytes
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    config: DeploymentConfig
    version: str
    stream_methods: list[str]


class ServeController:
    """Keeps every deployment's replicas at their target; answers routers and proxies."""

    def __init__(self) -> None:
        self.states: dict[str, DeploymentState] = {}
        self.specs: dict[str, DeploymentSpec] = {}
        self.handles: dict[str, Any] = {}
        self.apps: dict[str, dict[str, Any]] = {}
        self.proxies: dict[str, dict[str, Any]] = {}
        self.epochs: dict[str, int] = {}
        self._epoch = 0
        self._routes_epoch = 0
        self._changed: asyncio.Event | None = None
        self._health_due: dict[str, float] = {}
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # --- plumbing ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _notify(self) -> None:
        old = self._changed
        self._changed = asyncio.Event()
        if old is not None:
            old.set()

    async def _wait_change(self, timeout: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._control_loop())

    async def _control_loop(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("serve controller tick failed")
            await asyncio.sleep(CONTROL_PERIOD_S)

    # --- carrying out instructions --------------------------------------------------------

    def _run(self, key: str, instrs: list[Instruction]) -> None:
        for ins in instrs:
            if isinstance(ins, StartReplica):
                self._start_replica(key, ins.rid)
            elif isinstance(ins, DrainReplica):
                self._spawn(self._drain(key, ins.rid))
            elif isinstance(ins, StopReplica):
                self._stop(ins.rid)
            elif isinstance(ins, Publish):
                self._epoch += 1
                self.epochs[key] = self._epoch
                self._notify()

    def _start_replica(self, key: str, rid: str) -> None:
        spec = self.specs[key]
        opts = {"num_cpus": 1, **spec.config.actor_options}
        opts.setdefault("scheduling_strategy", "SPREAD")
        opts.setdefault("max_concurrency", max(1000, spec.config.max_ongoing_requests + 100))
        h = (
            ac.remote(Replica)
            .options(**opts)
            .remote(key, spec.cls_blob, spec.args, spec.kwargs, spec.config.max_ongoing_requests)
        )
        self.handles[rid] = h
        self._spawn(self._await_ready(key, rid, h))

    async def _await_ready(self, key: str, rid: str, h: Any) -> None:
        try:
            info = await asyncio.wait_for(h.ready(), START_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            st = self.states.get(key)
            if st is not None:
                self._run(key, st.start_failed(rid, _why(e)))
            else:
                self._stop(rid)
            return
        st = self.states.get(key)
        if st is None:
            self._stop(rid)
            return
        self._health_due[rid] = time.monotonic() + st.config.health_check_period_s
        self._run(key, st.started(rid, info))

    async def _drain(self, key: str, rid: str) -> None:
        h = self.handles.get(rid)
        st = self.states.get(key)
        if h is not None and st is not None:
            try:
                await asyncio.wait_for(
                    h.drain(DRAIN_QUIET_S), st.config.graceful_shutdown_timeout_s
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.info("replica %s did not drain cleanly: %r", rid, e)
        self._stop(rid)
        st = self.states.get(key)
        if st is not None:
            self._run(key, st.drained(rid))
            self._forget_if_gone(key)

    def _stop(self, rid: str) -> None:
        h = self.handles.pop(rid, None)
        self._health_due.pop(rid, None)
        if h is not None:
            try:
                ac.kill(h)
            except Exception as e:  # already gone
                logger.debug("kill %s: %r", rid, e)

    def _forget_if_gone(self, key: str) -> None:
        st = self.states.get(key)
        if st is not None and st.deleting and not st.replicas:
            del self.states[key]
            self.specs.pop(key, None)
            self.epochs[key] = self._epoch = self._epoch + 1
            self._notify()

    # --- the periodic look ---------------------------------------------------------------

    async def _tick(self) -> None:
        now = time.monotonic()
        states = list(self.states.items())
        # all at once: one stuck replica must not hold up the other deployments
        loads = await asyncio.gather(*[self._poll_load(key, st) for key, st in states])
        for (key, st), ongoing in zip(states, loads, strict=True):
            if self.states.get(key) is st:
                self._run(key, st.tick(time.monotonic(), ongoing))
                self._check_health(key, st, now)
                self._forget_if_gone(key)

    async def _poll_load(self, key: str, st: DeploymentState) -> dict[str, int]:
        rids = [
            r.rid
            for r in st.replicas.values()
            if r.state in (ReplicaState.RUNNING, ReplicaState.DRAINING) and r.rid in self.handles
        ]
        calls = [asyncio.wait_for(self.handles[rid].metrics(), METRICS_TIMEOUT_S) for rid in rids]
        results = await asyncio.gather(*calls, return_exceptions=True)
        ongoing: dict[str, int] = {}
        for rid, res in zip(rids, results, strict=True):
            if isinstance(res, ActorDiedError):
                self._run(key, st.died(rid, _why(res)))
            elif isinstance(res, BaseException):
                logger.debug("metrics of %s: %r", rid, res)
            else:
                ongoing[rid] = int(res[0])
        return ongoing

    def _check_health(self, key: str, st: DeploymentState, now: float) -> None:
        for r in list(st.replicas.values()):
            due = self._health_due.get(r.rid)
            if r.state is ReplicaState.RUNNING and due is not None and now >= due:
                if r.rid not in self._busy:
                    self._busy.add(r.rid)
                    self._spawn(self._health_check(key, r.rid))

    async def _health_check(self, key: str, rid: str) -> None:
        try:
            st = self.states.get(key)
            h = self.handles.get(rid)
            if st is None or h is None:
                return
            try:
                await asyncio.wait_for(h.check_health(), st.config.health_check_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.states.get(key) is st:
                    self._run(key, st.died(rid, f"health check failed: {_why(e)}"))
                return
            if rid in self._health_due:
                self._health_due[rid] = time.monotonic() + st.config.health_check_period_s
        finally:
            self._busy.discard(rid)

    # --- the API the driver, routers and proxies call -------------------------------------

    async def deploy_app(
        self, name: str, route_prefix: str | None, specs: list[DeploymentSpec], ingress: str
    ) -> None:
        """Make app ``name`` run ``specs`` (new deployments start; changed ones roll over)."""
        await self.ensure_running()
        if route_prefix is not None:
            for other, app in self.apps.items():
                if other != name and app["route_prefix"] == route_prefix:
                    raise ValueError(f"route prefix {route_prefix!r} is taken by app {other!r}")
        now = time.monotonic()
        keys = []
        for spec in specs:
            key = f"{name}/{spec.name}"
            keys.append(key)
            self.specs[key] = spec
            st = self.states.get(key)
            if st is None or st.deleting:
                if st is not None:  # being deleted: replace it outright
                    for rid in list(st.replicas):
                        self._stop(rid)
                st = self.states[key] = DeploymentState(spec.name, spec.version, spec.config, now)
                self._run(key, st.reconcile())
            else:
                self._run(key, st.set_target(spec.version, spec.config))
        old = self.apps.get(name, {}).get("deployments", [])
        for key in old:
            if key not in keys:
                self._delete(key)
        self.apps[name] = {
            "route_prefix": route_prefix,
            "ingress": f"{name}/{ingress}",
            "deployments": keys,
        }
        self._routes_changed()

    def _routes_changed(self) -> None:
        self._routes_epoch += 1
        self._notify()

    def _delete(self, key: str) -> None:
        st = self.states.get(key)
        if st is not None:
            self._run(key, st.delete())
            self._forget_if_gone(key)

    async def delete_app(self, name: str) -> None:
        app = self.apps.pop(name, None)
        if app is None:
            return
        for key in app["deployments"]:
            self._delete(key)
        self._routes_changed()

    def _snapshot(self, key: str) -> dict[str, Any] | None:
        st = self.states.get(key)
        spec = self.specs.get(key)
        if st is None or spec is None or st.deleting:
            return None
        c = spec.config
        return {
            "epoch": self.epochs.get(key, 0),
            "replicas": {rid: self.handles[rid] for rid in st.routable() if rid in self.handles},
            "info": {
                "max_ongoing_requests": c.max_ongoing_requests,
                "queue_timeout_s": c.queue_timeout_s,
                "max_request_retries": c.max_request_retries,
                "stream_methods": list(spec.stream_methods),
            },
        }

    async def listen(self, key: str, epoch: int) -> dict[str, Any] | None:
        """The replicas of ``key`` once they differ from ``epoch`` (or after a while anyway)."""
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while self.epochs.get(key, 0) == epoch and key in self.states:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self._wait_change(left)
        return self._snapshot(key)

    def _routes(self) -> dict[str, Any]:
        routes = {}
        for app in self.apps.values():
            if app["route_prefix"] is not None:
                routes[app["route_prefix"]] = (app["ingress"], self._snapshot(app["ingress"]))
        return {"epoch": self._routes_epoch, "routes": routes}

    async def listen_routes(self, epoch: int) -> dict[str, Any]:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while self._routes_epoch == epoch and deadline > time.monotonic():
            await self._wait_change(deadline - time.monotonic())
        return self._routes()

    async def handle_info(self, app: str, deployment: str | None) -> dict[str, Any]:
        """Key and replica snapshot of a deployment (the ingress when ``deployment`` is None)."""
        a = self.apps.get(app)
        if a is None:
            raise KeyError(f"no serve application named {app!r} (running: {sorted(self.apps)})")
        key = a["ingress"] if deployment is None else f"{app}/{deployment}"
        if key not in a["deployments"]:
            raise KeyError(f"application {app!r} has no deployment {deployment!r}")
        return {"key": key, "snapshot": self._snapshot(key)}

    async def app_status(self, name: str, wait_s: float = 0.0) -> str:
        """The app's status, waiting up to ``wait_s`` for it to leave UPDATING."""
        deadline = time.monotonic() + wait_s
        while True:
            status = self._app_status(name)
            left = deadline - time.monotonic()
            if status not in ("UPDATING", "UNHEALTHY") or left <= 0:
                return status
            await self._wait_change(min(left, 0.5))

    def _app_status(self, name: str) -> str:
        app = self.apps.get(name)
        if app is None:
            return "NOT_STARTED"
        kinds = [self.states[k].status() for k in app["deployments"] if k in self.states]
        if any(k is DeploymentStatusKind.DEPLOY_FAILED for k in kinds):
            return "DEPLOY_FAILED"
        if all(k is DeploymentStatusKind.HEALTHY for k in kinds):
            return "RUNNING"
        if any(k is DeploymentStatusKind.UNHEALTHY for k in kinds):
            return "UNHEALTHY"
        return "UPDATING"

    async def status(self) -> dict[str, Any]:
        apps = {}
        for name, app in self.apps.items():
            deps = {}
            for key in app["deployments"]:
                st = self.states.get(key)
                if st is None:
                    continue
                deps[st.name] = {
                    "status": st.status().value,
                    "target_replicas": st.target,
                    "message": st.message,
                    "replicas": [
                        {
                            "replica_id": r.rid,
                            "state": r.state.value,
                            "version": r.version[:12],
                            "pid": r.info.get("pid"),
                            "node_id": r.info.get("node_id"),
                            "ongoing": r.ongoing,
                        }
                        for r in st.replicas.values()
                    ],
                }
            apps[name] = {
                "status": self._app_status(name),
                "route_prefix": app["route_prefix"],
                "deployments": deps,
            }
        proxies = {n: {"host": p["host"], "port": p["port"]} for n, p in self.proxies.items()}
        return {"applications": apps, "proxies": proxies}

    async def register_proxy(self, node_id: str, proxy: Any, host: str, port: int) -> None:
        self.proxies[node_id] = {"handle": proxy, "host": host, "port": port}

    async def shutdown(self) -> list[Any]:
        """Stop every replica now; returns the proxies for the caller to stop."""
        for name in list(self.apps):
            await self.delete_app(name)
        for rid in list(self.handles):
            self._stop(rid)
        self.states.clear()
        for t in list(self._tasks):
            t.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._notify()
        return [p["handle"] for p in self.proxies.values()]


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
