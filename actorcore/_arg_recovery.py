"""Actor-call arguments lost with a dead node, got back in place (issue 10, item 3).

A task whose store argument cannot be copied to its worker (every copy was
on a node that died) goes back to its owner, which resolves it again once the
object is rebuilt (``ArgsLost`` in :mod:`._owner._tasks`). An actor call
cannot go back: the calls its caller made after it may already wait behind it
in the actor's mailbox, and must not overtake it. So the actor's worker gets
the argument back itself while the call keeps its place (as Ray's actor task
receiver waits for a call's arguments in order): it asks the owner of each
argument it could not copy for it (``GET_OBJECT``). An owner that learned of
the node's death has reset the object to pending and is rebuilding it from
lineage: it answers once the new copy is there, with the nodes holding it.
An object that cannot be had is answered with the error that says why (no
lineage, reconstruction failed); an owner that cannot be reached died
(:class:`~actorcore.errors.OwnerDiedError`). An owner that answers with the
very holders that just failed has not learned of the death yet: it is asked
again after a pause, for a bounded time (several node TTLs), never forever.
None of this uses the call's ``max_task_retries`` (its actor did not fail);
an actor that dies meanwhile loses the call like any other, and its next
incarnation gets the argument back the same way. An actor's ``__init__``
(run again on another node after its node died) gets its arguments the same way.

A cancel of the call (``ac.cancel``) ends the recovery where it waits (for a
copy, the owner's answer, or between asks) and the call with
``TaskCancelledError``; its method does not run (:func:`cancel_recovery`).

The calls of an ``async`` actor start in call order too: one whose arguments
are still being copied (or got back) holds those behind it (``_worker``).

:func:`judge` (what to do with one answer) is pure and tested without
sockets; :func:`recover_sources` carries it out on an executor thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._locations import arg_sources, ensure_local
from ._refcount import ERROR, STORE
from ._rpc import error_from_reply, next_rid
from ._serialization import load_error
from .errors import (
    ObjectLostError,
    ObjectReconstructionFailedError,
    OwnerDiedError,
    TaskCancelledError,
)

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

logger = logging.getLogger(__name__)

__all__ = [
    "Again",
    "GiveUp",
    "Pull",
    "UseValue",
    "cancel_recovery",
    "judge",
    "recover_sources",
    "stale_limit_s",
]

# The owner answers with the dead holders until it learns of the death (within a
# node TTL, after its daemon's etcd watch); asked again this often, for this long.
PAUSE_S = 0.25
# An owner's answer takes as long as the rebuild (it waits for it); past this it is
# taken as lost (a rebuild runs the task again, which may wait for resources).
ANSWER_WAIT_S = 300.0
MAX_ASKS = 400  # a bound whatever the owner answers
_EARLY_CANCELS = 256  # cancels kept for calls that may be about to start a recovery

Cancel = concurrent.futures.Future  # done once the call is cancelled

# the calls of this process getting arguments back (task id -> its Cancel), and the
# last cancels of running calls that were not (yet) doing so: a call that starts a
# recovery after its cancel came (while its first copy failed) stops at once
_recovering: dict[bytes, Cancel[None]] = {}
_early: collections.OrderedDict[bytes, None] = collections.OrderedDict()


def cancel_recovery(task_id: bytes) -> bool:
    """A cancel of call ``task_id`` came (any thread): if it is getting its arguments
    back, it stops waiting and fails with ``TaskCancelledError``; True if it was."""
    cancel = _recovering.get(task_id)
    if cancel is None:
        _early[task_id] = None
        while len(_early) > _EARLY_CANCELS:
            _early.popitem(last=False)
        return False
    _set(cancel)
    return True


def _set(cancel: Cancel[None]) -> None:
    try:
        cancel.set_result(None)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled twice


def _check(cancel: Cancel[None]) -> None:
    if cancel.done():
        err = TaskCancelledError("the call was cancelled while its arguments were got back")
        err._actorcore_system = True  # type: ignore[attr-defined]  # (see encode_error)
        raise err


@dataclass(frozen=True, slots=True)
class Pull:
    """Copy the object from ``holders`` (None: not known, every node is asked)."""

    holders: frozenset[bytes] | None


@dataclass(frozen=True, slots=True)
class UseValue:
    """The owner answered with the value itself (an inline one)."""

    kind: int
    data: Any


@dataclass(frozen=True, slots=True)
class Again:
    """The owner does not know yet that the holders died: ask again after a pause."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The argument cannot be had: the call fails with ``error``."""

    error: ObjectLostError


Step = Pull | UseValue | Again | GiveUp


def stale_limit_s(node_ttl_s: float) -> float:
    """How long an owner may keep answering with dead holders before we give up."""
    return 10.0 + 5.0 * node_ttl_s


def judge(
    oid: bytes,
    owner: Any,
    answer: Any,
    failed: frozenset[bytes] | None,
    stale_s: float,
    limit_s: float,
) -> Step:
    """What to do with the owner's ``answer`` to GET_OBJECT for an argument ``oid`` whose
    copy from ``failed`` (None: from any node) just failed.

    ``answer`` is ``[kind, data, nested, locations]``, or an exception: the
    owner's error reply (an :class:`ObjectLostError`: it freed the object) or a
    connection error (the owner died). ``stale_s`` is how long the owner has
    been answering with holders that failed; past ``limit_s`` we give up.
    """
    who = bytes(owner[0]).hex() if owner is not None else "unknown"
    if isinstance(answer, ObjectLostError):
        return GiveUp(answer)
    if isinstance(answer, BaseException):
        died = isinstance(answer, ConnectionError | OSError)  # (as the object core judges)
        what = "died or cannot be reached" if died else "could not provide it"
        err: ObjectLostError = (OwnerDiedError if died else ObjectLostError)(
            f"object {oid.hex()} is lost: every copy was on a node that died, and its owner "
            f"{who} (the process that created it) {what} ({answer})"
        )
        err.__cause__ = answer
        return GiveUp(err)
    kind, data, _nested, *rest = answer
    if kind == ERROR:
        cause = load_error(data) if not isinstance(data, BaseException) else data
        if isinstance(cause, ObjectLostError):
            return GiveUp(cause)
        err = ObjectReconstructionFailedError(f"object {oid.hex()} could not be rebuilt: {cause}")
        err.__cause__ = cause
        return GiveUp(err)
    if kind != STORE:
        return UseValue(kind, data)
    holders = frozenset(bytes(n) for n in rest[0]) if rest and rest[0] else None
    if holders != failed:
        return Pull(holders)
    if stale_s >= limit_s:
        where = "any node" if failed is None else ", ".join(sorted(n.hex() for n in failed))
        return GiveUp(
            ObjectLostError(
                f"object {oid.hex()} could not be copied from {where} for {stale_s:.1f} s, and "
                f"its owner {who} still names no other holder"
            )
        )
    return Again()


def recover_sources(
    rt: CoreRuntime,
    payload: Any,
    resolved: list[Any],
    task_id: bytes | None = None,
) -> tuple[Any, list[Any]]:
    """Make every store argument of a call local, asking owners for lost ones.

    Blocking (an executor thread, never the runtime's loop). Returns the
    payload and resolved list with the holders (or values) the owners gave,
    to decode the arguments from.

    Raises:
        ObjectLostError: (or a subclass) an argument cannot be had; the call's
            result is this error itself, not one of its method's.
        TaskCancelledError: call ``task_id`` was cancelled meanwhile
            (:func:`cancel_recovery`).
    """
    cancel: Cancel[None] = Cancel()
    if task_id is not None:
        _recovering[task_id] = cancel
        if _early.pop(task_id, False) is None:  # (cancelled while its first copy failed)
            _set(cancel)
    try:
        return _recover_sources(rt, payload, resolved, cancel)
    except ObjectLostError as e:
        e._actorcore_system = True  # type: ignore[attr-defined]  # (see encode_error)
        raise
    finally:
        if task_id is not None:
            _recovering.pop(task_id, None)


def _recover_sources(
    rt: CoreRuntime, payload: Any, resolved: list[Any], cancel: Cancel[None]
) -> tuple[Any, list[Any]]:
    resolved = [list(r) for r in resolved]
    by_oid: dict[bytes, list[Any]] = {}
    for r in resolved:
        if r[1] == STORE:
            by_oid.setdefault(r[3], []).append(r)
    if payload and isinstance(payload, list | tuple) and isinstance(payload[0], int):
        payload = list(payload)
    limit = stale_limit_s(rt.config.node_ttl_s)
    seen: set[bytes] = set()
    for oid, holders, owner in arg_sources(payload, resolved):
        if oid in seen:  # (the same ref passed twice)
            continue
        seen.add(oid)
        got = _recover_one(rt, oid, holders, owner, limit, cancel)
        if isinstance(got, UseValue):
            for r in by_oid.get(oid, ()):
                r[1:] = [got.kind, got.data, oid]
            continue
        hs = sorted(got) if got is not None else None
        for r in by_oid.get(oid, ()):
            r[4:5] = [hs]
        if payload and isinstance(payload, list) and payload[1] == oid:
            payload[2:3] = [hs]
    return payload, resolved


def _recover_one(
    rt: CoreRuntime,
    oid: bytes,
    holders: Any,
    owner: Any,
    limit_s: float,
    cancel: Cancel[None],
) -> frozenset[bytes] | UseValue | None:
    """Copy ``oid`` here; the holders it was copied from (or the owner's inline value)."""
    hs = frozenset(bytes(h) for h in holders) if holders is not None else None
    stale_since: float | None = None
    for _ in range(MAX_ASKS):
        _check(cancel)
        try:
            ensure_local(rt, oid, hs, owner, cancel)
            _check(cancel)  # (it stopped waiting for the pull)
            return hs
        except ObjectLostError as e:
            if type(e) is not ObjectLostError or owner is None or bytes(owner[0]) == rt.my_id:
                raise  # (an object of this very process has no owner to ask but itself)
            failed = e
        if stale_since is None:
            logger.info(
                "argument %s could not be copied here (%s): asking its owner", oid.hex(), failed
            )
        answer = _ask_owner(rt, owner, oid, cancel)
        _check(cancel)
        step = judge(oid, owner, answer, hs, _stale(stale_since), limit_s)
        if isinstance(step, GiveUp):
            raise step.error from failed
        if isinstance(step, UseValue):
            return step
        if isinstance(step, Pull):
            hs, stale_since = step.holders, None
            continue
        if stale_since is None:
            stale_since = time.monotonic()
        # backoff between asks: the owner learns of the death within a TTL
        concurrent.futures.wait([cancel], PAUSE_S)
    raise ObjectLostError(f"object {oid.hex()}: asked its owner {MAX_ASKS} times, still no copy")


def _stale(since: float | None) -> float:
    return 0.0 if since is None else time.monotonic() - since


def _ask_owner(rt: CoreRuntime, owner: Any, oid: bytes, cancel: Cancel[None]) -> Any:
    """The owner's answer to GET_OBJECT ``oid``: ``[kind, data, nested, locations]`` or an
    exception (blocking; it comes once the object is ready, e.g. rebuilt), or None
    once ``cancel`` is done (the answer is then dropped when it comes)."""
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def answered(reply: Any) -> None:
        if not isinstance(reply, BaseException):
            reply = error_from_reply(reply) if reply.TAG == P.Tag.ERROR_REPLY else reply.value
        if not fut.done():
            fut.set_result(reply)

    def send(peer: Any) -> None:
        if isinstance(peer, BaseException):
            answered(peer)
            return
        try:
            peer.request(P.GetObjectMsg(next_rid(), oid), answered)
        except ConnectionError as e:
            answered(e)

    rt.call_soon(rt.with_peer, tuple(owner), send)
    concurrent.futures.wait([fut, cancel], ANSWER_WAIT_S, concurrent.futures.FIRST_COMPLETED)
    if fut.done():
        return fut.result()
    if cancel.done():
        return None
    return ObjectLostError(
        f"object {oid.hex()}: its owner did not answer within {ANSWER_WAIT_S:.0f} s"
    )
