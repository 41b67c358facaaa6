"""Tasks (issue 2, item 3): argument resolution, nested submission, blocking get in
tasks, async tasks, num_returns, retries.

Tests that start a node of their own come first: the module-scoped ``runtime``
fixture, once started, stays up until the end of this module.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import actorcore as ac
from actorcore.errors import ActorCoreError, BlockingCallError, TaskError
from actorcore.testing import wait_for

# --- remote functions and classes used below ---------------------------------------


@ac.remote
def add(a, b):
    return a + b


@ac.remote
def identity(x):
    return x


@ac.remote
def describe(*args, **kwargs):
    """Type names of what the task received (ObjectRefs stay ObjectRefs)."""
    return [type(a).__name__ for a in args], {k: type(v).__name__ for k, v in kwargs.items()}


@ac.remote
def fib(n):
    if n < 2:
        return n
    return ac.get(fib.remote(n - 1)) + ac.get(fib.remote(n - 2))


@ac.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@ac.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

    def read(self):
        return self.n


@ac.remote
class RefBox:
    """Hands refs from the driver to a task that is already running."""

    def __init__(self):
        self.started = False
        self.refs = None
        self.event = None

    async def start(self):
        self.started = True

    async def is_started(self):
        return self.started

    async def put_refs(self, refs):
        self.refs = refs
        self._event().set()

    async def take_refs(self):
        await asyncio.wait_for(self._event().wait(), 30)
        return self.refs

    def _event(self):
        if self.event is None:
            self.event = asyncio.Event()
        return self.event


class FlakyError(ValueError):
    pass


@ac.remote
def flaky(counter, succeed_at):
    """Raise FlakyError until the ``succeed_at``-th attempt (counted by ``counter``)."""
    attempt = ac.get(counter.incr.remote())
    if attempt < succeed_at:
        raise FlakyError(f"attempt {attempt}")
    return attempt


# ===================================================================================
# Tests with a node of their own (must run before the module-scoped runtime starts).
# ===================================================================================


@pytest.mark.timeout(90)
def test_recursive_blocking_get_on_one_cpu_does_not_deadlock(fresh_runtime):
    fresh_runtime(num_cpus=1)
    assert ac.get(fib.remote(8), timeout=60) == 21


@pytest.mark.timeout(60)
def test_task_waits_on_refs_submitted_by_the_driver_on_one_cpu(fresh_runtime):
    fresh_runtime(num_cpus=1)

    @ac.remote
    def consumer(box):
        ac.get(box.start.remote())
        refs = ac.get(box.take_refs.remote())  # a list of ObjectRefs: nested, not resolved
        assert all(isinstance(r, ac.ObjectRef) for r in refs)
        return sum(ac.get(refs))

    box = RefBox.remote()
    c = consumer.remote(box)
    # the consumer holds the only CPU and blocks; the producers must still run
    wait_for(lambda: ac.get(box.is_started.remote(), timeout=10), 30, what="consumer running")
    producers = [sleep_then.remote(0.05, i) for i in range(5)]
    ac.get(box.put_refs.remote(producers), timeout=30)
    assert ac.get(c, timeout=45) == sum(range(5))


# ===================================================================================
# The shared runtime (2 CPUs).
# ===================================================================================


@pytest.mark.timeout(60)
def test_top_level_refs_are_resolved_before_the_task_runs(runtime):
    r_task = add.remote(1, 2)
    r_put = ac.put(10)
    assert ac.get(add.remote(r_task, r_put), timeout=30) == 13
    types, kw = ac.get(describe.remote(r_task, 5, key=r_put), timeout=30)
    assert types == ["int", "int"]
    assert kw == {"key": "int"}
    # chained: each task sees the value of the previous one
    r = ac.put(0)
    for _ in range(10):
        r = add.remote(r, 1)
    assert ac.get(r, timeout=30) == 10
    # a large value (in the store) resolved as a top-level argument
    arr = np.arange(300_000, dtype=np.int64)
    ref = ac.put(arr)
    assert ac.get(identity.remote(ref), timeout=30).sum() == arr.sum()
    types, _ = ac.get(describe.remote(ref), timeout=30)
    assert types == ["ndarray"]


@pytest.mark.timeout(60)
def test_refs_nested_in_containers_arrive_as_refs(runtime):
    @ac.remote
    def use_nested(lst, dct):
        assert isinstance(lst[0], ac.ObjectRef), type(lst[0])
        assert isinstance(dct["k"], ac.ObjectRef), type(dct["k"])
        return ac.get(lst[0]) + ac.get(dct["k"]) + ac.get(lst[1])

    a = ac.put(1)
    b = add.remote(10, 10)
    c = ac.put(100)
    assert ac.get(use_nested.remote([a, c], {"k": b}), timeout=30) == 121
    types, _ = ac.get(describe.remote([a]), timeout=30)
    assert types == ["list"]


@pytest.mark.timeout(60)
def test_failed_dependency_fails_the_dependent_task(runtime):
    @ac.remote
    def boom():
        raise KeyError("upstream failure")

    @ac.remote
    def never(x):
        return "ran"

    down = never.remote(boom.remote())
    with pytest.raises(KeyError) as info:
        ac.get(down, timeout=30)
    assert isinstance(info.value, TaskError)
    assert "upstream failure" in str(info.value)


@pytest.mark.timeout(60)
def test_tasks_submit_tasks(runtime):
    @ac.remote
    def fan_out(n):
        return sum(ac.get([add.remote(i, i) for i in range(n)]))

    @ac.remote
    def two_levels(n):
        return ac.get(fan_out.remote(n)) + 1

    assert ac.get(fan_out.remote(10), timeout=30) == 90
    assert ac.get(two_levels.remote(5), timeout=30) == 21


@pytest.mark.timeout(60)
def test_actors_submit_tasks(runtime):
    @ac.remote
    class Submitter:
        def sync_sum(self, n):
            return sum(ac.get([add.remote(i, 1) for i in range(n)]))

        async def async_sum(self, n):
            return sum(await asyncio.gather(*[add.remote(i, 1) for i in range(n)]))

    @ac.remote
    class SyncSubmitter:
        def sum(self, n):
            return sum(ac.get([add.remote(i, 1) for i in range(n)]))

    s = Submitter.remote()
    assert ac.get(s.async_sum.remote(5), timeout=30) == 15
    assert ac.get(s.sync_sum.remote(4), timeout=30) == 10
    assert ac.get(SyncSubmitter.remote().sum.remote(5), timeout=30) == 15


@pytest.mark.timeout(60)
def test_blocking_get_inside_tasks_on_two_cpus(runtime):
    # more blocked parents than CPUs: each parent's get must free its CPU
    @ac.remote
    def parent(i):
        return ac.get(sleep_then.remote(0.05, i)) * 2

    refs = [parent.remote(i) for i in range(6)]
    assert ac.get(refs, timeout=45) == [2 * i for i in range(6)]
    assert ac.get(fib.remote(6), timeout=45) == 8


@pytest.mark.timeout(60)
def test_async_tasks_run_and_await_refs(runtime):
    @ac.remote
    async def async_double(x):
        await asyncio.sleep(0.01)
        return 2 * x

    @ac.remote
    async def async_sum_nested(refs):
        assert all(isinstance(r, ac.ObjectRef) for r in refs)
        values = await asyncio.gather(*refs)
        first = await refs[0]
        return sum(values) + first

    @ac.remote
    async def async_submits(n):
        return sum(await asyncio.gather(*[async_double.remote(i) for i in range(n)]))

    @ac.remote
    async def tries_blocking_get(ref):
        try:
            ac.get(ref)
        except BlockingCallError as e:
            return "await ref" in str(e)
        return "no error"

    assert ac.get(async_double.remote(21), timeout=30) == 42
    assert ac.get(async_double.remote(add.remote(1, 2)), timeout=30) == 6  # resolved top-level
    refs = [ac.put(1), add.remote(1, 1), async_double.remote(2)]
    assert ac.get(async_sum_nested.remote(refs), timeout=30) == 1 + 2 + 4 + 1
    assert ac.get(async_submits.remote(4), timeout=30) == 12
    assert ac.get(tries_blocking_get.remote([ac.put(1)]), timeout=30) is True


@pytest.mark.timeout(60)
def test_num_returns(runtime):
    @ac.remote(num_returns=2)
    def pair(x):
        return x, x + 1

    @ac.remote
    def triple():
        return 1, 2, 3

    r1, r2 = pair.remote(5)
    assert isinstance(r1, ac.ObjectRef) and isinstance(r2, ac.ObjectRef)
    assert r1 != r2
    assert ac.get([r1, r2], timeout=30) == [5, 6]
    a, b, c = triple.options(num_returns=3).remote()
    assert ac.get([c, b, a], timeout=30) == [3, 2, 1]
    one = triple.remote()
    assert isinstance(one, ac.ObjectRef)
    assert ac.get(one, timeout=30) == (1, 2, 3)

    # the wrong number of values is an error on both refs, not a hang
    x, y = triple.options(num_returns=2).remote()
    with pytest.raises(ActorCoreError):
        ac.get(x, timeout=30)
    with pytest.raises(ActorCoreError):
        ac.get(y, timeout=30)


@pytest.mark.timeout(60)
def test_task_that_raises_is_not_retried_by_default(runtime):
    counter = Counter.remote()
    with pytest.raises(FlakyError) as info:
        ac.get(flaky.remote(counter, 99), timeout=30)
    assert isinstance(info.value, TaskError)
    assert "attempt 1" in str(info.value)
    assert ac.get(counter.read.remote(), timeout=30) == 1

    # max_retries alone is about worker deaths, not exceptions
    counter2 = Counter.remote()
    with pytest.raises(FlakyError):
        ac.get(flaky.options(max_retries=5).remote(counter2, 99), timeout=30)
    assert ac.get(counter2.read.remote(), timeout=30) == 1


@pytest.mark.timeout(60)
def test_retry_exceptions_retries_up_to_max_retries(runtime):
    # always failing: 1 attempt + 2 retries, then the last error
    counter = Counter.remote()
    with pytest.raises(FlakyError) as info:
        ac.get(flaky.options(max_retries=2, retry_exceptions=True).remote(counter, 99), timeout=30)
    assert "attempt 3" in str(info.value)
    assert ac.get(counter.read.remote(), timeout=30) == 3

    # succeeds on the third attempt
    counter = Counter.remote()
    ref = flaky.options(max_retries=5, retry_exceptions=True).remote(counter, 3)
    assert ac.get(ref, timeout=30) == 3
    assert ac.get(counter.read.remote(), timeout=30) == 3

    # retry_exceptions with the default max_retries (3): 4 attempts
    counter = Counter.remote()
    with pytest.raises(FlakyError):
        ac.get(flaky.options(retry_exceptions=True).remote(counter, 99), timeout=30)
    assert ac.get(counter.read.remote(), timeout=30) == 4

    # max_retries=0: no retry even with retry_exceptions
    counter = Counter.remote()
    with pytest.raises(FlakyError):
        ac.get(flaky.options(max_retries=0, retry_exceptions=True).remote(counter, 99), timeout=30)
    assert ac.get(counter.read.remote(), timeout=30) == 1


@pytest.mark.timeout(60)
def test_short_task_is_not_stuck_behind_a_long_one_while_a_cpu_is_free(runtime):
    @ac.remote
    async def long_task():
        await asyncio.sleep(30)
        return "long"

    long_ref = long_task.remote()
    try:
        wait_for(lambda: ac.available_resources().get("CPU") == 1, 20, what="long task running")
        t0 = time.monotonic()
        # same function shape (1 CPU), one CPU free: it must not wait for the long task
        assert ac.get(add.remote(1, 1), timeout=10) == 2
        assert ac.get(sleep_then.remote(0, "x"), timeout=10) == "x"
        assert time.monotonic() - t0 < 10
    finally:
        ac.cancel(long_ref)
    wait_for(lambda: ac.available_resources().get("CPU") == 2, 15, what="CPUs given back")
