"""Fencing, the worker's side: a worker serves only while its daemon vouches for it.

The rule that decides when a node fences itself is in :mod:`actorcore._fencing`.
Every worker of a cluster node asks its daemon (:func:`watch_daemon`), every
``TTL/6``, until when the daemon vouches for it (``CLUSTER_INFO vouch``: seconds
left before the deadline, extended while an etcd outage is confirmed). A worker
whose vouch runs out (its daemon frozen, fenced, or gone) exits by itself, before
etcd can expire the node's lease; so a paused daemon's actors cannot keep
answering their callers directly while their restarted instances answer
elsewhere. A whole node frozen at once (daemon and workers) resumes with calls
waiting on the wire: a worker sends no answer past its last vouch
(:class:`Vouch`; it waits for the watch's next answer, which ends it), so nothing
it computed after its node may have been declared dead reaches a caller.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["EXIT_FENCED", "Vouch", "daemon_vouch_asker", "exit_fenced", "watch_daemon"]

logger = logging.getLogger(__name__)

EXIT_FENCED = 75  # a worker's exit status when its daemon no longer vouches for it


class Vouch:
    """Until when (``time.monotonic()``) the daemon vouches for this worker; a worker
    sends no answer past it (a frozen node resumed answers nothing before its watch
    ends it). Written by the watch thread, read by the worker's reply path."""

    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until = float("inf")  # not a cluster node: nothing to fence

    def wait_renewed(
        self,
        limit_s: float,
        clock: Callable[[], float] = time.monotonic,
        end: Callable[[str], None] | None = None,
    ) -> None:
        """Past :attr:`until`: wait for the watch thread's next answer (it extends the
        vouch, or ends the process: a watch merely starved of the GIL is not a fence);
        end the process if neither came within ``limit_s``."""
        give_up = clock() + limit_s
        pause = threading.Event()
        while clock() >= self.until:
            if clock() >= give_up:
                (end or exit_fenced)("no answer past the node daemon's vouch (node maybe dead)")
            pause.wait(0.005)  # (a poll for the watch thread's answer, bounded above)


def exit_fenced(why: str) -> None:
    """End this worker now (no logging: a handler lock held by a stuck thread must
    not stop the exit)."""
    try:
        os.write(2, f"actorcore worker {os.getpid()} exits: {why}\n".encode())
    finally:
        os._exit(EXIT_FENCED)


def watch_daemon(
    ask: Callable[[float], float],
    ttl_s: float,
    exit_: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    stop: threading.Event | None = None,
    first_until: float | None = None,
    vouch: Vouch | None = None,
) -> threading.Thread:
    """Start a thread that ends this worker once its daemon stops vouching for it
    (``first_until``: the vouch the daemon gave at registration, on ``clock``).

    ``ask(timeout)`` asks the daemon (``CLUSTER_INFO vouch``) and returns the
    seconds it vouches for; it may raise. The thread asks every ``TTL/6`` and
    exits the process (``exit_``) when the last vouch has run out: the daemon
    is frozen, fenced or gone. A thread, not a loop task: a worker whose loop
    is busy still checks, and a worker whose loop is busy is not ended for it.
    ``vouch`` (if given) is kept up to date with the last vouch's end.
    """
    period = ttl_s / 6
    end = exit_ or exit_fenced
    halt = stop or threading.Event()
    held = vouch or Vouch()

    def run() -> None:
        try:
            watch()
        except BaseException as e:  # never serve unwatched: a broken watch ends the worker
            end(f"the watch on the node daemon failed: {e!r}")

    def watch() -> None:
        # until the first answer: what the daemon said at registration (or a short grace)
        until = held.until = first_until if first_until is not None else clock() + ttl_s / 2
        while not halt.is_set():
            sent = clock()
            try:
                left = float(ask(max(0.05, min(period, until - sent))))
                until = held.until = sent + left  # from the question: never past the daemon's
            except Exception:
                pass  # no answer: the last vouch stands until it runs out
            now = clock()
            if now >= until:
                end(f"the node daemon no longer vouches for this node ({now - until:.2f} s past)")
                return
            halt.wait(max(0.01, min(period, until - now)))  # the question's pacing

    thread = threading.Thread(target=run, name="actorcore-fence-watch", daemon=True)
    thread.start()
    return thread


def daemon_vouch_asker(connect: Callable[[], Any]) -> Callable[[float], float]:
    """``ask(timeout)`` for :func:`watch_daemon` over a blocking connection made by
    ``connect()`` (a :class:`~actorcore._sync_client.SyncClient` to the daemon),
    opened again after a failure."""
    from . import _protocol as P
    from ._rpc import error_from_reply, next_rid

    box: list[Any] = []
    connecting: list[threading.Thread] = []

    def open_() -> None:
        try:
            box[:] = [connect()]
        except Exception as e:
            logger.info("could not connect to the node daemon: %r", e)

    def ask(timeout: float) -> float:
        if not box or box[0].closed:
            # a frozen daemon never finishes the handshake: never wait past ``timeout``
            if not connecting or not connecting[0].is_alive():
                connecting[:] = [threading.Thread(target=open_, daemon=True)]
                connecting[0].start()
            connecting[0].join(timeout)
            if not box or box[0].closed:
                raise TimeoutError("no connection to the node daemon")
        client = box[0]
        client._sock.settimeout(timeout)
        reply = client.call(P.ClusterInfoMsg(next_rid(), "vouch"))
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        return float(reply.value)

    return ask
