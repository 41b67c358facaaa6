"""The public API (issue 2, item 2): init/shutdown, remote, ObjectRef, get/put/wait,
as_completed, cancel, kill, named actors, runtime context and resources.

Tests that start a node of their own come first: the module-scoped ``runtime``
fixture, once started, stays up until the end of this module.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pathlib
import pickle
import threading
import time

import pytest
import uvloop

import actorcore as ac
from actorcore.errors import (
    ActorCoreError,
    ActorDiedError,
    BlockingCallError,
    GetTimeoutError,
    TaskCancelledError,
)
from actorcore.testing import wait_for

# --- remote functions and classes used below (module level: pickled by reference) ---


@ac.remote
def add(a, b):
    return a + b


@ac.remote
async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


@ac.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@ac.remote
def sleep_then_stamp(seconds, value):
    time.sleep(seconds)
    return value, time.monotonic()


@ac.remote
async def async_sleep_then(seconds, value):
    await asyncio.sleep(seconds)
    return value


@ac.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def read(self):
        return self.n


@ac.remote
class Sleeper:
    def __init__(self):
        self.started = 0

    async def long(self, seconds):
        self.started += 1
        await asyncio.sleep(seconds)
        return "finished"

    async def started_count(self):
        return self.started

    async def ping(self):
        return "pong"


@ac.remote
def context_in_task():
    ctx = ac.get_runtime_context()
    return ctx.get_task_id(), ctx.get_actor_id()


@ac.remote
class ContextActor:
    def ids(self):
        ctx = ac.get_runtime_context()
        return ctx.get_task_id(), ctx.get_actor_id()


def _other_loop_kind(aloop: str) -> str:
    return "asyncio" if aloop == "uvloop" else "uvloop"


def _run_in_thread_loop(coro_fn, kind: str, timeout: float = 30.0):
    """Run ``coro_fn()`` on a new loop of ``kind`` in a new thread; return its result."""
    out: dict[str, object] = {}

    def target():
        loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
        try:
            out["value"] = loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
        except BaseException as e:  # reported to the test thread
            out["error"] = e
        finally:
            loop.close()

    t = threading.Thread(target=target)
    t.start()
    return t, out


# ===================================================================================
# Tests with a node of their own (must run before the module-scoped runtime starts).
# ===================================================================================


@pytest.mark.timeout(60)
def test_second_init_fails_unless_ignore_reinit_error(fresh_runtime):
    info = fresh_runtime(num_cpus=1)
    assert ac.is_initialized()
    assert info["address"] == info.address
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        ac.init(num_cpus=1)
    again = ac.init(num_cpus=1, ignore_reinit_error=True)
    assert again.node_id == info.node_id
    # the runtime still works after the refused re-init
    assert ac.get(add.remote(1, 2), timeout=30) == 3


@pytest.mark.timeout(60)
def test_shutdown_then_init_again(fresh_runtime):
    fresh_runtime(num_cpus=1)
    assert ac.get(add.remote(1, 1), timeout=30) == 2
    assert ac.shutdown() is None  # blocking in a plain (loop-less) thread
    assert not ac.is_initialized()
    fresh_runtime(num_cpus=1)
    assert ac.get(add.remote(2, 2), timeout=30) == 4


@pytest.mark.timeout(60)
async def test_init_and_shutdown_awaited_on_a_running_loop():
    assert not ac.is_initialized()
    pending = ac.init(num_cpus=1)
    try:
        assert inspect.isawaitable(pending), "init() on a loop thread must return an awaitable"
        info = await pending
        assert ac.is_initialized()
        assert info.node_id
        # a second awaited init fails the same way
        with pytest.raises(RuntimeError, match="ignore_reinit_error"):
            await ac.init(num_cpus=1)
        same = await ac.init(ignore_reinit_error=True)
        assert same.node_id == info.node_id
        assert await add.remote(20, 22) == 42
        assert await async_add.remote(1, 2) == 3
        # wait is awaited here too
        ref = add.remote(1, 1)
        ready, not_ready = await ac.wait([ref], num_returns=1, timeout=30)
        assert ready == [ref] and not_ready == []
        stopping = ac.shutdown()
        assert inspect.isawaitable(stopping), "shutdown() on a loop thread must return an awaitable"
        await stopping
        assert not ac.is_initialized()
    finally:
        if ac.is_initialized():
            r = ac.shutdown()
            if inspect.isawaitable(r):
                await r


@pytest.mark.timeout(90)
def test_init_resources_custom_and_infeasible(fresh_runtime):
    fresh_runtime(num_cpus=3, num_gpus=1, resources={"disk": 2, "fpga": 1})
    total = ac.cluster_resources()
    assert total["CPU"] == 3
    assert total["GPU"] == 1
    assert total["disk"] == 2
    assert total["fpga"] == 1
    avail = wait_for(lambda: (a := ac.available_resources()).get("disk") == 2 and a, 10)
    assert avail["CPU"] == 3 and avail["GPU"] == 1
    nodes = ac.nodes()
    assert len(nodes) == 1
    assert nodes[0]["Alive"] is True
    assert nodes[0]["Resources"]["CPU"] == 3
    assert nodes[0]["Resources"]["disk"] == 2

    # a task needing a custom resource runs
    assert ac.get(add.options(resources={"disk": 1}).remote(1, 2), timeout=30) == 3
    assert ac.get(add.options(num_gpus=1).remote(2, 2), timeout=30) == 4

    # while a task holds the resource, it is not available
    holder = async_sleep_then.options(resources={"disk": 2}).remote(1.5, "held")
    wait_for(lambda: ac.available_resources().get("disk") == 0, 10, what="disk taken")
    assert ac.get(holder, timeout=30) == "held"
    wait_for(lambda: ac.available_resources().get("disk") == 2, 10, what="disk given back")

    # a task needing a resource nobody has waits; it does not fail
    stuck = add.options(resources={"unobtainium": 1}).remote(1, 1)
    with pytest.raises(GetTimeoutError):
        ac.get(stuck, timeout=1.0)
    # more of a resource than the node has also waits
    too_many = add.options(resources={"disk": 5}).remote(1, 1)
    ready, not_ready = ac.wait([too_many], num_returns=1, timeout=0.5)
    assert ready == [] and not_ready == [too_many]
    # other work is not held up by the waiting tasks
    assert ac.get(add.remote(5, 5), timeout=30) == 10
    ac.cancel(stuck)
    ac.cancel(too_many)
    with pytest.raises(TaskCancelledError):
        ac.get(stuck, timeout=10)
    with pytest.raises(TaskCancelledError):
        ac.get(too_many, timeout=10)


# ===================================================================================
# Call-site checks: no runtime needed.
# ===================================================================================


def test_calling_a_remote_function_directly_raises_typeerror():
    with pytest.raises(TypeError, match=r"\.remote"):
        add(1, 2)
    with pytest.raises(TypeError, match=r"\.remote"):
        async_add(1, 2)
    with pytest.raises(TypeError, match=r"\.remote"):
        Counter()


def test_unknown_options_raise_typeerror_at_the_call_site():
    with pytest.raises(TypeError, match="num_cpu"):

        @ac.remote(num_cpu=1)  # typo of num_cpus
        def f():
            return 1

    with pytest.raises(TypeError, match="bogus"):
        add.options(bogus=True)
    with pytest.raises(TypeError, match="bogus"):
        Counter.options(bogus=True)
    with pytest.raises(TypeError, match="max_concurrency"):
        add.options(max_concurrency=3)  # an actor option, not a task option


def test_remote_decorator_forms():
    @ac.remote
    def plain():
        return 1

    @ac.remote(num_cpus=0.5, max_retries=1)
    def with_opts():
        return 1

    @ac.remote
    async def coro():
        return 1

    @ac.remote(max_concurrency=2)
    class K:
        pass

    assert isinstance(plain, ac.RemoteFunction)
    assert isinstance(with_opts, ac.RemoteFunction)
    assert isinstance(coro, ac.RemoteFunction)
    assert isinstance(K, ac.ActorClass)
    assert isinstance(add.options(num_cpus=1), ac.RemoteFunction)
    assert isinstance(Counter.options(name="x"), ac.ActorClass)


# ===================================================================================
# The shared runtime (2 CPUs).
# ===================================================================================


@pytest.mark.timeout(60)
def test_remote_def_async_def_class_and_options(runtime):
    assert ac.get(add.remote(1, 2), timeout=30) == 3
    assert ac.get(async_add.remote(3, 4), timeout=30) == 7
    assert ac.get(add.options(num_cpus=0.5).remote(5, 6), timeout=30) == 11
    r1, r2 = add.options(num_returns=1).remote(1, 1), async_add.options(num_cpus=1).remote(2, 2)
    assert ac.get([r1, r2], timeout=30) == [2, 4]
    c = Counter.remote(10)
    assert isinstance(c, ac.ActorHandle)
    assert ac.get(c.incr.remote(5), timeout=30) == 15
    c2 = Counter.options(max_concurrency=1).remote(1)
    assert ac.get(c2.read.remote(), timeout=30) == 1


@pytest.mark.timeout(60)
async def test_objectref_awaitable_many_times(runtime):
    ref = add.remote(2, 3)
    assert isinstance(ref, ac.ObjectRef)
    assert await ref == 5
    assert await ref == 5
    assert await ref == 5
    p = ac.put({"a": 1})
    assert isinstance(p, ac.ObjectRef)
    assert await p == {"a": 1}
    assert await p == {"a": 1}


@pytest.mark.timeout(60)
async def test_objectref_awaited_from_another_loop_in_another_thread(runtime, aloop):
    ready = add.remote(1, 2)
    assert await ready == 3
    pending = sleep_then.remote(0.5, "late")  # still running when the other loop awaits it

    async def other():
        return await ready, await pending

    t, out = _run_in_thread_loop(other, _other_loop_kind(aloop))
    # this loop keeps awaiting the same pending ref concurrently
    assert await pending == "late"
    await asyncio.get_running_loop().run_in_executor(None, t.join, 30)
    assert not t.is_alive()
    assert "error" not in out, out.get("error")
    assert out["value"] == (3, "late")


@pytest.mark.timeout(60)
def test_objectref_awaited_from_two_thread_loops_without_a_driver_loop(runtime):
    pending = sleep_then.remote(0.5, "v")

    async def other():
        return await pending

    t1, out1 = _run_in_thread_loop(other, "asyncio")
    t2, out2 = _run_in_thread_loop(other, "uvloop")
    t1.join(30)
    t2.join(30)
    assert out1.get("value") == "v", out1
    assert out2.get("value") == "v", out2
    assert ac.get(pending, timeout=10) == "v"


@pytest.mark.timeout(60)
def test_objectref_pickles_as_a_reference(runtime):
    ref = add.remote(40, 2)
    blob = pickle.dumps(ref)
    copy = pickle.loads(blob)
    assert copy == ref
    assert hash(copy) == hash(ref)
    assert copy is not ref
    del ref
    assert ac.get(copy, timeout=30) == 42

    big = ac.put(list(range(50_000)))  # past the inline threshold
    copy_big = pickle.loads(pickle.dumps(big))
    assert copy_big == big
    del big
    assert ac.get(copy_big, timeout=30)[-1] == 49_999


@pytest.mark.timeout(60)
async def test_objectref_with_gather_wait_for_and_shield(runtime):
    refs = [add.remote(i, i) for i in range(5)]
    assert await asyncio.gather(*refs) == [0, 2, 4, 6, 8]
    assert await asyncio.wait_for(add.remote(1, 1), 30) == 2
    assert await asyncio.shield(add.remote(2, 2)) == 4

    slow = async_sleep_then.remote(0.8, "slow")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(slow, 0.05)
    # the timed-out await cancelled only the waiting, not the ref
    assert await asyncio.wait_for(slow, 30) == "slow"

    slow2 = async_sleep_then.remote(0.5, "shielded")
    outer = asyncio.ensure_future(asyncio.shield(slow2))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert await slow2 == "shielded"


@pytest.mark.timeout(60)
def test_get_single_list_and_timeout(runtime):
    assert ac.get(add.remote(1, 2), timeout=30) == 3
    refs = [add.remote(i, 1) for i in range(10)]
    assert ac.get(refs, timeout=30) == list(range(1, 11))
    assert ac.get([], timeout=1) == []
    slow = async_sleep_then.remote(30, "never")
    try:
        t0 = time.monotonic()
        with pytest.raises(GetTimeoutError) as info:
            ac.get(slow, timeout=0.3)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, ActorCoreError)
        assert 0.25 <= time.monotonic() - t0 < 10
        with pytest.raises(TimeoutError):
            ac.get([ac.put(1), slow], timeout=0.2)
    finally:
        ac.cancel(slow)
    with pytest.raises(TaskCancelledError):
        ac.get(slow, timeout=10)


@pytest.mark.timeout(60)
async def test_get_on_a_running_loop_raises_blocking_call_error(runtime):
    ref = add.remote(1, 2)
    with pytest.raises(BlockingCallError, match="await ref"):
        ac.get(ref)
    with pytest.raises(BlockingCallError):
        ac.get([ref], timeout=1)
    assert await ref == 3


@pytest.mark.timeout(60)
async def test_put_returns_a_ref_at_once_on_a_loop(runtime):
    ref = ac.put([1, 2, 3])
    assert isinstance(ref, ac.ObjectRef)
    assert await ref == [1, 2, 3]
    assert await add.remote(ref, [4]) == [1, 2, 3, 4]


@pytest.mark.timeout(60)
def test_put_and_get(runtime):
    value = {"k": list(range(10)), "s": "x" * 200_000}  # the string makes it a store object
    ref = ac.put(value)
    assert ac.get(ref, timeout=30) == value
    assert ac.get(ac.put(None), timeout=30) is None
    assert ac.get(add.remote(ac.put(1), ac.put(2)), timeout=30) == 3


@pytest.mark.timeout(60)
def test_wait_blocking_preserves_order(runtime):
    refs = [sleep_then.remote(0.6, "a"), add.remote(0, 1), sleep_then.remote(0.2, "c")]
    ready, not_ready = ac.wait(refs, num_returns=3, timeout=30)
    assert ready == refs  # input order, not completion order
    assert not_ready == []

    # (the fast ones finish before the slow one is submitted: this test is about
    # wait(), not about scheduling; see test_tasks for the latter)
    fast1, fast2 = add.remote(1, 1), add.remote(2, 2)
    ac.get([fast1, fast2], timeout=30)
    slow = async_sleep_then.remote(30, "slow")
    try:
        ready, not_ready = ac.wait([slow, fast1, fast2], num_returns=2, timeout=30)
        assert ready == [fast1, fast2]
        assert not_ready == [slow]
        ready, not_ready = ac.wait([fast2, slow, fast1], num_returns=1, timeout=30)
        assert ready == [fast2] and not_ready == [slow, fast1]

        t0 = time.monotonic()
        ready, not_ready = ac.wait([slow], num_returns=1, timeout=0.3)
        assert ready == [] and not_ready == [slow]
        assert 0.25 <= time.monotonic() - t0 < 10
        with pytest.raises(ValueError):
            ac.wait([fast1, fast1], num_returns=1)
        with pytest.raises(TypeError):
            ac.wait(["not a ref"], num_returns=1)
    finally:
        ac.cancel(slow)


@pytest.mark.timeout(60)
async def test_wait_awaited_preserves_order(runtime):
    refs = [sleep_then.remote(0.5, "a"), add.remote(0, 1), sleep_then.remote(0.2, "c")]
    pending = ac.wait(refs, num_returns=3, timeout=30)
    assert inspect.isawaitable(pending)
    ready, not_ready = await pending
    assert ready == refs and not_ready == []

    fast = add.remote(1, 1)
    assert await fast == 2
    slow = async_sleep_then.remote(30, "slow")
    try:
        ready, not_ready = await ac.wait([slow, fast], num_returns=1, timeout=30)
        assert ready == [fast] and not_ready == [slow]
        t0 = time.monotonic()
        ready, not_ready = await ac.wait([slow, fast], num_returns=2, timeout=0.3)
        assert ready == [fast] and not_ready == [slow]
        assert 0.25 <= time.monotonic() - t0 < 10
    finally:
        ac.cancel(slow)
    with pytest.raises(TaskCancelledError):
        await asyncio.wait_for(slow, 10)


@ac.remote
def stamp_when_told(path, value):
    while not os.path.exists(path):
        time.sleep(0.01)  # inside a task: a poll of the test's go signal
    return value, time.monotonic()


@pytest.mark.timeout(60)
async def test_as_completed_yields_in_completion_order(runtime, tmp_path):
    # distinct resource shapes: each task gets a worker of its own, so the three
    # run side by side whatever the submitter's pipelining does (see test_tasks);
    # the test, not the clock, decides the order in which they finish
    cpus = [0.5, 0.6, 0.7]
    go = [tmp_path / f"go{i}" for i in range(3)]
    refs = [
        stamp_when_told.options(num_cpus=c).remote(str(p), i)
        for i, (p, c) in enumerate(zip(go, cpus, strict=True))
    ]
    it = ac.as_completed(refs)
    assert hasattr(it, "__aiter__")
    yielded = []
    for i in (1, 2, 0):
        go[i].touch()
        ref = await asyncio.wait_for(it.__anext__(), 30)
        assert isinstance(ref, ac.ObjectRef)
        yielded.append(ref)
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()
    assert sorted(yielded, key=refs.index) == refs  # each ref exactly once
    results = [await r for r in yielded]
    order = [i for i, _ in results]
    stamps = [t for _, t in results]
    assert stamps == sorted(stamps), f"yielded {order} out of completion order"
    assert order == [1, 2, 0]


@pytest.mark.timeout(60)
async def test_as_completed_on_an_async_actor(runtime):
    @ac.remote
    class Gate:
        def __init__(self):
            self.events = {}

        def _event(self, i):
            return self.events.setdefault(i, asyncio.Event())

        async def after(self, i):
            await self._event(i).wait()
            return i

        async def open(self, i):
            self._event(i).set()

    g = Gate.remote()
    refs = [g.after.remote(i) for i in range(4)]
    it = ac.as_completed(refs)
    got = []
    for i in (1, 3, 2, 0):
        await g.open.remote(i)
        got.append(await (await asyncio.wait_for(it.__anext__(), 30)))
    assert got == [1, 3, 2, 0]


@ac.remote
def mark(path):
    open(path, "w").close()
    return "ran"


@pytest.mark.timeout(60)
def test_cancel_a_queued_task(runtime, tmp_path):
    blocker = async_sleep_then.options(num_cpus=2).remote(30, "blocker")
    same_shape = other_shape = None
    try:
        wait_for(lambda: ac.available_resources().get("CPU") == 0, 20, what="both CPUs busy")
        # one queued behind the blocker for the same shape, one waiting for a CPU
        same_shape = mark.options(num_cpus=2).remote(str(tmp_path / "same"))
        other_shape = mark.remote(str(tmp_path / "other"))
        with pytest.raises(GetTimeoutError):
            ac.get([same_shape, other_shape], timeout=0.2)
        ac.cancel(same_shape)
        ac.cancel(other_shape)
        with pytest.raises(TaskCancelledError):
            ac.get(same_shape, timeout=10)
        with pytest.raises(TaskCancelledError):
            ac.get(other_shape, timeout=10)
    finally:
        ac.cancel(blocker)
    with pytest.raises(TaskCancelledError):
        ac.get(blocker, timeout=10)
    # tasks submitted after them run; the cancelled ones never do
    assert ac.get(mark.options(num_cpus=2).remote(str(tmp_path / "later2")), timeout=30) == "ran"
    assert ac.get(mark.remote(str(tmp_path / "later1")), timeout=30) == "ran"
    assert not (tmp_path / "same").exists()
    assert not (tmp_path / "other").exists()
    wait_for(lambda: ac.available_resources().get("CPU") == 2, 10, what="CPUs given back")


@pytest.mark.timeout(60)
def test_cancel_a_running_sync_task(runtime, tmp_path):
    @ac.remote
    def spin(path):
        open(path, "w").close()
        for _ in range(600):
            time.sleep(0.05)
        return "not cancelled"

    marker = tmp_path / "started"
    ref = spin.remote(str(marker))
    try:
        wait_for(marker.exists, 20, what="task started")
    finally:
        ac.cancel(ref)
    t0 = time.monotonic()
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=15)
    assert time.monotonic() - t0 < 15
    assert ac.get(add.remote(2, 3), timeout=30) == 5
    wait_for(lambda: ac.available_resources().get("CPU") == 2, 10, what="CPU given back")


@pytest.mark.timeout(60)
def test_cancel_a_running_async_task(runtime, tmp_path):
    @ac.remote
    async def wait_long(path):
        pathlib.Path(path).touch()  # noqa: ASYNC240 (tiny; marks the task as started)
        await asyncio.sleep(60)
        return "not cancelled"

    marker = tmp_path / "started"
    ref = wait_long.remote(str(marker))
    try:
        wait_for(marker.exists, 20, what="task started")
    finally:
        ac.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=10)
    assert ac.get(add.remote(2, 3), timeout=30) == 5


@pytest.mark.timeout(60)
def test_cancel_a_running_async_actor_call(runtime):
    s = Sleeper.remote()
    ref = s.long.remote(60)
    try:
        wait_for(lambda: ac.get(s.started_count.remote(), timeout=10) == 1, 20, what="call started")
    finally:
        ac.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=10)
    # the actor lives on
    assert ac.get(s.ping.remote(), timeout=10) == "pong"
    assert ac.get(s.long.remote(0), timeout=10) == "finished"


@pytest.mark.timeout(60)
def test_cancel_rejects_non_refs(runtime):
    with pytest.raises(TypeError):
        ac.cancel("not a ref")


@pytest.mark.timeout(60)
def test_kill_makes_later_calls_fail_with_actor_died(runtime):
    c = Counter.remote(0)
    assert ac.get(c.incr.remote(), timeout=30) == 1
    ac.kill(c)
    with pytest.raises(ActorDiedError):
        ac.get(c.incr.remote(), timeout=15)
    with pytest.raises(ActorDiedError):
        ac.get(c.read.remote(), timeout=15)
    with pytest.raises(TypeError):
        ac.kill("not a handle")


@pytest.mark.timeout(60)
def test_named_actors_and_namespaces(runtime):
    a = Counter.options(name="hits", namespace="ns-a").remote(100)
    b = Counter.options(name="hits", namespace="ns-b").remote(200)
    try:
        ha = ac.get_actor("hits", namespace="ns-a")
        hb = ac.get_actor("hits", namespace="ns-b")
        assert ha == a and hb == b
        assert ha != hb
        assert ac.get(ha.incr.remote(1), timeout=30) == 101
        assert ac.get(hb.incr.remote(1), timeout=30) == 201
        assert ac.get(a.read.remote(), timeout=30) == 101

        with pytest.raises(ValueError):
            ac.get_actor("hits", namespace="ns-c")
        with pytest.raises(ValueError):
            ac.get_actor("no-such-actor")
        with pytest.raises(ValueError):
            Counter.options(name="hits", namespace="ns-a").remote(0)

        same = Counter.options(name="hits", namespace="ns-a", get_if_exists=True).remote(999)
        assert same == a
        assert ac.get(same.incr.remote(1), timeout=30) == 102
    finally:
        ac.kill(a)
        ac.kill(b)


@pytest.mark.timeout(60)
def test_named_actor_in_the_default_namespace(runtime):
    c = Counter.options(name="default-named").remote(7)
    try:
        h = ac.get_actor("default-named")
        assert h == c
        assert ac.get(h.read.remote(), timeout=30) == 7
        with pytest.raises(ValueError):
            ac.get_actor("default-named", namespace="elsewhere")
    finally:
        ac.kill(c)
    # once killed, the name is free again
    wait_for(lambda: _missing("default-named"), 10, what="name released")
    c2 = Counter.options(name="default-named").remote(8)
    assert ac.get(ac.get_actor("default-named").read.remote(), timeout=30) == 8
    ac.kill(c2)


def _missing(name):
    try:
        ac.get_actor(name)
    except ValueError:
        return True
    return False


@pytest.mark.timeout(60)
def test_get_runtime_context(runtime):
    ctx = ac.get_runtime_context()
    assert ctx.get_task_id() is None
    assert ctx.get_actor_id() is None
    assert ctx.get_node_id()
    assert ctx.get()["task_id"] is None

    (t1, a1), (t2, a2) = ac.get([context_in_task.remote(), context_in_task.remote()], timeout=30)
    assert t1 and t2 and t1 != t2
    assert a1 is None and a2 is None

    h = ContextActor.remote()
    h2 = ContextActor.remote()
    t, aid = ac.get(h.ids.remote(), timeout=30)
    assert aid == h.id.hex()
    assert t  # a method call is a task too
    _, aid2 = ac.get(h2.ids.remote(), timeout=30)
    assert aid2 == h2.id.hex() != aid


@pytest.mark.timeout(60)
def test_nodes_and_resources(runtime):
    nodes = ac.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["Alive"] is True
    assert node["Resources"]["CPU"] == 2
    total = ac.cluster_resources()
    assert total["CPU"] == 2
    assert "GPU" not in total or total["GPU"] == 0
    avail = wait_for(lambda: (a := ac.available_resources()).get("CPU") == 2 and a, 10)
    assert avail["CPU"] <= total["CPU"]
    assert os.getpid() != node.get("Pid")
