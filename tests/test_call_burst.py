"""Bursts of actor calls from caller threads (issue 14, h15pipe): a thread that queues
many calls lets the runtime's loop send them as it goes (``ActorClients._hand_over``);
each caller's order holds, whatever the threads and the loop do meanwhile."""

from __future__ import annotations

import threading

import pytest

import actorcore as ac
from actorcore._owner import _actor_shell


@ac.remote
class Log:
    def __init__(self):
        self.items = []

    def append(self, x):
        self.items.append(x)
        return len(self.items)

    def read(self):
        return self.items


@pytest.mark.timeout(60)
def test_bursts_from_several_threads_keep_each_callers_order(runtime, monkeypatch):
    handed = []
    real = _actor_shell.ActorClients._hand_over

    def spy(self):
        handed.append(threading.get_ident())
        real(self)

    monkeypatch.setattr(_actor_shell.ActorClients, "_hand_over", spy)
    log = Log.remote()
    ac.get(log.read.remote(), timeout=30)
    n = 3 * _actor_shell.HAND_OVER
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def burst(tag: str) -> None:
        try:
            refs = [log.append.remote((tag, i)) for i in range(n)]
            results[tag] = ac.get(refs, timeout=30)
        except BaseException as e:  # (reported below)
            errors.append(e)

    threads = [threading.Thread(target=burst, args=(f"t{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    burst("main")
    for t in threads:
        t.join(30)
    assert not errors
    items = ac.get(log.read.remote(), timeout=30)
    assert len(items) == 4 * n
    for tag in ("main", "t0", "t1", "t2"):
        assert [i for t, i in items if t == tag] == list(range(n))
        assert results[tag] == sorted(results[tag])  # (each answer counts its position)
    assert handed  # the bursts did hand over to the loop


@pytest.mark.timeout(60)
async def test_a_burst_from_an_event_loop_thread_never_waits_for_the_runtime(runtime):
    log = Log.remote()
    await log.read()
    refs = [log.append(i) for i in range(3 * _actor_shell.HAND_OVER)]
    got = [await r for r in refs]
    assert got == list(range(1, len(refs) + 1))
    assert await log.read() == list(range(len(refs)))


@pytest.mark.timeout(60)
async def test_kill_from_an_event_loop_thread_still_kills(runtime):
    import asyncio
    import time

    from actorcore.errors import ActorDiedError

    log = Log.remote()
    assert await log.append(1) == 1
    ac.kill(log)
    deadline = time.monotonic() + 20
    while True:  # (each try waits for an answer: no sleep as synchronization)
        try:
            await asyncio.wait_for(log.read(), 10)
        except ActorDiedError:
            return
        assert time.monotonic() < deadline, "the actor killed from a loop thread still answers"
