"""Issue 14 item 2 probed as a new user would (only the public API and the OS):
a get of an object this process read before needs no daemon (the daemon is
SIGSTOPped while it is read again), from the driver, a worker and ``await``.
Each test has a node of its own."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from issue14_helpers import MiB, StoppedDaemon, daemon_pid, digest, run_in_thread

import actorcore as ac


@pytest.mark.timeout(90)
def test_repeated_get_of_200mib_needs_no_daemon(fresh_runtime):
    """Read once, drop the view; the daemon is then frozen: reading again must work."""
    fresh_runtime(num_cpus=1, object_store_memory=2 << 30)  # read cache: 256 MiB
    data = np.arange(200 * MiB, dtype=np.uint8)
    want = digest(data)
    ref = ac.put(data)
    del data
    first = ac.get(ref)
    assert digest(first) == want
    del first
    gc.collect()
    pid = daemon_pid()
    with StoppedDaemon(pid):
        done, v = run_in_thread(lambda: ac.get(ref, timeout=10), 15)
        assert done, "ac.get of an object read before waited for the (stopped) daemon"
        assert v.nbytes == 200 * MiB and int(v[12345]) == 12345 % 256
        # and many times, views dropped each time
        t0 = time.perf_counter()
        n = 0
        while n < 2000 and time.perf_counter() - t0 < 1.0:
            w = ac.get(ref)
            assert w.nbytes == 200 * MiB
            del w
            n += 1
        rate = n / (time.perf_counter() - t0)

        def from_threads() -> list[int]:
            got: list[int] = []
            ts = [
                threading.Thread(target=lambda: got.append(int(ac.get(ref, timeout=10)[-1])))
                for _ in range(4)
            ]
            for t in ts:
                t.start()
            for t in ts:
                t.join(10)
            return got

        done, got = run_in_thread(from_threads, 15)
        assert done and got == [(200 * MiB - 1) % 256] * 4, f"reads from 4 threads: {got}"
    assert digest(v) == want
    print(f"\nrepeated gets of 200 MiB (views dropped), daemon stopped: {rate:,.0f}/s")


@pytest.mark.timeout(90)
def test_get_from_a_worker_twice_needs_no_daemon_the_second_time(fresh_runtime):
    fresh_runtime(num_cpus=1, object_store_memory=512 * MiB)

    @ac.remote
    class Reader:
        def read(self, refs):
            v = ac.get(refs[0])
            return int(v[-1]), digest(v)

    r = Reader.remote()
    ref = ac.put(np.full(8 * MiB, 7, dtype=np.uint8))
    want = digest(np.full(8 * MiB, 7, dtype=np.uint8))
    assert ac.get(r.read.remote([ref]), timeout=30) == (7, want)
    # the actor call goes driver -> worker directly; only a store read would need the daemon
    with StoppedDaemon(daemon_pid()):
        done, got = run_in_thread(lambda: ac.get(r.read.remote([ref]), timeout=10), 15)
    assert done, "a worker's second read of an object waited for the (stopped) daemon"
    assert got == (7, want)
    ac.kill(r)


@pytest.mark.timeout(90)
def test_await_of_an_object_read_before_needs_no_daemon(fresh_runtime):
    """The async route (``await ref`` on a loop): the second read is a cache hit too."""
    import asyncio

    fresh_runtime(num_cpus=1, object_store_memory=512 * MiB)
    a = np.random.default_rng(3).integers(0, 256, 16 * MiB, dtype=np.uint8)
    want = digest(a)
    ref = ac.put(a)
    del a

    async def read() -> str:
        return digest(await ref)

    assert asyncio.run(read()) == want
    gc.collect()
    with StoppedDaemon(daemon_pid()):
        done, got = run_in_thread(lambda: asyncio.run(asyncio.wait_for(read(), 10)), 15)
    assert done, "await of an object read before waited for the (stopped) daemon"
    assert got == want
