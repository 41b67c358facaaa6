"""The errors actorcore raises, in one hierarchy under :class:`ActorCoreError`.

Three families:

* usage errors, raised at the call site (also ``ValueError``/``TypeError`` where
  natural): :class:`BlockingCallError`, :class:`NotInitializedError`,
  :class:`SerializationError`;
* remote errors, which carry what happened elsewhere: :class:`TaskError` (also
  an instance of the user's own exception class), :class:`ActorDiedError`,
  :class:`WorkerCrashedError`, :class:`NodeDiedError`, :class:`ObjectLostError`,
  :class:`TaskCancelledError`, :class:`ObjectStoreFullError`;
* internal errors: :class:`ProtocolError`, :class:`ConnectionClosedError`,
  :class:`ConnectionBrokenError`.

Every error survives pickling, so it can cross process boundaries.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = [
    "ActorCoreError",
    "ActorDiedError",
    "AuthenticationError",
    "BlockingCallError",
    "ConnectionBrokenError",
    "ConnectionClosedError",
    "GetTimeoutError",
    "MessageTooLargeError",
    "NodeDiedError",
    "NotInitializedError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "ObjectStoreFullError",
    "OwnerDiedError",
    "ProtocolError",
    "SerializationError",
    "TaskCancelledError",
    "TaskCancelledInterrupt",
    "TaskError",
    "WorkerCrashedError",
]


class ActorCoreError(Exception):
    """Base class of every error raised by actorcore."""

    def __reduce__(self) -> Any:
        return (type(self), self.args)


# --- usage errors -------------------------------------------------------------


class BlockingCallError(ActorCoreError, RuntimeError):
    """Raised when a blocking call (``ac.get``) is made on a running event loop's thread.

    Blocking there would stall the loop; ``await ref`` instead.
    """


class NotInitializedError(ActorCoreError, RuntimeError):
    """Raised when the runtime is used before ``ac.init()`` or after ``ac.shutdown()``."""


class SerializationError(ActorCoreError, TypeError):
    """Raised when a value cannot be pickled or unpickled.

    The message names the value's type and where it was (argument, return value,
    actor state).
    """


class GetTimeoutError(ActorCoreError, TimeoutError):
    """Raised when ``get`` or ``wait`` with a timeout runs out of time."""


# --- remote errors ------------------------------------------------------------


class TaskError(ActorCoreError):
    """Raised when user code raised an exception in a task or actor method.

    The instance raised is also an instance of the user's own exception class
    (so ``except ValueError:`` works), and carries the remote traceback text in
    :attr:`traceback_text` and the original exception in :attr:`cause` (``None``
    when it could not be unpickled; :attr:`cause_type_name` still names it).
    """

    def __init__(
        self,
        function_name: str,
        traceback_text: str,
        cause: BaseException | None = None,
        cause_type_name: str | None = None,
        cause_message: str | None = None,
        pid: int = 0,
    ) -> None:
        if cause_type_name is None:
            cause_type_name = type(cause).__qualname__ if cause is not None else "Exception"
        if cause_message is None:
            cause_message = str(cause) if cause is not None else ""
        # Not super(): in the class that also derives from the user's exception,
        # super() would reach the user's __init__ with arguments it never takes.
        Exception.__init__(
            self, *(cause.args if cause is not None and cause.args else (cause_message,))
        )
        self.function_name = function_name
        self.traceback_text = traceback_text
        self.cause = cause
        self.cause_type_name = cause_type_name
        self.cause_message = cause_message
        self.pid = pid

    def __str__(self) -> str:
        where = f" (pid={self.pid})" if self.pid else ""
        return (
            f"{self.cause_type_name}: {self.cause_message}\n"
            f"raised in {self.function_name}{where}; remote traceback:\n{self.traceback_text}"
        )

    def __reduce__(self) -> Any:
        cause_blob = _pickle_cause(self.cause) if self.cause is not None else None
        return (
            _rebuild_task_error,
            (
                self.function_name,
                self.traceback_text,
                cause_blob,
                self.cause_type_name,
                self.cause_message,
                self.pid,
            ),
        )

    def as_instance_of_cause(self) -> TaskError:
        """Return a copy that is also an instance of the cause's class, when possible."""
        cause = self.cause
        if cause is None or isinstance(self, type(cause)):
            return self
        cls = _dual_class(type(cause))
        if cls is None:
            return self
        try:
            err = cls.__new__(cls)  # type: ignore[call-overload]
        except TypeError:  # e.g. MemoryError's __new__ refuses subclasses built this way
            return self
        # Exception.__new__ leaves __init__ to us; the user's __init__ is skipped
        # on purpose (it may need arguments we do not have).
        TaskError.__init__(
            err,
            self.function_name,
            self.traceback_text,
            cause,
            self.cause_type_name,
            self.cause_message,
            self.pid,
        )
        try:
            err.__dict__.update({k: v for k, v in vars(cause).items() if k not in err.__dict__})
        except TypeError:
            pass
        return err


def _pickle_cause(cause: BaseException) -> bytes | None:
    """Pickle a user exception so that it comes back, whatever its ``__init__`` takes.

    cloudpickle keeps classes defined in functions or ``__main__``; when the
    usual reduction cannot be undone (``__init__`` arguments differ from
    ``.args``), the exception is rebuilt without calling ``__init__``.
    """
    import cloudpickle

    try:
        blob = cloudpickle.dumps(cause)
        pickle.loads(blob)
        return blob
    except Exception:
        pass
    state = {}
    try:
        state = dict(vars(cause))
        cloudpickle.dumps(state)
    except Exception:
        state = {}
    try:
        return cloudpickle.dumps(_RebuiltException(type(cause), cause.args, state))
    except Exception:
        return None


class _RebuiltException:
    """Pickles as a call that re-creates an exception without its ``__init__``."""

    def __init__(self, cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> None:
        self.cls, self.args, self.state = cls, args, state

    def __reduce__(self) -> Any:
        return (_rebuild_exception, (self.cls, self.args, self.state))


def _rebuild_exception(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls)  # type: ignore[call-overload]
    exc.args = args
    try:
        exc.__dict__.update(state)
    except AttributeError:
        pass
    return exc


_DUAL_CLASSES: dict[type, type | None] = {}


def _dual_class(cause_cls: type) -> type | None:
    """A class deriving from both TaskError and the cause's class, or None."""
    if cause_cls in _DUAL_CLASSES:
        return _DUAL_CLASSES[cause_cls]
    dual: type | None
    try:
        dual = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {
                "__module__": __name__,
                "__str__": TaskError.__str__,
                "__reduce__": TaskError.__reduce__,
            },
        )
    except TypeError:
        dual = None  # incompatible layout (some C exceptions); plain TaskError
    _DUAL_CLASSES[cause_cls] = dual
    return dual


def _rebuild_task_error(
    function_name: str,
    traceback_text: str,
    cause_blob: bytes | None,
    cause_type_name: str,
    cause_message: str,
    pid: int = 0,
) -> TaskError:
    cause = None
    if cause_blob is not None:
        try:
            cause = pickle.loads(cause_blob)
        except Exception:
            cause = None
    err = TaskError(function_name, traceback_text, cause, cause_type_name, cause_message, pid)
    return err.as_instance_of_cause()


class ActorDiedError(ActorCoreError):
    """Raised when a call targets an actor that died (killed, crashed, failed in ``__init__``)."""


class WorkerCrashedError(ActorCoreError):
    """Raised when the worker running a task died and no retries were left."""


class NodeDiedError(ActorCoreError):
    """Raised when the node holding a task, actor or object died."""


class ObjectLostError(ActorCoreError):
    """Raised when an object's value can no longer be reached (its owner or every copy is gone).

    Raised as such for an object with no lineage to rebuild it from (made by
    ``put``, or by a task with ``max_retries=0``) whose every copy was on a
    dead node; the subclasses name other causes.
    """


class OwnerDiedError(ObjectLostError):
    """Raised when the process that owns an object (its ``put`` or ``.remote()`` caller) died."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Raised when every copy of an object was lost and re-running the task that made it
    failed (no retries left, an argument lost beyond repair, or the task raised)."""


class TaskCancelledError(ActorCoreError):
    """Raised when getting the result of a task cancelled with ``ac.cancel``."""


class TaskCancelledInterrupt(KeyboardInterrupt):
    """Raised *inside* a running sync task where ``ac.cancel`` interrupts it (in
    ``time.sleep``, a socket read, a lock wait, or at its next bytecode).

    A ``KeyboardInterrupt``, as Ray raises there: a broad ``except Exception``
    in user code (a retry loop) does not swallow the cancel, and ``finally``
    blocks run. Whoever gets the task's result gets :class:`TaskCancelledError`.
    """

    def __reduce__(self) -> Any:
        return (type(self), self.args)


class ObjectStoreFullError(ActorCoreError, MemoryError):
    """Raised when an object does not fit in the store even after eviction and spilling."""


# --- internal errors ----------------------------------------------------------


class ProtocolError(ActorCoreError):
    """Raised when a peer sent bytes that are not a valid actorcore frame or message."""


class AuthenticationError(ProtocolError):
    """Raised when a peer failed the handshake (wrong cluster token or protocol version)."""


class ConnectionClosedError(ActorCoreError, ConnectionError):
    """Raised on requests over a connection that this side closed."""


class ConnectionBrokenError(ActorCoreError, ConnectionError):
    """Raised on requests pending over a connection that the peer or network broke."""


class MessageTooLargeError(ProtocolError, ValueError):
    """Raised when a message is over the frame limits (``max_header_bytes``,
    ``max_frame_bytes``): by the sender before it goes out, and to the sender
    (in a REJECT) by a receiver that refuses it."""
