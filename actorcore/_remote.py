"""``@ac.remote``: remote functions, actor classes, actor handles and methods.

Options are checked once, where they are given, with messages that say what
is allowed; a mistake fails at the call site, not in a worker.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import weakref
from collections.abc import Callable
from typing import Any

from . import _global as G
from . import _runtime_env as RE
from ._args import FunctionDescriptor
from ._config import Config
from ._ids import new_id
from ._serialization import current_deserialization, dumps_function, nested_collector
from .errors import MessageTooLargeError

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "RemoteFunction", "method", "remote"]

_TASK_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "memory",
    "max_retries",
    "retry_exceptions",
    "num_returns",
    "name",
    "scheduling_strategy",
    "runtime_env",
    "_generator_backpressure_num_objects",
    "generator_backpressure",
}
_BACKPRESSURE_OPTIONS = ("generator_backpressure", "_generator_backpressure_num_objects")
_ACTOR_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "memory",
    "name",
    "namespace",
    "lifetime",
    "max_restarts",
    "max_task_retries",
    "max_concurrency",
    "get_if_exists",
    "scheduling_strategy",
    "runtime_env",
}


def _check_options(opts: dict[str, Any], allowed: set[str], what: str) -> dict[str, Any]:
    unknown = set(opts) - allowed
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for {what}; valid options are {sorted(allowed)}"
        )
    for key in ("num_cpus", "num_gpus", "memory"):
        v = opts.get(key)
        if v is not None and (
            not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v < math.inf
        ):
            raise ValueError(f"{key} must be a finite number >= 0, not {v!r}")
    res = opts.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError(
                f"resources must be a dict of name -> quantity, not {type(res).__name__}"
            )
        for k, v in res.items():
            if k in ("CPU", "GPU"):
                raise ValueError(f"use num_cpus/num_gpus instead of resources[{k!r}]")
            if not isinstance(v, int | float) or not 0 <= v < math.inf:
                raise ValueError(f"resources[{k!r}] must be a finite number >= 0, not {v!r}")
    if "runtime_env" in opts:
        opts["runtime_env"] = RE.validate(opts["runtime_env"])
    stream_of(opts)  # checks num_returns and the back-pressure options
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        v = opts.get(key)
        if v is not None and (not isinstance(v, int) or v < -1):
            raise ValueError(f"{key} must be an int >= -1 (-1 = forever), not {v!r}")
    mc = opts.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or mc < 1):
        raise ValueError(f"max_concurrency must be an int >= 1, not {mc!r}")
    lifetime = opts.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', not {lifetime!r}")
    return opts


def stream_of(opts: dict[str, Any]) -> int:
    """0 for a plain call; for ``num_returns="streaming"``, its back-pressure + 1.

    Raises:
        ValueError: a bad ``num_returns`` or back-pressure option.
    """
    n = opts.get("num_returns")
    if n == "dynamic":
        raise ValueError(
            "num_returns='dynamic' is not supported; use num_returns='streaming', "
            "which returns an ObjectRefGenerator at once"
        )
    streaming = n == "streaming"
    if n is not None and not streaming and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"num_returns must be an int >= 1 or 'streaming', not {n!r}")
    bp = 0
    for key in _BACKPRESSURE_OPTIONS:
        v = opts.get(key)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < -1:
            raise ValueError(f"{key} must be an int >= 1 (0 or -1: no back-pressure), not {v!r}")
        if not streaming:
            raise ValueError(f"{key} applies only with num_returns='streaming'")
        bp = max(v, 0)
    return bp + 1 if streaming else 0


def _placed(shape: dict[str, float], strategy: Any) -> dict[str, float]:
    """The shape a scheduling strategy turns ``shape`` into."""
    from actorcore.scheduler import _resources as R
    from actorcore.scheduler import bundle_shape, node_affinity_shape

    from .util.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        PlacementGroupSchedulingStrategy,
    )

    if strategy is None or strategy == "DEFAULT":
        return shape
    if strategy == "SPREAD":  # a hint a single node ignores; a cluster's placer spreads it
        return {**shape, R.SPREAD_KEY: R.HINT_MARK}
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        pg = strategy.placement_group
        index = strategy.placement_group_bundle_index
        if not -1 <= index < pg.bundle_count:
            raise ValueError(
                f"bundle index {index} is out of range for {pg.bundle_count} bundle(s)"
            )
        return bundle_shape(shape, pg.id.hex(), index)
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        if strategy.soft:  # that node if it has room now, else the default policy
            node_affinity_shape(shape, strategy.node_id)  # (checks the id)
            key = R.NODE_AFFINITY_SOFT_PREFIX + strategy.node_id.lower()
            return {**shape, key: R.HINT_MARK}
        return node_affinity_shape(shape, strategy.node_id)  # the node checks it exists
    raise ValueError(
        f"unknown scheduling_strategy {strategy!r}: use 'DEFAULT', 'SPREAD', or one of "
        f"actorcore.util.scheduling_strategies"
    )


def _shape(opts: dict[str, Any], default_cpus: float) -> dict[str, float]:
    shape: dict[str, float] = {}
    cpus = opts.get("num_cpus")
    cpus = default_cpus if cpus is None else cpus
    if cpus:
        shape["CPU"] = float(cpus)
    if opts.get("num_gpus"):
        shape["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        shape["memory"] = float(opts["memory"])
    for k, v in (opts.get("resources") or {}).items():
        if v:
            shape[k] = float(v)
    return _placed(shape, opts.get("scheduling_strategy"))


def _with_env(rt: Any, shape: dict[str, float], env: Any) -> tuple[dict[str, float], Any]:
    """``shape`` asking for the runtime env of this call (the job's, merged with
    ``env``), and that env's wire spec (None: the default env, ``shape`` as is)."""
    if env is None and rt.job_runtime_env is None:
        return shape, None
    found = RE.shape_key(rt, env)
    if found is None:
        return shape, None
    return {**shape, found[0]: RE.MARK}, found[1]


def _check_export_size(name: str, blob: bytes) -> None:
    """Refuse at the call site a function or class too large for a message."""
    rt = G.runtime
    limit = (rt.config.max_header_bytes if rt is not None else Config().max_header_bytes) // 2
    if len(blob) > limit:
        raise MessageTooLargeError(
            f"{name} pickles to {len(blob)} bytes, over the limit of {limit} (half of "
            f"max_header_bytes): it probably captures large data; pass that with ac.put() "
            f"or as an argument instead, or raise max_header_bytes in ac.init()"
        )


class _Export:
    """A function or class pickled once, by value, and named by its hash."""

    __slots__ = ("_desc", "obj")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self._desc: FunctionDescriptor | None = None

    def descriptor(self, name: str) -> FunctionDescriptor:
        d = self._desc
        if d is None:
            blob = dumps_function(self.obj)
            _check_export_size(name, blob)
            fn_id = hashlib.blake2b(blob, digest_size=16).digest()
            d = self._desc = FunctionDescriptor(
                fn_id, blob, name, inspect.iscoroutinefunction(self.obj)
            )
        return d


class RemoteFunction:
    """A function made remote with ``@ac.remote``; call ``f.remote(...)``."""

    def __init__(
        self, fn: Callable[..., Any], options: dict[str, Any], export: _Export | None = None
    ) -> None:
        self._fn = fn
        self._options = _check_options(dict(options), _TASK_OPTIONS, f"task {fn.__qualname__}")
        self._export = export or _Export(fn)
        self._name = options.get("name") or fn.__qualname__
        self._shape = _shape(self._options, 1.0)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "remote_function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly; use "
            f"{self.__name__}.remote(...) (or the original function via .__wrapped__)"
        )

    def options(self, **opts: Any) -> RemoteFunction:
        return RemoteFunction(self._fn, {**self._options, **opts}, self._export)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        rt = G.require()
        opts = self._options
        stream = stream_of(opts)
        n = 1 if stream else opts.get("num_returns") or 1
        retries = opts.get("max_retries")
        shape, _wire = _with_env(rt, self._shape, opts.get("runtime_env"))
        refs = rt.submitter.submit(
            self._export.descriptor(self._name),
            args,
            kwargs,
            name=self._name,
            shape=shape,
            num_returns=n,
            max_retries=rt.config.default_max_retries if retries is None else retries,
            retry_exceptions=opts.get("retry_exceptions") or False,
            stream=stream,
        )
        if stream:
            return rt.streams.generator(refs[0], stream - 1)
        return refs[0] if n == 1 else refs


def method(*, num_returns: int | str = 1) -> Callable[[Any], Any]:
    """Declare how many values an actor method returns: ``@ac.method(num_returns=2)``.

    ``num_returns="streaming"`` makes a generator method return an ObjectRefGenerator.
    """
    stream_of({"num_returns": num_returns})

    def mark(fn: Any) -> Any:
        fn.__actorcore_num_returns__ = num_returns
        return fn

    return mark


def _methods(cls: type) -> dict[str, int]:
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name != "__call__":
            continue
        if inspect.isfunction(member) or inspect.ismethoddescriptor(member):
            out[name] = getattr(member, "__actorcore_num_returns__", 1)
    return out


class ActorClass:
    """A class made remote with ``@ac.remote``; ``Cls.remote(...)`` makes an actor."""

    def __init__(self, cls: type, options: dict[str, Any], export: _Export | None = None) -> None:
        self._cls = cls
        self._options = _check_options(
            dict(options), _ACTOR_OPTIONS, f"actor class {cls.__qualname__}"
        )
        self._export = export or _Export(cls)
        self._methods = _methods(cls)
        self._is_async = any(
            inspect.iscoroutinefunction(getattr(cls, m, None)) for m in self._methods
        )
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor class {self.__name__} cannot be instantiated directly; use "
            f"{self.__name__}.remote(...)"
        )

    def options(self, **opts: Any) -> ActorClass:
        return ActorClass(self._cls, {**self._options, **opts}, self._export)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        rt = G.require()
        opts = self._options
        name = opts.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"an actor name must be a non-empty string, not {name!r}")
        namespace = opts.get("namespace") or rt.namespace
        max_conc = opts.get("max_concurrency") or (1000 if self._is_async else 1)
        retries = int(opts.get("max_task_retries") or 0)
        desc = self._export.descriptor(self.__qualname__)
        shape, wire = _with_env(rt, _shape(opts, 0.0), opts.get("runtime_env"))
        spec = {
            "class_id": desc.fn_id,
            "class_blob": desc.blob,
            "class_name": self.__name__,
            "methods": self._methods,
            "max_concurrency": max_conc,
            # sync methods of an async actor run one at a time unless the user asked
            "sync_concurrency": int(opts.get("max_concurrency") or 1),
            "shape": shape,
            "runtime_env": wire,
            "name": name,
            "namespace": namespace,
            "detached": opts.get("lifetime") == "detached",
            "max_restarts": int(opts.get("max_restarts") or 0),
            "max_task_retries": retries,
            "get_if_exists": bool(opts.get("get_if_exists")),
            "owner_address": list(rt.address),
        }
        # The runtime's loop cannot wait for the daemon's answer: the handle
        # starts with the id asked for and moves to the existing actor's.
        wait = bool(name) and not rt.on_loop_thread()
        box: list[weakref.ref[ActorHandle]] = []
        actor_id = rt.actors.create(
            new_id(),
            self.__name__,
            spec,
            args,
            kwargs,
            retries,
            wait,
            on_id=lambda real: _rebind(box, real),
        )
        handle = ActorHandle(actor_id, self.__name__, self._methods, rt.address, retries)
        box.append(weakref.ref(handle))
        return handle


def _rebind(box: list[weakref.ref[ActorHandle]], actor_id: bytes) -> None:
    """A handle made on the runtime's loop learned that its actor is another, existing one."""
    h = box[0]() if box else None
    rt = G.runtime
    if h is None or rt is None or h.id == actor_id:
        return
    old = h.id
    rt.add_ref(actor_id, h.owner)
    h.id = actor_id
    rt.drop_ref(old)


class ActorHandle:
    """A reference to an actor: call its methods with ``await h.m(...)`` or ``h.m.remote(...)``.

    Handles pickle (pass them to tasks and other actors); the actor lives while
    a handle to it does (unless it is named or detached).
    """

    __slots__ = (
        "__weakref__",
        "_class_name",
        "_method_cache",
        "_methods",
        "_retries",
        "id",
        "owner",
    )

    def __init__(
        self,
        actor_id: bytes,
        class_name: str,
        methods: dict[str, int],
        owner: tuple[Any, ...],
        retries: int,
        *,
        _counted: bool = False,
    ) -> None:
        self.id = actor_id
        self.owner = tuple(owner)
        self._class_name = class_name
        self._methods = methods
        self._retries = retries
        self._method_cache: dict[str, ActorMethod] = {}
        rt = G.runtime
        if rt is not None and not _counted:
            rt.add_ref(actor_id, self.owner)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__") and name != "__call__":
            raise AttributeError(name)
        cache = self._method_cache
        m = cache.get(name)
        if m is None:
            if name not in self._methods:
                raise AttributeError(
                    f"actor class {self._class_name!r} has no method {name!r} "
                    f"(it has: {', '.join(sorted(self._methods)) or 'none'})"
                )
            # unbound (no handle): a cached method holding its handle would make a cycle,
            # and a dropped handle would end its actor only at the next gc, if ever
            m = cache[name] = ActorMethod(None, name, self._methods[name])  # type: ignore[arg-type]
        return m._bound(self)

    def __del__(self) -> None:
        rt = G.runtime
        if rt is not None:
            rt.drop_ref(self.id)

    def __reduce__(self) -> Any:
        collector = nested_collector()
        if collector is not None:
            collector.append(self)
        return (
            _rebuild_handle,
            (self.id, self._class_name, self._methods, list(self.owner), self._retries),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self.id.hex()})"


def _rebuild_handle(
    actor_id: bytes, class_name: str, methods: dict[str, int], owner: Any, retries: int
) -> ActorHandle:
    ctx = current_deserialization()
    h = ActorHandle(
        actor_id, class_name, dict(methods), tuple(owner), retries, _counted=ctx is not None
    )
    if ctx is not None:
        ctx.refs.append(h)  # counted with the others once unpickled
    return h


_new_method = object.__new__


class ActorMethod:
    """``handle.method``: call it (or ``.remote``) to get an awaitable ObjectRef."""

    __slots__ = ("_handle", "_name", "_num_returns", "_stream")

    def __init__(
        self, handle: ActorHandle, name: str, num_returns: Any, stream: int | None = None
    ) -> None:
        self._handle = handle
        self._name = name
        self._stream = stream_of({"num_returns": num_returns}) if stream is None else stream
        self._num_returns = 1 if self._stream else num_returns

    def _bound(self, handle: ActorHandle) -> ActorMethod:
        m = _new_method(ActorMethod)
        m._handle = handle
        m._name = self._name
        m._stream = self._stream
        m._num_returns = self._num_returns
        return m

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        h = self._handle
        rt = G.require()
        stream = self._stream
        refs = rt.actors.call(
            h.id, h._class_name, h._retries, self._name, args, kwargs, self._num_returns, stream
        )
        if stream:
            return rt.streams.generator(refs[0], stream - 1)
        return refs[0] if self._num_returns == 1 else refs

    __call__ = remote

    def options(self, *, num_returns: int | str | None = None, **opts: Any) -> ActorMethod:
        """Per-call options: ``num_returns`` (an int or ``"streaming"``) and back-pressure."""
        unknown = set(opts) - set(_BACKPRESSURE_OPTIONS)
        if unknown:
            raise TypeError(
                f"unknown option(s) {sorted(unknown)} for an actor method; valid options are "
                f"{['num_returns', *_BACKPRESSURE_OPTIONS]}"
            )
        if num_returns is None:
            num_returns = "streaming" if self._stream else self._num_returns
        stream = stream_of({"num_returns": num_returns, **opts})
        return ActorMethod(self._handle, self._name, num_returns, stream)


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a task or a class an actor class.

    Use bare (``@ac.remote``) or with options (``@ac.remote(num_cpus=2)``).
    """
    if len(args) == 1 and not options and (inspect.isfunction(args[0]) or inspect.isclass(args[0])):
        return _make(args[0], {})
    if args:
        raise TypeError("@ac.remote takes a function or class, or only keyword options")

    def deco(obj: Any) -> Any:
        return _make(obj, options)

    return deco


def _make(obj: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError(f"@ac.remote takes a function or a class, not {type(obj).__name__}")
