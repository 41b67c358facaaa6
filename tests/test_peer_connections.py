"""Connections between processes: to oneself, and two processes connecting at once."""

import pytest

import actorcore as ac
from actorcore.testing import list_state


@ac.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self, k=1):
        self.n += k
        return self.n


@ac.remote
class Caller:
    def __init__(self, target):
        self.target = target

    def bump(self, k):
        return ac.get(self.target.incr.remote(k))

    def call_back(self, other, k):
        return ac.get(other.bump.remote(k))


@pytest.mark.timeout(90)
def test_actor_calls_within_one_worker_and_crossing_calls(fresh_runtime):
    fresh_runtime(num_cpus=1)  # one shared host: every light actor in one process
    c = Counter.remote()
    caller = Caller.remote(c)
    assert ac.get([caller.bump.remote(1) for _ in range(50)], timeout=60)[-1] == 50
    hosts = {a["pid"] for a in list_state("actors") if a["state"] == "ALIVE"}
    assert len(hosts) == 1  # they did share a process: it called itself
    # two callers that call each other at the same moment (each can serve one call
    # while it waits on the other: single-threaded ones would deadlock, as in Ray)
    a = Caller.options(num_cpus=0.1, max_concurrency=2).remote(c)
    b = Caller.options(num_cpus=0.1, max_concurrency=2).remote(c)
    for _ in range(5):
        got = ac.get([a.call_back.remote(b, 1), b.call_back.remote(a, 1)], timeout=60)
        assert sorted(got)[1] == got[0] + 1 or sorted(got)[1] == got[1] + 1
    assert ac.get(c.incr.remote(0), timeout=30) == 60
