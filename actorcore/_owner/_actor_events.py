"""Events and instructions of the owner's actor core (:mod:`._actors`).

Slotted dataclasses, made once and never changed (not ``frozen``: that costs
about four times as much to create, and a few are made per call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._args import PreparedArgs
    from ._actor_state import ActorClient, CallSpec, Creation

__all__ = [
    "ActorConnected",
    "ActorCreateFailed",
    "ActorDied",
    "ActorLocated",
    "ActorOutOfScope",
    "ActorRegistered",
    "ActorUnreachable",
    "ArgsFailed",
    "ArgsReady",
    "CallDone",
    "CallFailed",
    "CallLost",
    "CallRejected",
    "CallReplied",
    "CallSentDirect",
    "CancelCall",
    "ConnectActor",
    "CreateActor",
    "CreationFailed",
    "KillActor",
    "LocateActor",
    "NodeDied",
    "PeerClosed",
    "ReleaseHeld",
    "ResolveArgs",
    "SendActorCall",
    "SendCancel",
    "SendCreate",
    "SendFailed",
    "SubmitActorCall",
]

# --- events --------------------------------------------------------------------------------


@dataclass(slots=True)
class CreateActor:
    """Create the actor ``actor_id``; ``spec`` goes to the daemon once the arguments are ready."""

    actor_id: bytes
    class_name: str
    max_task_retries: int
    spec: dict[str, Any]
    args: PreparedArgs
    notify: Any  # called with the daemon's answer (or the error of an argument)


@dataclass(slots=True)
class ActorRegistered:
    """The daemon took the creation; ``real_id`` differs for a named actor that existed."""

    actor_id: bytes
    real_id: bytes


@dataclass(slots=True)
class ActorCreateFailed:
    """The creation was refused (or its arguments failed)."""

    actor_id: bytes
    error: BaseException


@dataclass(slots=True)
class SubmitActorCall:
    """A call of ``spec.method`` on the actor ``actor_id`` (made through a handle).

    The shell posts the :class:`CallSpec` itself instead, bare, with ``actor_id``
    and ``class_name`` set on it (``retries_left`` is still max_task_retries).
    """

    actor_id: bytes
    class_name: str
    max_task_retries: int
    spec: CallSpec


@dataclass(slots=True)
class CallSentDirect:
    """A caller's thread sent ``spec`` (as ``spec.rid``, to ``spec.peer``) itself.

    It may, when the core published that the way to the actor is open (see
    ``ActorClient.direct``) and no event of the core is pending: a synchronous
    caller then pays no thread hop. The event is queued before the send, so
    the core learns of the call before its reply.
    """

    client: ActorClient
    spec: CallSpec


@dataclass(slots=True)
class ArgsReady:
    """The top-level ObjectRef arguments of a call or creation are ready."""

    item: CallSpec | Creation
    resolved: list[Any]


@dataclass(slots=True)
class ArgsFailed:
    """A top-level argument of a call or creation failed."""

    item: CallSpec | Creation
    error: BaseException


@dataclass(slots=True)
class ActorLocated:
    """Where the actor runs now: ``state`` ALIVE (at ``address``, on ``node_id``) or DEAD."""

    client: ActorClient
    state: str
    address: Any
    epoch: int
    cause: Any
    node_id: bytes | None = None


@dataclass(slots=True)
class ActorConnected:
    """The worker hosting incarnation ``epoch`` is reachable through ``peer``."""

    client: ActorClient
    epoch: int
    peer: Any
    node_id: bytes | None = None


@dataclass(slots=True)
class ActorUnreachable:
    """The host of incarnation ``epoch`` died before it could be reached."""

    client: ActorClient
    epoch: int


@dataclass(slots=True)
class ActorDied:
    """The actor cannot be located (its daemon is gone) or is dead for good."""

    client: ActorClient
    error: BaseException


@dataclass(slots=True)
class CallReplied:
    """The actor answered call ``rid``: ``[kind, data, nested]`` per return value
    (through ``peer``: counts only from where the call went; None: not checked)."""

    client: ActorClient
    rid: int
    results: list[Any]
    peer: Any = None


@dataclass(slots=True)
class CallRejected:
    """Call ``rid`` failed with a system error; it is not retried (``peer``: as for
    :class:`CallReplied`)."""

    client: ActorClient
    rid: int
    error: BaseException
    peer: Any = None


@dataclass(slots=True)
class CallLost:
    """The host behind ``peer`` went away (or lost the actor) before answering ``rid``."""

    client: ActorClient
    rid: int
    peer: Any
    error: BaseException


@dataclass(slots=True)
class SendFailed:
    """Call ``spec`` could not be sent at all: it waits for the actor's next address."""

    client: ActorClient
    spec: CallSpec
    peer: Any


@dataclass(slots=True)
class PeerClosed:
    """A connection ended: actors hosted behind it must be located again."""

    peer: Any


@dataclass(slots=True)
class NodeDied:
    """A node is gone: actors hosted there lose their calls in flight and are located again."""

    node_id: bytes


@dataclass(slots=True)
class CancelCall:
    """``ac.cancel`` of the ref ``oid`` of an actor call."""

    oid: bytes
    force: bool


@dataclass(slots=True)
class ActorOutOfScope:
    """No handle to an actor this process owns is left."""

    actor_id: bytes


# --- instructions ------------------------------------------------------------------------


@dataclass(slots=True)
class ResolveArgs:
    """Wait for the top-level ObjectRef arguments of ``item``; answer ArgsReady/ArgsFailed."""

    item: CallSpec | Creation
    deps: list[Any]


@dataclass(slots=True)
class SendCreate:
    """Ask the daemon to create the actor (``resolved``: its ready ref arguments)."""

    creation: Creation
    resolved: list[Any]


@dataclass(slots=True)
class CreationFailed:
    """An argument of the creation failed: tell whoever waits for the answer."""

    creation: Creation
    error: BaseException


@dataclass(slots=True)
class LocateActor:
    """Ask the daemon where incarnation ``min_epoch`` (or a later one) of the actor runs."""

    client: ActorClient
    min_epoch: int


@dataclass(slots=True)
class ConnectActor:
    """Connect to the actor's host; answer ActorConnected/ActorUnreachable."""

    client: ActorClient
    address: Any
    epoch: int
    node_id: bytes | None


@dataclass(slots=True)
class SendActorCall:
    """Send ``spec`` (request ``spec.rid``) to the host behind ``peer``."""

    client: ActorClient
    spec: CallSpec
    peer: Any


@dataclass(slots=True)
class CallDone:
    """The call's results are final: complete its objects, release its arguments."""

    spec: CallSpec
    results: list[Any]
    node_id: bytes | None = None  # the actor's node: where its store results are


@dataclass(slots=True)
class CallFailed:
    """The call failed for good: so do its objects; release its arguments."""

    spec: CallSpec
    error: BaseException


@dataclass(slots=True)
class SendCancel:
    """Tell the actor's host to cancel the call ``task_id``."""

    peer: Any
    task_id: bytes


@dataclass(slots=True)
class KillActor:
    """Tell the daemon to end the actor (its owner let go of it)."""

    actor_id: bytes


@dataclass(slots=True)
class ReleaseHeld:
    """Count down the refs a call or creation kept alive."""

    held: list[bytes]
