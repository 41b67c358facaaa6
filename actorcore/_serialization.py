"""Serialization: pickle protocol 5 with out-of-band buffers.

Plain ``pickle`` first (fast); ``cloudpickle`` when it cannot (lambdas,
closures, classes defined in ``__main__`` or in a function). ObjectRefs and
actor handles found while pickling are collected, so the owner can count the
refs nested inside an object; those found while unpickling are reported to the
runtime, so a borrower can register with their owners.

Payloads of small values travel as ``bytes`` (no buffers) or as a list
``[stream, buf0, buf1, ...]``; large ones go to the shared-memory store.
"""

from __future__ import annotations

import io
import pickle
import threading
from typing import Any

import cloudpickle

from . import _global as G
from .errors import SerializationError

__all__ = [
    "DeserializationContext",
    "Serialized",
    "deserialize",
    "dumps_function",
    "loads_payload",
    "serialize",
]

_local = threading.local()


class Serialized:
    """A pickled value: its stream, its out-of-band buffers and the refs inside it."""

    __slots__ = ("buffers", "nested", "size", "stream")

    def __init__(
        self, stream: bytes, buffers: list[pickle.PickleBuffer], nested: list[Any]
    ) -> None:
        self.stream = stream
        self.buffers = buffers
        self.nested = nested
        self.size = len(stream) + sum(memoryview(b).nbytes for b in buffers)

    def payload(self) -> bytes | list[Any]:
        """The value as one wire payload (small values only: buffers are copied)."""
        if not self.buffers:
            return self.stream
        return [self.stream, *(b.raw().tobytes() for b in self.buffers)]


def nested_collector() -> list[Any] | None:
    """The list collecting refs pickled on this thread right now, if any."""
    return getattr(_local, "nested", None)


def _pickle(value: Any, buffers: list[pickle.PickleBuffer]) -> bytes:
    try:
        stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        # Classes and functions of __main__ pickle by name, which a worker
        # cannot import: those need cloudpickle's by-value form.
        if b"__main__" not in stream:
            return stream
    except RecursionError:
        raise
    except Exception:
        pass
    buffers.clear()
    del _local.nested[:]
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffers.append).dump(value)
    return out.getvalue()


def _rebuild_memoryview(buf: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    mv = memoryview(buf)
    if mv.format == fmt and mv.shape == shape:
        return mv
    return mv.cast("B").cast(fmt, shape)  # type: ignore[call-overload]


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, plus memoryviews as out-of-band buffers (read back without a copy)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview and obj.c_contiguous:
            return (_rebuild_memoryview, (pickle.PickleBuffer(obj), obj.format, obj.shape))
        return super().reducer_override(obj)


def serialize(value: Any, where: str = "value") -> Serialized:
    """Pickle ``value``; raises SerializationError naming its type and ``where``."""
    buffers: list[pickle.PickleBuffer] = []
    outer = getattr(_local, "nested", None)
    nested: list[Any] = []
    _local.nested = nested
    try:
        stream = _pickle(value, buffers)
    except Exception as e:
        raise SerializationError(_describe_failure(value, where, e)) from e
    finally:
        _local.nested = outer
    return Serialized(stream, buffers, nested)


def _describe_failure(value: Any, where: str, err: Exception) -> str:
    culprit = _find_culprit(value)
    kind = type(value).__qualname__
    detail = f" (the part that fails is a {culprit})" if culprit and culprit != kind else ""
    return f"cannot serialize {where} of type {kind}{detail}: {err}"


def _find_culprit(value: Any, depth: int = 0) -> str | None:
    """Name the type of the innermost piece of ``value`` that fails to pickle."""
    if depth > 3:
        return None
    if isinstance(value, dict):
        items: list[Any] = list(value.values())
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        items = list(getattr(value, "__dict__", {}).values())
    for item in items:
        try:
            cloudpickle.dumps(item)
        except Exception:
            return _find_culprit(item, depth + 1) or type(item).__qualname__
    return type(value).__qualname__


class DeserializationContext:
    """Collects the refs created while unpickling on this thread."""

    __slots__ = ("refs",)

    def __init__(self) -> None:
        self.refs: list[Any] = []


def current_deserialization() -> DeserializationContext | None:
    return getattr(_local, "deser", None)


def deserialize(
    stream: Any, buffers: list[Any] | None = None, where: str | bytes = "value"
) -> tuple[Any, list[Any]]:
    """Unpickle; returns the value and the refs created while doing it.

    ``where`` names the value in errors (an object id: "object <hex>").
    """
    outer = getattr(_local, "deser", None)
    ctx = _local.deser = DeserializationContext()
    try:
        value = pickle.loads(stream, buffers=buffers) if buffers else pickle.loads(stream)
    except Exception as e:
        if isinstance(where, bytes):
            where = f"object {where.hex()}"
        raise SerializationError(f"cannot deserialize {where}: {type(e).__name__}: {e}") from e
    finally:
        _local.deser = outer
        if ctx.refs:  # made uncounted (see _ref._rebuild_ref); ``ctx`` kept them alive
            rt = G.runtime
            if rt is not None:
                rt.add_refs(ctx.refs)
    return value, ctx.refs


def loads_plain(stream: bytes, where: str | bytes = "value") -> Any:
    """Unpickle a value whose producer pickled no ObjectRef or actor handle in it (its
    nested refs were none): no context is needed to collect the refs it makes."""
    try:
        return pickle.loads(stream)
    except Exception as e:
        if isinstance(where, bytes):
            where = f"object {where.hex()}"
        raise SerializationError(f"cannot deserialize {where}: {type(e).__name__}: {e}") from e


def loads_payload(
    payload: bytes | list[Any] | tuple[Any, ...], where: str | bytes = "value"
) -> tuple[Any, list[Any]]:
    if type(payload) is not bytes and isinstance(payload, list | tuple):
        return deserialize(payload[0], list(payload[1:]), where)
    return deserialize(payload, None, where)


def dumps_function(fn: Any) -> bytes:
    """Pickle a function or class by value (cloudpickle), for export to workers."""
    try:
        return cloudpickle.dumps(fn, protocol=5)
    except Exception as e:
        name = getattr(fn, "__qualname__", type(fn).__qualname__)
        raise SerializationError(
            f"cannot serialize {name} for remote execution: {e}. Everything it "
            f"references (globals, closures, default arguments) must be picklable."
        ) from e


def exception_blob(exc: BaseException) -> bytes | None:
    """Pickle an exception if possible (None when it cannot round-trip)."""
    try:
        blob = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(blob)
        return blob
    except Exception:
        return None


def format_exception(exc: BaseException) -> str:
    import traceback

    buf = io.StringIO()
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=buf)
    return buf.getvalue()


def load_error(blob: bytes | None) -> BaseException:
    from .errors import ActorCoreError

    if blob is None:
        return ActorCoreError("the remote error could not be transferred")
    try:
        exc = pickle.loads(blob)
    except Exception as e:
        return ActorCoreError(f"the remote error could not be unpickled: {e}")
    return exc if isinstance(exc, BaseException) else ActorCoreError(repr(exc))
