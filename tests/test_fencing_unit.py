"""The fencing rule without sockets (actorcore._fencing): when a node that cannot
reach etcd keeps running (a confirmed etcd outage) and when it fences itself."""

from __future__ import annotations

import asyncio
import errno
import threading

import pytest

from actorcore._fencing import (
    AskPeers,
    Fence,
    FenceMonitor,
    Fencer,
    FenceState,
    PeerAnswer,
    classify_peer_error,
)
from actorcore._vouch import watch_daemon

TTL = 3.0
M = TTL / 8  # the safety margin before the lease could expire in etcd
R, C, S, D = PeerAnswer.REACHES, PeerAnswer.CUT_OFF, PeerAnswer.SILENT, PeerAnswer.DOWN


def suspect(m: FenceMonitor, at: float) -> int:
    out = m.tick(at)
    assert len(out) == 1 and isinstance(out[0], AskPeers), out
    assert m.state is FenceState.SUSPECT
    return out[0].round


def test_refreshes_keep_it_ok_and_vouch_moves_with_them():
    m = FenceMonitor(TTL, now=0.0)
    for t in (1.0, 2.0, 3.0, 4.0):
        assert m.refreshed(t) == []
        assert m.tick(t + 0.5) == []
    assert m.state is FenceState.OK
    assert m.vouch_remaining(4.5) == pytest.approx(2.5 - M)  # from the refresh *sent* at 4.0
    assert m.reaches_etcd(4.5)


def test_lease_lost_fences_always_even_in_an_outage():
    m = FenceMonitor(TTL, now=0.0)
    r = suspect(m, 1.5)
    m.verdict(r, [C, C], 1.6)
    assert m.state is FenceState.OUTAGE
    out = m.lease_lost("a refresh found it expired")
    assert out == [Fence(m.reason)] and "lease is gone" in m.reason
    assert m.vouch_remaining(1.7) == 0.0
    assert m.lease_lost("again") == [] and m.tick(9.0) == [] and m.refreshed(9.0) == []


def test_a_peer_that_reaches_etcd_means_we_are_partitioned():
    m = FenceMonitor(TTL, now=0.0)
    r = suspect(m, 1.5)
    assert m.verdict(r, [C, R], 1.7) == []  # serve until the deadline, no longer
    assert m.state is FenceState.SUSPECT and m.vouch_remaining(1.7) == pytest.approx(1.3 - M)
    assert all(not isinstance(i, Fence) for i in m.tick(2.6))
    out = m.tick(TTL - M)
    assert len(out) == 1 and isinstance(out[0], Fence) and "partitioned" in out[0].reason
    assert m.state is FenceState.FENCED and m.vouch_remaining(3.0) == 0.0


def test_a_refresh_before_the_deadline_saves_a_node_whose_peers_reach_etcd():
    m = FenceMonitor(TTL, now=0.0)
    m.verdict(suspect(m, 1.5), [R], 1.7)
    m.refreshed(2.5)  # its own connection to etcd came back in time
    assert m.state is FenceState.OK and m.tick(3.5) == []


def test_a_silent_peer_fences_but_a_dead_one_counts_for_nothing():
    m = FenceMonitor(TTL, now=0.0)
    assert m.verdict(suspect(m, 1.5), [C, S], 1.7) == []
    out = m.tick(3.0)
    assert isinstance(out[0], Fence) and "did not answer" in out[0].reason
    m = FenceMonitor(TTL, now=0.0)
    assert m.verdict(suspect(m, 1.5), [C, D], 1.7) == []
    assert m.state is FenceState.OUTAGE


def test_an_outage_confirmed_by_every_peer_keeps_it_running_past_the_deadline():
    m = FenceMonitor(TTL, now=0.0)
    assert m.verdict(suspect(m, 1.5), [C, C], 1.6) == []
    assert m.state is FenceState.OUTAGE and not m.reaches_etcd(1.6)
    # it asks again every TTL/3 and each confirmation extends the vouch, long past the deadline
    t, asked = 1.6, 0
    while t < 30.0:
        t += 0.5
        for ins in m.tick(t):
            assert isinstance(ins, AskPeers)
            asked += 1
            assert m.verdict(ins.round, [C, C], t + 0.1) == []
        assert m.state is FenceState.OUTAGE, t
        assert m.vouch_remaining(t) > 0
    assert asked >= 25
    # etcd is back: one confirmed refresh and all is well again
    m.refreshed(30.2)
    assert m.state is FenceState.OK and m.tick(30.5) == []


def test_an_outage_no_longer_confirmed_ends_in_a_fence_a_ttl_after_the_last_confirmation():
    m = FenceMonitor(TTL, now=0.0)
    m.verdict(suspect(m, 1.5), [C], 1.6)  # confirmed for the question asked at 1.5
    ask = m.tick(2.6)
    assert isinstance(ask[0], AskPeers)
    assert m.verdict(ask[0].round, [R], 2.7) == []  # the peer reaches etcd again, we do not
    assert not any(isinstance(i, Fence) for i in m.tick(4.1))
    out = m.tick(4.5 - M)  # 1.5 + TTL: etcd gave the lease a fresh TTL no earlier than that
    assert isinstance(out[0], Fence) and "partitioned" in out[0].reason


def test_no_verdict_by_the_deadline_fences():
    m = FenceMonitor(TTL, now=0.0)
    suspect(m, 1.5)
    assert m.tick(2.6) == []
    out = m.tick(TTL - M)
    assert isinstance(out[0], Fence) and "no peer confirmed" in out[0].reason


def test_a_suspect_node_asks_again_and_an_outage_confirmed_later_counts():
    m = FenceMonitor(TTL, now=0.0)
    m.verdict(suspect(m, 1.5), [S], 1.6)
    again = m.tick(2.5)
    assert isinstance(again[0], AskPeers)
    assert m.verdict(again[0].round, [C], 2.6) == []
    assert m.state is FenceState.OUTAGE
    assert not any(isinstance(i, Fence) for i in m.tick(3.5))  # past last_ok + TTL


def test_a_node_without_peers_keeps_running_until_etcd_says_otherwise():
    m = FenceMonitor(TTL, now=0.0)
    assert m.verdict(suspect(m, 1.5), [], 1.6) == []
    assert m.state is FenceState.OUTAGE


def test_stale_verdicts_and_a_refresh_during_the_question_are_ignored():
    m = FenceMonitor(TTL, now=0.0)
    r = suspect(m, 1.5)
    m.refreshed(1.4)  # the refresh sent before came back late: fine again
    assert m.state is FenceState.OK
    assert m.verdict(r, [R], 1.6) == []  # the question's answers no longer matter
    assert m.state is FenceState.OK
    r2 = suspect(m, 1.4 + 1.5)
    assert m.verdict(r2 - 1, [R], 3.0) == []  # an old round
    assert m.state is FenceState.SUSPECT


def test_peer_errors_are_classified():
    assert classify_peer_error(ConnectionRefusedError()) is D
    assert classify_peer_error(OSError(errno.ECONNREFUSED, "refused")) is D
    assert classify_peer_error(TimeoutError()) is S
    assert classify_peer_error(OSError(errno.ENETUNREACH, "unreachable")) is S
    assert classify_peer_error(LookupError("not live")) is S


# --- the shell with a fake etcd and fake peers (no sockets) ---------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def _drive(fencer: Fencer, clock: FakeClock, until: float, etcd_up: list[bool]) -> None:
    task = asyncio.ensure_future(fencer.run())
    try:
        while clock.t < until and not fencer.fenced:
            clock.t += TTL / 12
            for _ in range(5):
                await asyncio.sleep(0)  # let the fencer's tasks run (no I/O here)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await fencer.aclose()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("peers_reach", [True, False])
async def test_fencer_partition_fences_outage_keeps_running(monkeypatch, peers_reach):
    monkeypatch.setattr(asyncio, "sleep", _yield_sleep)
    clock = FakeClock()
    etcd_up = [True]
    fenced: list[str] = []

    async def refresh() -> float:
        if not etcd_up[0]:
            raise ConnectionError("etcd unreachable")
        return TTL

    async def ask(peer: bytes) -> dict:
        return {"reach": peers_reach}

    f = Fencer(TTL, refresh, ask, lambda: [b"p1", b"p2"], fenced.append, clock=clock)
    run = _drive(f, clock, 2 * TTL, etcd_up)
    etcd_up[0] = False
    await run
    if peers_reach:
        assert fenced and "partitioned" in fenced[0]
        assert f.vouch_remaining() == 0.0
    else:
        assert fenced == [] and f.monitor.state is FenceState.OUTAGE
        assert f.vouch_remaining() > 0


@pytest.mark.timeout(20)
async def test_fencer_fences_when_etcd_says_the_lease_expired(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _yield_sleep)
    clock = FakeClock()
    fenced: list[str] = []

    async def refresh() -> float:
        return -1  # etcd: no such lease

    async def ask(peer: bytes) -> dict:
        raise AssertionError("etcd answered: no need to ask anyone")

    f = Fencer(TTL, refresh, ask, lambda: [b"p1"], fenced.append, clock=clock)
    await _drive(f, clock, TTL, [True])
    assert len(fenced) == 1 and "expired" in fenced[0]


_real_sleep = asyncio.sleep


async def _yield_sleep(delay: float, result: object = None) -> object:
    return await _real_sleep(0, result)


# --- the worker's watch --------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_worker_watch_exits_once_the_vouch_runs_out():
    exited = threading.Event()
    why: list[str] = []
    answers = iter([0.3, 0.3, 0.3])

    def ask(timeout: float) -> float:
        try:
            return next(answers)
        except StopIteration:
            raise TimeoutError("the daemon is frozen") from None

    def exit_(reason: str) -> None:
        why.append(reason)
        exited.set()

    watch_daemon(ask, ttl_s=0.6, exit_=exit_)
    assert exited.wait(5.0), "the worker kept serving without a vouch"
    assert "no longer vouches" in why[0]


@pytest.mark.timeout(10)
def test_worker_watch_keeps_serving_while_vouched_and_exits_on_zero():
    stop = threading.Event()
    exited = threading.Event()
    asked = threading.Semaphore(0)
    left = [1.0]

    def ask(timeout: float) -> float:
        asked.release()
        return left[0]

    t = watch_daemon(ask, ttl_s=0.6, exit_=lambda r: exited.set(), stop=stop)
    for _ in range(5):
        assert asked.acquire(timeout=5.0)
    assert not exited.is_set()
    left[0] = 0.0  # the daemon fenced
    assert exited.wait(5.0)
    stop.set()
    t.join(5.0)


@pytest.mark.timeout(10)
async def test_a_peer_answers_reach_by_refreshing_now_and_says_yes_when_unsure():
    clock = FakeClock()
    mode = ["up"]

    async def refresh() -> float:
        if mode[0] == "down":
            raise ConnectionError("etcd unreachable")
        if mode[0] == "slow":
            await asyncio.Event().wait()  # never answers: the question's timeout ends it
        return TTL

    f = Fencer(TTL, refresh, _never, lambda: [], lambda why: None, clock=clock)
    assert (await f.reach_answer())["reach"] is True
    clock.t = 0.5
    mode[0] = "down"  # it has not noticed the outage yet, but must not answer from memory
    assert (await f.reach_answer())["reach"] is False
    mode[0] = "slow"  # etcd slow, a success 0.5 s ago: unsure, so yes (the safe answer)
    assert (await f.reach_answer())["reach"] is True
    clock.t = 0.5 + TTL * 0.4
    assert (await f.reach_answer())["reach"] is False


async def _never(peer: bytes) -> dict:
    raise AssertionError("not asked")
