"""One caller's calls to an actor with both sync and async methods run in the order
they were made (DESIGN 1); other callers are not held back; a held call can be
cancelled and fails with ActorDiedError when the actor is killed; streaming calls
keep the order too. On the module's shared node (``runtime``: 2 CPUs).
Mailbox unit tests of the rule: tests/test_worker_calls_unit.py."""

from __future__ import annotations

import threading

import pytest

import actorcore as ac
from actorcore.errors import ActorDiedError, TaskCancelledError


@ac.remote
class Gate:
    def __init__(self):
        self.ev = threading.Event()
        self.v = 0
        self.log = []

    def wait(self):
        return self.ev.wait(30)

    async def open(self):
        self.ev.set()
        return True

    def set(self, v):
        self.v = v

    async def aget(self):
        return self.v

    async def astream(self, n):
        for _ in range(n):
            yield self.v

    def stream_set(self, n):
        for i in range(n):
            self.v = i
            yield i

    def add(self, i):
        self.log.append(i)

    async def aadd(self, i):
        self.log.append(i)

    def read(self):
        return self.log


@ac.remote
class Opener:
    def open(self, gate):
        return ac.get(gate.open.remote(), timeout=20)


@pytest.mark.timeout(60)
def test_another_callers_call_is_not_held_behind_a_blocked_sync_call(runtime):
    g = Gate.options(num_cpus=0).remote()
    waiting = g.wait.remote()  # blocks its thread until another caller opens the gate
    opener = Opener.options(num_cpus=0).remote()
    assert ac.get(opener.open.remote(g), timeout=30) is True
    assert ac.get(waiting, timeout=30) is True
    g.set.remote(5)
    assert ac.get(g.aget.remote(), timeout=30) == 5
    ac.kill(opener)
    ac.kill(g)


@pytest.mark.timeout(60)
def test_a_held_call_can_be_cancelled_and_fails_when_the_actor_dies(runtime):
    g = Gate.options(num_cpus=0).remote()
    assert ac.get(g.aget.remote(), timeout=30) == 0  # up
    waiting = g.wait.remote()
    held = g.aget.remote()  # after the sync call before it: held until it ends
    ac.cancel(held)
    with pytest.raises(TaskCancelledError):
        ac.get(held, timeout=20)
    held2 = g.aget.remote()
    ac.kill(g)
    with pytest.raises(ActorDiedError):
        ac.get(held2, timeout=20)
    with pytest.raises(ActorDiedError):
        ac.get(waiting, timeout=20)


@pytest.mark.timeout(60)
def test_streaming_calls_keep_the_callers_order_across_the_kinds(runtime):
    g = Gate.options(num_cpus=0).remote()
    for i in range(1, 21):
        g.set.remote(i)
        got = [ac.get(r, timeout=30) for r in g.astream.options(num_returns="streaming").remote(2)]
        assert got == [i, i]
        gen = g.stream_set.options(num_returns="streaming").remote(3)  # (kept: not cancelled)
        assert ac.get(g.aget.remote(), timeout=30) == 2  # after the sync stream's end
        assert [ac.get(r, timeout=30) for r in gen] == [0, 1, 2]
    ac.kill(g)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_concurrency", [None, 1])
def test_pipelined_calls_of_both_kinds_run_in_the_order_made(runtime, max_concurrency):
    g = Gate.options(num_cpus=0, max_concurrency=max_concurrency).remote()
    pattern = [0, 1, 1, 0, 0, 1, 0, 1]  # 0: sync, 1: async; runs of each kind and alternation
    for i in range(400):
        (g.aadd if pattern[i % len(pattern)] else g.add).remote(i)
    assert ac.get(g.read.remote(), timeout=30) == list(range(400))
    ac.kill(g)
