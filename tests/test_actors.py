"""Actors (issue 2, item 4): mailboxes and call order, concurrency of sync and async
methods, packing of light actors, dedicated workers, handles, and errors.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import threading
import time

import pytest

import actorcore as ac
from actorcore.errors import ActorDiedError, TaskError
from actorcore.testing import list_state, wait_for


class AppError(ValueError):
    """A user exception (module level: workers import it by name)."""


class CodedError(Exception):
    """A user exception whose __init__ takes other arguments than its ``args``."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


@ac.remote
class Log:
    def __init__(self):
        self.items = []

    def append(self, x):
        self.items.append(x)
        return len(self.items)

    def read(self):
        return list(self.items)


@ac.remote
class AsyncLog:
    def __init__(self):
        self.items = []

    async def append(self, x):
        self.items.append(x)
        return len(self.items)

    async def read(self):
        return list(self.items)


@ac.remote
class SyncProbe:
    """Records how many calls run at the same time (sync methods)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.calls = 0

    def work(self, seconds):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(seconds)
        with self.lock:
            self.now -= 1
            self.calls += 1
        return True

    def stats(self):
        return self.peak, self.calls


@ac.remote
class AsyncProbe:
    """Records how many calls run at the same time (async methods)."""

    def __init__(self):
        self.now = 0
        self.peak = 0
        self.arrived = 0
        self.everyone = None

    async def work(self, seconds):
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1
        return True

    async def rendezvous(self, n):
        """Return only once ``n`` calls are inside this method at the same time."""
        if self.everyone is None:
            self.everyone = asyncio.Event()
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.arrived += 1
        if self.arrived >= n:
            self.everyone.set()
        try:
            await asyncio.wait_for(self.everyone.wait(), 20)
            return True
        except TimeoutError:
            return False
        finally:
            self.now -= 1

    async def stats(self):
        return self.peak


@ac.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def read(self):
        return self.n

    def pid(self):
        return os.getpid()

    def fail(self, code):
        err = AppError(f"bad request {code}")
        err.code = code
        raise err

    def fail_coded(self, code):
        raise CodedError(f"coded failure {code}", code)


@ac.remote
class Light:
    def pid(self):
        return os.getpid()


@ac.remote
class Caller:
    """Holds a handle to another actor and calls it."""

    def __init__(self, target):
        self.target = target

    def bump(self, k):
        return ac.get(self.target.incr.remote(k))

    async def bump_async(self, k):
        return await self.target.incr.remote(k)

    def bump_other(self, other, k):
        return ac.get(other.incr.remote(k))


@ac.remote
def bump_from_task(handle, k):
    return ac.get(handle.incr.remote(k))


@ac.remote
class BrokenInit:
    def __init__(self):
        raise RuntimeError("boom in __init__: config missing")

    def ping(self):
        return "pong"


# ===================================================================================


@pytest.mark.timeout(60)
def test_calls_from_one_caller_run_in_order_sync(runtime):
    log = Log.remote()
    refs = [log.append.remote(i) for i in range(1000)]
    assert ac.get(refs[-1], timeout=30) == 1000
    assert ac.get(log.read.remote(), timeout=30) == list(range(1000))
    assert ac.get(refs, timeout=30) == list(range(1, 1001))


@pytest.mark.timeout(60)
def test_calls_from_one_caller_run_in_order_async(runtime):
    log = AsyncLog.remote()
    refs = [log.append.remote(i) for i in range(1000)]
    assert ac.get(refs, timeout=30) == list(range(1, 1001))
    assert ac.get(log.read.remote(), timeout=30) == list(range(1000))


@pytest.mark.timeout(60)
async def test_calls_in_order_when_awaited_from_a_loop(runtime):
    log = Log.remote()
    refs = [log.append(i) for i in range(300)]
    assert await asyncio.gather(*refs) == list(range(1, 301))
    assert await log.read() == list(range(300))


@pytest.mark.timeout(60)
def test_each_caller_keeps_its_own_order(runtime):
    @ac.remote
    def feed(log, tag, n):
        return ac.get([log.append.remote((tag, i)) for i in range(n)])[-1]

    log = Log.remote()
    task_ref = feed.remote(log, "task", 300)
    driver_refs = [log.append.remote(("driver", i)) for i in range(300)]
    ac.get([*driver_refs, task_ref], timeout=30)
    items = ac.get(log.read.remote(), timeout=30)
    assert len(items) == 600
    for tag in ("task", "driver"):
        assert [i for t, i in items if t == tag] == list(range(300))


@pytest.mark.timeout(60)
def test_sync_methods_run_one_at_a_time(runtime):
    probe = SyncProbe.remote()

    @ac.remote
    def hammer(p, n):
        return all(ac.get([p.work.remote(0.01) for _ in range(n)]))

    refs = [probe.work.remote(0.01) for _ in range(20)]
    others = [hammer.remote(probe, 10) for _ in range(2)]
    assert all(ac.get(refs + others, timeout=45))
    peak, calls = ac.get(probe.stats.remote(), timeout=30)
    assert calls == 40
    assert peak == 1


@pytest.mark.timeout(60)
def test_async_methods_interleave_up_to_max_concurrency(runtime):
    probe = AsyncProbe.options(max_concurrency=4).remote()
    refs = [probe.work.remote(0.15) for _ in range(20)]
    assert all(ac.get(refs, timeout=30))
    assert ac.get(probe.stats.remote(), timeout=30) == 4


@pytest.mark.timeout(60)
def test_async_actor_default_allows_many_concurrent_calls(runtime):
    probe = AsyncProbe.remote()
    n = 200
    refs = [probe.rendezvous.remote(n) for _ in range(n)]
    assert ac.get(refs, timeout=45) == [True] * n
    assert ac.get(probe.stats.remote(), timeout=30) == n


@pytest.mark.timeout(60)
def test_max_concurrency_one_serializes_async_methods(runtime):
    probe = AsyncProbe.options(max_concurrency=1).remote()
    refs = [probe.work.remote(0.02) for _ in range(10)]
    assert all(ac.get(refs, timeout=30))
    assert ac.get(probe.stats.remote(), timeout=30) == 1


@pytest.mark.timeout(60)
def test_light_actors_are_packed_into_shared_workers(runtime):
    cpus = os.cpu_count() or 1
    handles = [Light.remote() for _ in range(2000)]
    pids = ac.get([h.pid.remote() for h in handles], timeout=45)
    assert len(pids) == 2000
    assert len(set(pids)) <= cpus + 2, f"{len(set(pids))} processes for 2000 light actors"
    workers = list_state("workers")
    hosting = [w for w in workers if w["actors"] > 0]
    assert len(hosting) <= cpus + 2
    assert sum(w["actors"] for w in hosting) >= 2000
    assert len(workers) < 50
    assert set(pids) <= {w["pid"] for w in hosting}
    # light actors hold no CPU
    assert ac.available_resources()["CPU"] == 2
    for h in handles:
        ac.kill(h)


@pytest.mark.timeout(60)
def test_actor_with_num_cpus_gets_a_worker_of_its_own(runtime):
    light = Light.remote()
    a = Counter.options(num_cpus=1).remote()
    b = Counter.options(num_cpus=1).remote()
    try:
        light_pid = ac.get(light.pid.remote(), timeout=30)
        a_pid, b_pid = ac.get([a.pid.remote(), b.pid.remote()], timeout=30)
        assert len({light_pid, a_pid, b_pid}) == 3
        assert ac.available_resources()["CPU"] == 0
        by_pid = {w["pid"]: w for w in list_state("workers")}
        for pid in (a_pid, b_pid):
            assert by_pid[pid]["actors"] == 1, by_pid[pid]
            assert by_pid[pid]["role"] != "shared", by_pid[pid]
    finally:
        ac.kill(a)
        ac.kill(b)
    wait_for(lambda: ac.available_resources()["CPU"] == 2, 15, what="CPUs given back")


@pytest.mark.timeout(60)
async def test_method_call_and_remote_both_return_objectrefs(runtime):
    c = Counter.remote(0)
    r1 = c.incr(1)
    r2 = c.incr.remote(2)
    assert isinstance(r1, ac.ObjectRef)
    assert isinstance(r2, ac.ObjectRef)
    assert await r1 == 1
    assert await r2 == 3
    assert await c.incr(3) == 6
    assert await c.read.remote() == 6


@pytest.mark.timeout(60)
def test_unknown_method_fails_at_the_call_site(runtime):
    c = Counter.remote(0)
    with pytest.raises(AttributeError, match="Counter") as info:
        c.no_such_method.remote()
    assert "no_such_method" in str(info.value)
    with pytest.raises(AttributeError, match="Counter"):
        c.no_such_method(1)
    # the actor is unaffected
    assert ac.get(c.incr.remote(), timeout=30) == 1


@pytest.mark.timeout(60)
def test_handles_pickle_and_pass_to_tasks_and_actors(runtime):
    c = Counter.remote(0)
    copy = pickle.loads(pickle.dumps(c))
    assert copy == c
    assert ac.get(copy.incr.remote(1), timeout=30) == 1

    assert ac.get(bump_from_task.remote(c, 10), timeout=30) == 11

    caller = Caller.remote(c)
    assert ac.get(caller.bump.remote(100), timeout=30) == 111
    assert ac.get(caller.bump_async.remote(1000), timeout=30) == 1111

    other = Counter.remote(5)
    assert ac.get(caller.bump_other.remote(other, 1), timeout=30) == 6

    # a handle inside a container
    @ac.remote
    def bump_all(handles):
        return [ac.get(h.incr.remote(1)) for h in handles]

    assert ac.get(bump_all.remote([c, other]), timeout=30) == [1112, 7]
    assert ac.get(c.read.remote(), timeout=30) == 1112


@pytest.mark.timeout(60)
def test_failed_init_makes_calls_fail_with_actor_died(runtime):
    bad = BrokenInit.remote()
    with pytest.raises(ActorDiedError, match="config missing") as info:
        ac.get(bad.ping.remote(), timeout=20)
    assert "__init__" in str(info.value)
    with pytest.raises(ActorDiedError):
        ac.get(bad.ping.remote(), timeout=20)


@pytest.mark.timeout(60)
async def test_failed_init_awaited(runtime):
    bad = BrokenInit.remote()
    with pytest.raises(ActorDiedError, match="config missing"):
        await asyncio.wait_for(bad.ping(), 20)


@pytest.mark.timeout(60)
def test_method_exception_is_task_error_and_user_class_and_actor_survives(runtime):
    c = Counter.remote(0)
    assert ac.get(c.incr.remote(5), timeout=30) == 5
    with pytest.raises(TaskError) as info:
        ac.get(c.fail.remote(42), timeout=30)
    err = info.value
    assert isinstance(err, AppError)
    assert isinstance(err, ValueError)
    assert err.code == 42
    assert "bad request 42" in str(err)
    assert "Traceback" in err.traceback_text
    assert "in fail" in err.traceback_text
    assert "AppError" in err.traceback_text
    # except clauses with the user's class work
    try:
        ac.get(c.fail.remote(7), timeout=30)
    except AppError as e:
        assert e.code == 7
    # the actor lives on with its state
    assert ac.get(c.incr.remote(1), timeout=30) == 6


@pytest.mark.timeout(60)
def test_exception_class_defined_in_a_function_is_kept(runtime):
    class LocalError(KeyError):
        pass

    @ac.remote
    class Raiser:
        def fail(self):
            raise LocalError("local failure")

        def ok(self):
            return "ok"

    r = Raiser.remote()
    with pytest.raises(TaskError) as info:
        ac.get(r.fail.remote(), timeout=30)
    assert "local failure" in str(info.value)
    assert isinstance(info.value, KeyError), type(info.value).__mro__
    assert ac.get(r.ok.remote(), timeout=30) == "ok"


@pytest.mark.timeout(60)
def test_exception_with_custom_init_arguments_is_kept(runtime):
    c = Counter.remote(0)
    with pytest.raises(TaskError) as info:
        ac.get(c.fail_coded.remote(9), timeout=30)
    err = info.value
    assert "coded failure 9" in str(err)
    assert "in fail_coded" in err.traceback_text
    assert isinstance(err, CodedError), type(err).__mro__
    assert err.code == 9
    assert ac.get(c.incr.remote(1), timeout=30) == 1


@pytest.mark.timeout(60)
async def test_method_exception_awaited(runtime):
    c = Counter.remote(0)
    with pytest.raises(AppError) as info:
        await c.fail(3)
    assert isinstance(info.value, TaskError)
    assert await c.incr(2) == 2


@pytest.mark.timeout(60)
def test_actor_ends_when_its_last_handle_is_dropped(runtime):
    c = Counter.remote(0)
    assert ac.get(c.incr.remote(), timeout=30) == 1
    aid = c.id.hex()

    def state():
        for a in list_state("actors"):
            if a["actor_id"] == aid:
                return a["state"]
        return None

    assert state() == "ALIVE"
    del c
    gc.collect()
    wait_for(lambda: state() in (None, "DEAD"), 15, what="actor ended after its handle was dropped")
