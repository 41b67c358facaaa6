"""Fencing: a node that may have lost its etcd lease stops serving, and the rule
that tells an etcd outage from its own partition.

The problem (DESIGN section 7, issue 10 items 2 and 5): the cluster declares a
node dead when its lease expires in etcd; its actors then restart elsewhere.
A node that is cut off from etcd (a network partition) or was paused (SIGSTOP,
a VM freeze) past the TTL must not go on answering as if alive, or an actor
would answer from two places. But a node cut off from etcd cannot tell by its
clock alone whether *it* is cut off (fence!) or etcd is down for everyone
(keep running: nobody can declare anybody dead while etcd is down, and etcd
extends every lease when it comes back).

**The rule.** ``last_ok`` is when the last lease refresh that etcd confirmed
was *sent* (etcd starts its TTL when it receives it, so etcd never expires the
lease before ``last_ok + TTL``: that instant, less a margin of ``TTL/8`` for a
busy machine to carry the kill out, is this node's *deadline*).

1. etcd answers that the lease is gone (a refresh finds it expired, or the
   watch shows this node's key deleted): **fence**, always.
2. No confirmed refresh for ``0.4 TTL`` (a refresh is due every ``TTL/3``):
   the node *suspects* and asks every live peer daemon "do you reach etcd?"
   (``CLUSTER_INFO etcd_reach``), then again every ``TTL/4``. The peer
   refreshes its own lease there and then (within ``TTL/8``) and answers
   yes if etcd confirmed it, or if etcd merely did not answer that fast (no
   error, a timeout) but confirmed a refresh less than ``0.4 TTL`` ago (etcd slow is no outage:
   when unsure, a peer says yes, the answer that never keeps a partitioned
   node running).
3. The verdict, peer by peer: a peer that reaches etcd means this node is the
   partitioned one; a peer that does not answer (timeout, unreachable network)
   might be reaching etcd and declaring us dead: either way **fence at the
   deadline** unless a refresh gets through first (etcd may just be coming
   back and this node's connection to it be the last to reconnect). A peer
   whose daemon is gone (connection refused) counts for nothing. If every
   other peer answered "no": **etcd outage**: keep running, ask again every
   ``TTL/4``; each confirmation moves the deadline to ``question + TTL``
   (etcd gives every lease a fresh TTL when it comes back, so a lease cannot
   expire sooner after an outage). A node with no live peer keeps running
   (nobody can take its work over without etcd) until rule 1.
4. The deadline passes without a confirmed refresh or outage: **fence**
   (safety over availability).

So a node keeps running without etcd only while *every* peer it knows
positively says that it cannot reach etcd either. The price: an etcd outage
together with a peer that hangs (not dead, not answering) fences everyone;
their work stops until etcd is back, none is duplicated.

**What fencing does** (:mod:`actorcore._node._daemon`, :mod:`actorcore._daemon`):
the daemon kills its workers and fork server at once (actors and tasks stop),
does not revoke the lost lease, drops its store (the arena goes with its
session: owners find those copies gone), and the process re-executes itself
with the same boot settings: a new node id, registered anew, that takes work.

**Workers follow their daemon** (:mod:`actorcore._vouch`): a worker of a
cluster node serves only while its daemon vouches for it (``CLUSTER_INFO
vouch``: seconds left before :attr:`FenceMonitor.deadline`); it exits by itself
when the vouch runs out, before etcd can expire the node's lease.

**Owners check the incarnation** (:mod:`actorcore._owner._actors`): each actor
call carries the epoch it is meant for and counts only from there; a worker
refuses a call meant for another epoch, and an owner that learns of a newer
epoch or of the node's death loses the calls in flight to the old one (retried
per ``max_task_retries`` or failed) and drops their late answers.

:class:`FenceMonitor` is the sans-IO state machine of the rule (events in,
instructions out, no clock of its own); :class:`Fencer` is its async shell
inside :class:`~actorcore._membership.Membership`.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AskPeers",
    "Fence",
    "FenceMonitor",
    "FenceState",
    "Fencer",
    "PeerAnswer",
    "classify_peer_error",
    "reexec_daemon",
    "wait_to_rejoin",
]

logger = logging.getLogger(__name__)


class FenceState(enum.Enum):
    OK = "ok"  # the lease was confirmed less than 0.4 TTL ago
    SUSPECT = "suspect"  # no confirmation for 0.4 TTL: asking the peers
    OUTAGE = "outage"  # every peer confirmed it cannot reach etcd either
    FENCED = "fenced"  # stop serving; rejoin as a new node


class PeerAnswer(enum.Enum):
    REACHES = "reaches"  # the peer reaches etcd: we are the partitioned one
    CUT_OFF = "cut_off"  # the peer does not reach etcd either
    SILENT = "silent"  # no answer (timeout, unreachable network): maybe it reaches etcd
    DOWN = "down"  # its daemon is not running (connection refused): it declares nothing


@dataclass(frozen=True, slots=True)
class AskPeers:
    """Ask every live peer daemon whether it reaches etcd; feed :meth:`FenceMonitor.verdict`."""

    round: int


@dataclass(frozen=True, slots=True)
class Fence:
    """Stop serving now: kill workers, drop objects, rejoin as a new node."""

    reason: str


@dataclass
class FenceMonitor:
    """The fencing rule as a state machine (see the module docstring).

    Times are seconds of one monotonic clock, given with every event.

    Args:
        ttl_s: the node lease's TTL.
        now: when the lease was granted (the first confirmation).
    """

    ttl_s: float
    now: float
    state: FenceState = FenceState.OK
    last_ok: float = field(init=False)
    confirmed_at: float = -1.0  # when the peers last all confirmed an etcd outage (asked then)
    reason: str = ""
    _round: int = 0
    _asked_at: float = -1.0
    _pending: int = -1  # the round whose answers are awaited (-1: none)
    _pending_asked: float = -1.0

    def __post_init__(self) -> None:
        self.last_ok = self.now

    @property
    def suspect_after(self) -> float:
        return self.ttl_s * 0.4  # a refresh is due every TTL/3: one missed, and some room

    @property
    def ask_every(self) -> float:
        return self.ttl_s / 4  # three questions before the deadline

    @property
    def margin(self) -> float:
        """Stop this much before etcd could expire the lease: room for a busy machine
        to deliver the kill (workers exit at the deadline by their own clock)."""
        return self.ttl_s / 8

    @property
    def deadline(self) -> float:
        """Serve until then at most without news: etcd cannot have expired the lease
        before ``last_ok + TTL`` (less :attr:`margin`); a confirmed outage extends it
        from the confirmation (etcd gives every lease a fresh TTL when it comes back)."""
        return max(self.last_ok, self.confirmed_at) + self.ttl_s - self.margin

    # --- events ------------------------------------------------------------------------------

    def refreshed(self, sent_at: float) -> list[Any]:
        """etcd confirmed a refresh (or a grant) sent at ``sent_at``."""
        if self.state is FenceState.FENCED:
            return []
        self.last_ok = max(self.last_ok, sent_at)
        if self.state is not FenceState.OK:
            logger.info("etcd answers again: the lease is confirmed (%s -> ok)", self.state.value)
        self.state = FenceState.OK
        self.confirmed_at = -1.0
        self._pending = -1
        self.reason = ""
        return []

    def lease_lost(self, why: str) -> list[Any]:
        """etcd says the lease is gone (rule 1)."""
        return self._fence(f"etcd says this node's lease is gone ({why})")

    def tick(self, now: float) -> list[Any]:
        """Time passed (call at least every ``TTL/6``)."""
        self.now = max(self.now, now)
        if self.state is FenceState.FENCED:
            return []
        if self.now >= self.deadline:  # rule 4
            why = self.reason or "no peer confirmed an etcd outage"
            return self._fence(
                f"no lease refresh confirmed for {self.now - self.last_ok:.1f} s "
                f"(TTL {self.ttl_s:g} s): {why}"
            )
        if self.state is FenceState.OK:
            if self.now - self.last_ok < self.suspect_after:
                return []
            self.state = FenceState.SUSPECT
            logger.warning(
                "no lease refresh confirmed for %.1f s: asking the peers whether they reach etcd",
                self.now - self.last_ok,
            )
            return self._ask()
        if self._pending < 0 and self.now - self._asked_at >= self.ask_every:
            return self._ask()  # suspect or outage: ask again every TTL/4
        return []

    def verdict(self, round_: int, answers: list[PeerAnswer], now: float) -> list[Any]:
        """The peers' answers to round ``round_`` (rule 3)."""
        self.now = max(self.now, now)
        if round_ != self._pending or self.state in (FenceState.FENCED, FenceState.OK):
            return []  # stale, or a refresh came through meanwhile
        self._pending = -1
        reaches, silent = answers.count(PeerAnswer.REACHES), answers.count(PeerAnswer.SILENT)
        if reaches or silent:
            # not an outage: serve until the deadline at most, unless a refresh gets through
            self.reason = (
                f"{reaches} peer(s) reach etcd while this node does not: partitioned"
                if reaches
                else f"{silent} peer(s) did not answer: they may reach etcd"
            )
            if self.state is not FenceState.SUSPECT:
                logger.warning("%s; fencing in %.1f s", self.reason, self.deadline - self.now)
            self.state = FenceState.SUSPECT
            return []
        if self.state is FenceState.SUSPECT:
            cut = answers.count(PeerAnswer.CUT_OFF)
            logger.warning(
                "etcd outage: %s; keeping on running",
                f"{cut} peer(s) cannot reach etcd either" if cut else "no live peer to ask",
            )
        self.state = FenceState.OUTAGE
        self.reason = ""
        self.confirmed_at = max(self.confirmed_at, self._pending_asked)
        return []

    # --- views ---------------------------------------------------------------------------------

    def vouch_remaining(self, now: float) -> float:
        """Seconds this node still vouches for its workers (0: stop serving)."""
        if self.state is FenceState.FENCED:
            return 0.0
        return max(0.0, self.deadline - now)

    def reaches_etcd(self, now: float) -> bool:
        """Whether this node's last confirmed refresh is recent (``suspect_after``)."""
        return self.state is FenceState.OK and now - self.last_ok < self.suspect_after

    # --- helpers -------------------------------------------------------------------------------

    def _ask(self) -> list[Any]:
        self._round += 1
        self._pending = self._round
        self._asked_at = self._pending_asked = self.now
        return [AskPeers(self._round)]

    def _fence(self, reason: str) -> list[Any]:
        if self.state is FenceState.FENCED:
            return []
        self.state = FenceState.FENCED
        self.reason = reason
        self._pending = -1
        logger.error("fencing this node: %s", reason)
        return [Fence(reason)]


def classify_peer_error(e: BaseException) -> PeerAnswer:
    """What a failed ``etcd_reach`` question says about the peer."""
    if isinstance(e, ConnectionRefusedError):
        return PeerAnswer.DOWN
    if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
        return PeerAnswer.DOWN
    return PeerAnswer.SILENT


# --- the shell -------------------------------------------------------------------------------


class Fencer:
    """Drives a :class:`FenceMonitor` for :class:`~actorcore._membership.Membership`.

    Args:
        ttl_s: the lease TTL.
        refresh: refreshes the lease; returns its remaining TTL (<= 0: gone).
        ask_peer: ``etcd_reach`` to one live peer: returns its reply (a dict).
        live_peers: the live peers' ids (this node excluded).
        on_fence: called once, with the reason, when the node must fence.
        clock: a monotonic clock (tests).
        own_refresh: refresh the lease here every TTL/3 (False: another refresher
            reports each confirmed refresh through :meth:`granted`).
    """

    def __init__(
        self,
        ttl_s: float,
        refresh: Callable[[], Awaitable[float]],
        ask_peer: Callable[[bytes], Awaitable[Any]],
        live_peers: Callable[[], list[bytes]],
        on_fence: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        own_refresh: bool = True,
    ) -> None:
        self.ttl_s = ttl_s
        self.monitor = FenceMonitor(ttl_s, clock())
        self._refresh = refresh
        self._ask_peer = ask_peer
        self._live_peers = live_peers
        self._on_fence = on_fence
        self._clock = clock
        self._own_refresh = own_refresh  # False: another refreshes and calls granted()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def fenced(self) -> bool:
        return self.monitor.state is FenceState.FENCED

    def granted(self, sent_at: float) -> None:
        """A (new) lease was granted by a call sent at ``sent_at``."""
        self.monitor.refreshed(sent_at)

    def lease_lost(self, why: str) -> None:
        self._carry_out(self.monitor.lease_lost(why))

    def vouch_remaining(self) -> float:
        return self.monitor.vouch_remaining(self._clock())

    async def reach_answer(self) -> dict[str, Any]:
        """This node's answer to a peer asking whether it reaches etcd: a refresh of
        its own lease made *now* (a peer that has not noticed an outage yet must
        not answer from its last success), bounded to answer in time."""
        reach = False
        if not self.fenced:
            sent = self._clock()
            try:
                ttl = await asyncio.wait_for(self._refresh(), self.ttl_s / 8)
            except TimeoutError:
                # etcd merely slow is not an outage: a recent success still says "reach"
                reach = self.monitor.reaches_etcd(self._clock())
                logger.info("asked by a peer: etcd did not answer in time; reach=%s", reach)
            except Exception as e:  # refused, unreachable: a definite no
                logger.info("asked by a peer: this node cannot reach etcd either (%r)", e)
            else:
                if ttl <= 0:
                    self.lease_lost("a refresh found it expired")
                else:
                    self._carry_out(self.monitor.refreshed(sent))
                    reach = True
        now = self._clock()
        return {
            "reach": reach,
            "age_s": now - self.monitor.last_ok,
            "state": self.monitor.state.value,
        }

    async def run(self) -> None:
        """Refresh the lease every TTL/3 and check the rule every TTL/6, until fenced."""
        step = self.ttl_s / 6
        next_refresh = self._clock()
        while not self.fenced:
            now = self._clock()
            if self._own_refresh and now >= next_refresh and not self._refreshing():
                next_refresh = now + self.ttl_s / 3
                self._spawn(self._refresh_once())
            self._carry_out(self.monitor.tick(now))
            await asyncio.sleep(step)  # the rule's pacing: a tick every TTL/6

    def _refreshing(self) -> bool:
        return any(t.get_name() == "fence-refresh" and not t.done() for t in self._tasks)

    async def _refresh_once(self) -> None:
        sent = self._clock()
        try:
            ttl = await asyncio.wait_for(self._refresh(), self.ttl_s / 3)
        except Exception as e:  # etcd unreachable or slow: the rule decides
            logger.warning("could not refresh this node's lease: %r", e)
            return
        if ttl <= 0:
            self.lease_lost("a refresh found it expired")
        else:
            self._carry_out(self.monitor.refreshed(sent))

    async def _ask_all(self, round_: int) -> None:
        peers = self._live_peers()
        timeout = self.ttl_s / 6
        replies = await asyncio.gather(
            *(asyncio.wait_for(self._ask_peer(p), timeout) for p in peers),
            return_exceptions=True,
        )
        answers = []
        for peer, r in zip(peers, replies, strict=True):
            if isinstance(r, BaseException):
                answer = classify_peer_error(r)
            elif isinstance(r, dict) and r.get("reach"):
                answer = PeerAnswer.REACHES
            else:
                answer = PeerAnswer.CUT_OFF
            logger.info("peer %s about etcd: %s (%r)", peer.hex(), answer.value, r)
            answers.append(answer)
        self._carry_out(self.monitor.verdict(round_, answers, self._clock()))

    def _carry_out(self, instrs: list[Any]) -> None:
        for ins in instrs:
            if isinstance(ins, AskPeers):
                self._spawn(self._ask_all(ins.round))
            elif isinstance(ins, Fence):
                self._on_fence(ins.reason)

    def _spawn(self, coro: Any) -> None:
        name = "fence-refresh" if coro.__name__ == "_refresh_once" else "fence-ask"
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_to_rejoin(
    join: Callable[[], Awaitable[None]],
    limit_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Join (``join()``) again and again until etcd answers (for up to ``limit_s``;
    None: forever): a join waits out an etcd outage, and a fenced daemon back as
    a new node may still be cut off (the partition that fenced it not healed).

    Raises:
        ControlStoreUnavailableError: etcd did not answer within ``limit_s``.
    """
    from actorcore.gcs import ControlStoreUnavailableError

    delay, since = 0.2, clock()
    while True:
        try:
            await join()
            return
        except (ControlStoreUnavailableError, TimeoutError, OSError) as e:
            waited = clock() - since
            if limit_s is not None and waited + delay > limit_s:
                raise
            logger.warning("cannot join the cluster yet (%.0f s): %r; trying again", waited, e)
        await asyncio.sleep(delay)  # backoff between attempts while etcd is away
        delay = min(2.0, delay * 2)


# --- the daemon's rebirth ------------------------------------------------------------------------


def reexec_daemon(boot: dict[str, Any], why: str) -> None:
    """Replace this (fenced) daemon process with a fresh one: same boot settings,
    same pid and session, a new node id (never returns).

    The boot line goes through stdin as the first start's did (an unlinked
    0600 temporary file: the token never shows on a command line or in a
    name); stdout and stderr go to /dev/null (the new daemon opens its own
    log). Every other descriptor closes on exec.
    """
    import json
    import sys
    import tempfile

    logger.error("node daemon restarting as a new node after fencing: %s", why)
    for h in logging.getLogger().handlers:
        h.flush()
    with tempfile.TemporaryFile() as f:  # unlinked at once; the descriptor stays open
        f.write((json.dumps(boot) + "\n").encode())
        f.flush()
        f.seek(0)
        os.dup2(f.fileno(), 0)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    argv = list(getattr(sys, "orig_argv", []) or [sys.executable, "-m", "actorcore._daemon"])
    os.execv(sys.executable, [sys.executable, *argv[1:]])
