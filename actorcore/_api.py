"""The public functions: ``init``, ``get``, ``put``, ``wait``, ``kill``, ...

``init``, ``shutdown`` and ``wait`` are dual-mode: called on a thread that runs
an event loop they return an awaitable (``await ac.init()``); elsewhere they
block. ``get`` only blocks, and refuses to on a loop's thread
(:class:`BlockingCallError`): ``await ref`` there instead.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import _global as G
from . import _protocol as P
from . import _values
from ._config import Config
from ._execution import current_task
from ._generator import ObjectRefGenerator
from ._ref import ObjectRef
from ._remote import ActorHandle
from ._rpc import next_rid
from .errors import BlockingCallError

__all__ = [
    "RuntimeContext",
    "as_completed",
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "memory_summary",
    "nodes",
    "put",
    "shutdown",
    "wait",
]

_init_lock = threading.Lock()
_atexit_registered = False


def _on_loop_thread() -> bool:
    return asyncio._get_running_loop() is not None


@dataclass(frozen=True)
class InitInfo:
    """What ``init()`` returns: where the node is."""

    address: tuple[str, int]
    node_id: str
    session: str
    session_dir: str
    embedded: bool
    dashboard_url: str | None = None  # None: no dashboard (include_dashboard=False)
    dashboard_token: str | None = None  # log in with it (or open dashboard_url + "/?token=...")
    metrics_export_port: int | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def _info(rt: Any) -> InitInfo:
    from . import _task_events

    _task_events.bind(rt)  # observability hook: read task_events from this runtime's config
    raw = rt.node.raw
    dash = {
        "dashboard_url": raw.get("dashboard_url"),
        "dashboard_token": raw.get("dashboard_token"),
    }
    if raw.get("cluster") and rt.role == "driver":  # the cluster's dashboard, on some node
        from ._obs._cluster import driver_dashboard

        dash = driver_dashboard(rt, dash)
    return InitInfo(
        rt.node.address,
        rt.node.node_id.hex(),
        rt.node.session,
        rt.node.session_dir,
        getattr(rt, "proc", None) is not None,
        dash["dashboard_url"],  # observability hook
        dash["dashboard_token"],
        raw.get("metrics_export_port"),
    )


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool | None = None,
    runtime_env: dict[str, Any] | None = None,
    **settings: Any,
) -> Any:
    """Start the runtime in this process (and a node for it, unless ``address`` names one).

    In a plain script it blocks until the node is up; on a running event loop,
    ``await ac.init()``.

    Args:
        address: None to start a node for this program; ``"auto"`` to attach to
            the node that ``actorcore start`` runs on this machine.
        num_cpus, num_gpus, resources: what this node offers (default: the
            machine's CPU count, no GPUs, no custom resources).
        object_store_memory: bytes of shared memory for large objects
            (default 30% of RAM, capped by /dev/shm).
        namespace: default namespace for named actors.
        runtime_env: the job's runtime environment (``working_dir``,
            ``py_modules``, ``env_vars``, ``excludes``): shipped to every node
            that runs this job's work; per task/actor ``runtime_env`` merges
            over it (``env_vars`` merged, other keys override).
        ignore_reinit_error: make a second ``init`` a no-op instead of an error.
        **settings: further :class:`Config` fields (e.g. ``inline_threshold``).

    Raises:
        RuntimeError: already initialized (and ``ignore_reinit_error`` is False).
        ValueError, TypeError: a bad ``runtime_env`` (checked before anything starts).
    """
    from . import _runtime_env

    env = _runtime_env.validate(runtime_env)
    kw = dict(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        object_store_memory=object_store_memory,
        log_to_driver=log_to_driver,
        **settings,
    )
    if env is not None:
        kw["_runtime_env"] = env
    if _on_loop_thread():
        return _init_async(address, namespace, ignore_reinit_error, kw)
    return _init_sync(address, namespace, ignore_reinit_error, kw)


async def _init_async(
    address: str | None, namespace: str | None, ignore: bool, kw: dict[str, Any]
) -> InitInfo:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _init_sync, address, namespace, ignore, kw)


def _init_sync(
    address: str | None, namespace: str | None, ignore: bool, kw: dict[str, Any]
) -> InitInfo:
    global _atexit_registered
    from ._driver import DriverRuntime

    with _init_lock:
        rt = G.runtime
        if rt is not None:
            if rt.role == "worker" or ignore:
                return _info(rt)
            raise RuntimeError(
                "actorcore is already initialized; call ac.shutdown() first, or pass "
                "ignore_reinit_error=True"
            )
        env = kw.pop("_runtime_env", None)
        config = Config.from_env(**kw)
        rt = DriverRuntime.start(config, address, namespace)
        if env is not None:
            from . import _runtime_env

            try:
                _runtime_env.set_job_env(rt, env)  # packs and uploads (blocking, not on a loop)
            except BaseException:
                rt.stop()
                raise
        G.runtime = rt
        if not _atexit_registered:
            atexit.register(_shutdown_sync)
            _atexit_registered = True
        return _info(rt)


def is_initialized() -> bool:
    return G.runtime is not None


def shutdown() -> Any:
    """Stop the runtime; with an embedded node, stop the node and its workers too.

    Blocks in a plain script; ``await ac.shutdown()`` on a running loop.
    """
    if _on_loop_thread():
        return _shutdown_async()
    _shutdown_sync()
    return None


async def _shutdown_async() -> None:
    await asyncio.get_running_loop().run_in_executor(None, _shutdown_sync)


def _shutdown_sync() -> None:
    with _init_lock:
        rt = G.runtime
        if rt is None or rt.role == "worker":
            return
        G.runtime = None
        rt.stop()  # type: ignore[attr-defined]  # a DriverRuntime (workers returned above)


def get(refs: Any, *, timeout: float | None = None) -> Any:
    """The value of a ref, or the values of a list of refs, blocking until ready.

    Raises:
        BlockingCallError: called on a thread running an event loop (``await ref`` there).
        GetTimeoutError: ``timeout`` seconds passed first.
        TaskError: the task raised (also an instance of the user's exception class).
    """
    if _on_loop_thread():
        raise BlockingCallError(
            "ac.get() blocks, and this thread is running an event loop: use `await ref` "
            "(or `await asyncio.gather(*refs)`) instead"
        )
    return _values.get(G.require(), refs, timeout)


def put(value: Any) -> ObjectRef:
    """Store ``value`` and return a ref to it (owned by this process); never blocks on a loop."""
    return G.require().put(value)


def wait(
    refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> Any:
    """Split ``refs`` into ``(ready, not_ready)`` once ``num_returns`` are ready or time is up.

    Blocks in a plain script; ``await ac.wait(...)`` on a running loop.

    Args:
        fetch_local: True (the default): a ref counts as ready once its value
            can be read on this node (a value on another node is pulled here
            first). False: as soon as the value exists anywhere.

    Raises:
        TypeError: ``refs`` is not a list of ObjectRefs, or ``fetch_local`` not a bool.
        ValueError: a ref given twice, or ``num_returns`` out of range.
    """
    rt = G.require()
    if _on_loop_thread():
        return _values.wait_async(rt, refs, num_returns, timeout, fetch_local)
    return _values.wait(rt, refs, num_returns, timeout, fetch_local)


def as_completed(refs: Sequence[ObjectRef]) -> AsyncIterator[ObjectRef]:
    """``async for ref in ac.as_completed(refs)``: each ref as soon as it is ready."""
    return _values.as_completed(G.require(), refs)


def cancel(
    ref: ObjectRef | ObjectRefGenerator, *, force: bool = False, recursive: bool = True
) -> None:
    """Cancel the task (or async actor call) producing ``ref``.

    ``ref`` may be an ObjectRefGenerator: its streaming call stops at its next
    item (an async generator at once), and the generator ends with
    TaskCancelledError after the items already delivered.

    A queued task or actor call is dropped; a running async one is cancelled;
    a running sync task gets TaskCancelledError raised where it blocks
    (``time.sleep``, a socket or pipe read, a lock, event, queue or subprocess
    wait) or at its next Python bytecode, and its ``finally`` runs; a C call
    that never returns to Python (a long numpy operation) finishes first.
    ``force=True`` kills the task's worker at once (it is replaced; one that cannot
    end itself, its loop starved by a C call holding the GIL, is killed by its node
    daemon half a second later). A running
    call of a sync actor is not interrupted (as in Ray: actors have state;
    ``force`` too is ignored for actor calls). Getting a cancelled ``ref``
    raises TaskCancelledError.
    With ``recursive`` (the default) the tasks that the cancelled task
    submitted are cancelled too, and theirs in turn.
    """
    if isinstance(ref, ObjectRefGenerator):
        ref = ref.completed()
    if not isinstance(ref, ObjectRef):
        raise TypeError(
            f"cancel() takes an ObjectRef or ObjectRefGenerator, not {type(ref).__name__}"
        )
    rt = G.require()
    rt.submitter.cancel(ref.id, force, bool(recursive))


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """End an actor now; calls in flight fail with ActorDiedError.

    With ``no_restart=False`` the actor restarts if its ``max_restarts`` allows.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, not {type(actor).__name__}")
    G.require().actors.kill(actor.id, no_restart)


def _daemon_call(msg: Any) -> Any:
    rt = G.require()
    if rt.on_loop_thread():
        raise BlockingCallError("this call blocks; it cannot be made on the runtime's loop thread")
    return rt.call_daemon(msg)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the named actor.

    Raises:
        ValueError: no live actor has that name in that namespace.
    """
    rt = G.require()
    info = _daemon_call(P.GetNamedActorMsg(next_rid(), name, namespace or rt.namespace))
    owner = tuple(info["owner"]) if info["owner"] else rt.address
    return ActorHandle(
        bytes(info["actor_id"]),
        info["class_name"],
        dict(info["methods"]),
        owner,
        int(info["max_task_retries"]),
    )


def nodes() -> list[dict[str, Any]]:
    """The nodes of the cluster, with their resources."""
    return list(_daemon_call(P.ClusterInfoMsg(next_rid(), "nodes")))


def cluster_resources() -> dict[str, float]:
    """Total resources of the cluster."""
    return dict(_daemon_call(P.ClusterInfoMsg(next_rid(), "total")))


def available_resources() -> dict[str, float]:
    """Resources not held by running work right now."""
    return dict(_daemon_call(P.ClusterInfoMsg(next_rid(), "available")))


def memory_summary() -> dict[str, Any]:
    """The object store: capacity, use, and every object with size, owner, spilled or not."""
    return {
        "store": _daemon_call(P.ListStateMsg(next_rid(), "store")),
        "objects": _daemon_call(P.ListStateMsg(next_rid(), "objects")),
    }


class RuntimeContext:
    """Where the calling code runs: job, node, worker, task, actor."""

    def __init__(self) -> None:
        self._rt = G.require()

    def get_job_id(self) -> str:
        return bytes(self._rt.job_id or b"").hex()

    def get_node_id(self) -> str:
        return self._rt.node.node_id.hex()

    def get_worker_id(self) -> str:
        return self._rt.my_id.hex()

    def get_task_id(self) -> str | None:
        ctx = current_task.get()
        return ctx.task_id.hex() if ctx is not None else None

    def get_actor_id(self) -> str | None:
        ctx = current_task.get()
        return ctx.actor_id.hex() if ctx is not None and ctx.actor_id else None

    @property
    def namespace(self) -> str:
        return self._rt.namespace

    @property
    def worker_mode(self) -> str:
        return self._rt.role

    @property
    def runtime_env(self) -> dict[str, Any]:
        """The runtime env of this process's work: env_vars, and packages by hash."""
        env = self._rt.job_runtime_env or {}
        return {k: v for k, v in env.items() if k != "sources"}

    def get_runtime_env_string(self) -> str:
        """:attr:`runtime_env` as JSON (Ray's spelling)."""
        import json

        return json.dumps(self.runtime_env, sort_keys=True)

    def get(self) -> dict[str, Any]:
        return {
            "job_id": self.get_job_id(),
            "node_id": self.get_node_id(),
            "worker_id": self.get_worker_id(),
            "task_id": self.get_task_id(),
            "actor_id": self.get_actor_id(),
            "namespace": self.namespace,
        }


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext()
