"""A one-at-a-time sync actor's idle thread reads its caller's next call itself
(issue 14, item 1; the ``actor_thread_reads`` setting, off by default): the loop
lends it the connection while it waits and gets it back before a method runs.
These tests check that the lending path is taken and that nothing it reads is
lost, reordered or left without an answer.
"""

from __future__ import annotations

import time

import pytest

import actorcore as ac
from actorcore.errors import ActorDiedError, TaskCancelledError, TaskError
from actorcore.testing import wait_for


@ac.remote
class Mixed:
    """Sync and async methods; created with max_concurrency=1: one at a time, in order."""

    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(x)
        return x

    async def add_async(self, x):
        self.items.append(x)
        return x

    def read(self):
        return list(self.items)

    def direct_reads(self):
        from actorcore import _global as G

        return sum(mb.read_direct for mb in G.runtime.mailboxes.values())

    def lending_state(self):  # (for a failure's message)
        from actorcore import _global as G

        rt = G.runtime
        boxes = [(mb.read_direct, mb._wait_skip, mb._late) for mb in rt.mailboxes.values()]
        conns = [(p.conn.lendable, p.conn._lent) for p in rt.peers.values() if p.conn]
        return {"mailboxes": boxes, "conns": conns, "waiting": rt.pool._waiting}

    def get_nested(self, boxed):
        return ac.get(boxed[0]) + 1  # a ref owned by the caller: fetched over the same connection

    def call_other(self, other, x):
        return ac.get(other.add.remote(x))

    def slow(self, s):
        time.sleep(s)
        return "slow"

    def fails(self):
        raise ValueError("boom")

    def stream(self, n):
        yield from range(n)


@ac.remote
class Caller:
    def __init__(self, target):
        self.target = target

    def hammer(self, start, n):
        return [ac.get(self.target.add.remote(start + i)) for i in range(n)]


@pytest.fixture(scope="module")
def rt():
    ac.init(num_cpus=4, actor_thread_reads=True)
    try:
        yield ac
    finally:
        ac.shutdown()


@pytest.mark.timeout(60)
def test_calls_one_at_a_time_are_read_by_the_actors_thread(rt):
    a = Mixed.options(max_concurrency=1).remote()
    assert [ac.get(a.add.remote(i)) for i in range(300)] == list(range(300))
    assert ac.get(a.read.remote()) == list(range(300))
    # at least some were taken off the socket by the actor's own thread (not all:
    # a call that comes in while the thread replies goes through the loop)
    assert ac.get(a.direct_reads.remote()) > 0, ac.get(a.lending_state.remote())


@pytest.mark.timeout(60)
def test_sync_and_async_calls_in_flight_keep_their_order(rt):
    a = Mixed.options(max_concurrency=1).remote()
    ac.get(a.add.remote(-1))  # the actor's thread now waits on this connection
    refs = []
    for i in range(400):
        refs.append(a.add_async.remote(i) if i % 7 == 3 else a.add.remote(i))
    assert ac.get(refs) == list(range(400))
    assert ac.get(a.read.remote()) == [-1, *range(400)]


@pytest.mark.timeout(60)
def test_an_async_call_that_came_in_while_a_sync_call_ran(rt):
    a = Mixed.options(max_concurrency=1).remote()
    for i in range(5):
        ac.get(a.add.remote(i))  # nothing queued: each reply lends the connection
        slow = a.slow.remote(0.2)
        after = a.add_async.remote(100 + i)  # queued while slow() runs
        assert ac.get([slow, after], timeout=30) == ["slow", 100 + i]


@pytest.mark.timeout(60)
def test_methods_that_wait_on_the_callers_connection(rt):
    a = Mixed.options(max_concurrency=1).remote()
    b = Mixed.options(max_concurrency=1).remote()
    ref = ac.put(41)
    for _ in range(20):
        assert ac.get(a.get_nested.remote([ref])) == 42
        assert ac.get(a.call_other.remote(b, 5)) == 5
    gen = a.stream.options(num_returns="streaming").remote(50)
    assert [ac.get(r) for r in gen] == list(range(50))
    with pytest.raises(TaskError):
        ac.get(a.fails.remote())
    assert ac.get(a.add.remote(1)) == 1


@pytest.mark.timeout(60)
def test_cancel_of_a_queued_call_while_one_runs(rt):
    a = Mixed.options(max_concurrency=1).remote()
    ac.get(a.add.remote(0))
    slow = a.slow.remote(1.0)
    queued = a.add.remote(99)
    ac.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ac.get(queued)
    assert ac.get(slow) == "slow"
    assert 99 not in ac.get(a.read.remote())


@pytest.mark.timeout(60)
def test_two_callers_and_a_caller_that_goes_away(rt):
    a = Mixed.options(max_concurrency=1).remote()
    c = Caller.remote(a)
    ref = c.hammer.remote(1000, 200)  # the caller's connection and the driver's, at once
    mine = [ac.get(a.add.remote(i)) for i in range(200)]
    assert mine == list(range(200))
    assert ac.get(ref) == list(range(1000, 1200))
    # the actor's thread now likely waits on the caller's connection
    ac.get(c.hammer.remote(2000, 5))
    ac.kill(c)
    with pytest.raises(ActorDiedError):
        wait_for(lambda: ac.get(c.hammer.remote(0, 1)) and False, timeout=20)
    assert ac.get(a.add.remote(7)) == 7  # the actor is fine, and served on the driver's connection
    items = ac.get(a.read.remote())
    assert sorted(items) == sorted([*range(200), *range(1000, 1200), *range(2000, 2005), 7])


@pytest.mark.timeout(60)
def test_calls_after_the_thread_gave_the_connection_back(rt):
    a = Mixed.options(max_concurrency=1).remote()
    for i in range(3):
        assert ac.get(a.add.remote(i)) == i
        time.sleep(0.4)  # not a synchronization: an idle gap longer than the thread waits
    assert ac.get(a.read.remote()) == [0, 1, 2]


@pytest.mark.timeout(60)
def test_killed_actor_answers_calls_already_sent(rt):
    a = Mixed.options(max_concurrency=1).remote()
    ac.get(a.add.remote(0))
    refs = [a.slow.remote(0.05) for _ in range(5)]
    ac.kill(a)
    for r in refs:
        try:
            assert ac.get(r, timeout=30) == "slow"
        except ActorDiedError:
            pass
    with pytest.raises(ActorDiedError):
        ac.get(a.add.remote(1), timeout=30)


@pytest.mark.timeout(60)
def test_switched_off_every_call_goes_through_the_loop(rt):
    """``actor_thread_reads=False`` (the default; ACTORCORE_ACTOR_THREAD_READS=1 turns
    it on): the loop reads every call; a runtime of its own (the module's has it on)."""
    import subprocess
    import sys

    code = (
        "import actorcore as ac\n"
        "from tests.test_actor_direct_read import Mixed\n"
        "ac.init(num_cpus=1, actor_thread_reads=False)\n"
        "a = Mixed.options(max_concurrency=1).remote()\n"
        "assert [ac.get(a.add.remote(i)) for i in range(100)] == list(range(100))\n"
        "print(ac.get(a.direct_reads.remote()))\n"
        "ac.shutdown()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "0", out.stdout + out.stderr
