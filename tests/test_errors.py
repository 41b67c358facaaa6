"""Errors (issue 2, item 7): the ``actorcore.errors`` hierarchy as users meet it.

A remote exception arrives as a TaskError that is also an instance of the
user's class and carries the remote traceback; the runtime's own failures have
their own classes; values that cannot be pickled fail where they are, with a
message naming their type and their place.
"""

from __future__ import annotations

import os
import pickle
import threading
import time

import pytest

from actorcore import errors as E


class MyError(Exception):
    """A user exception defined at module level (importable by workers)."""


class MyRichError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg, code)
        self.code = code


class ThreeArgs(Exception):
    """An ordinary exception whose constructor takes three arguments."""

    def __init__(self, path, line, reason):
        super().__init__(path, line, reason)
        self.path = path


class NeedsTwoArgs(Exception):
    """Pickles, but unpickling calls ``NeedsTwoArgs(message)``, which fails."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


class FailsToUnpickle(Exception):
    """Its ``__reduce__`` names a constructor that raises when called."""

    def __reduce__(self):
        return (_explode, (str(self),))


def _explode(msg):
    raise RuntimeError("this exception refuses to be unpickled")


class HoldsALock(Exception):
    """Carries an attribute that cannot be pickled at all."""

    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_my_error_here(x):
    raise MyError(f"bad value {x}")


# --- the hierarchy --------------------------------------------------------------------


def test_error_classes_form_one_hierarchy():
    for name in (
        "TaskError",
        "ActorDiedError",
        "WorkerCrashedError",
        "TaskCancelledError",
        "GetTimeoutError",
        "BlockingCallError",
        "SerializationError",
        "ObjectLostError",
        "NodeDiedError",
        "ObjectStoreFullError",
    ):
        cls = getattr(E, name)
        assert issubclass(cls, E.ActorCoreError), name
    assert issubclass(E.GetTimeoutError, TimeoutError)
    assert issubclass(E.SerializationError, TypeError)
    assert issubclass(E.ActorCoreError, Exception)


# --- TaskError ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_user_exception_is_task_error_and_user_class(runtime):
    ac = runtime

    @ac.remote
    def fails(x):
        raise_my_error_here(x)

    ref = fails.remote(7)
    with pytest.raises(MyError) as info:
        ac.get(ref, timeout=30)
    err = info.value
    assert isinstance(err, E.TaskError)
    assert isinstance(err, E.ActorCoreError)
    assert "bad value 7" in str(err)
    assert "raise_my_error_here" in err.traceback_text
    assert "MyError" in err.traceback_text
    assert err.cause_type_name == "MyError"
    assert isinstance(err.cause, MyError)
    # getting it again raises the same kind of error
    with pytest.raises(E.TaskError):
        ac.get(ref, timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("exc_type", [ValueError, KeyError, ZeroDivisionError])
def test_builtin_exceptions_keep_their_class(runtime, exc_type):
    ac = runtime

    @ac.remote
    def builtin_failure():
        raise exc_type("the-message")

    with pytest.raises(exc_type) as info:
        ac.get(builtin_failure.remote(), timeout=30)
    assert isinstance(info.value, E.TaskError)
    assert "builtin_failure" in info.value.traceback_text
    assert "the-message" in str(info.value)


@pytest.mark.timeout(60)
def test_except_clause_catches_remote_value_error(runtime):
    ac = runtime

    @ac.remote
    def parse(s):
        return int(s)

    caught = None
    try:
        ac.get(parse.remote("not a number"), timeout=30)
    except ValueError as e:  # what users write
        caught = e
    assert caught is not None
    assert "not a number" in str(caught)
    assert "parse" in caught.traceback_text


@pytest.mark.timeout(60)
def test_user_exception_attributes_survive(runtime):
    ac = runtime

    @ac.remote
    def rich():
        raise MyRichError("with a code", 42)

    with pytest.raises(MyRichError) as info:
        ac.get(rich.remote(), timeout=30)
    assert info.value.code == 42
    assert info.value.cause.code == 42


@pytest.mark.timeout(60)
def test_exception_with_three_argument_constructor_keeps_its_class(runtime):
    ac = runtime

    @ac.remote
    def parse_config():
        raise ThreeArgs("app.toml", 12, "bad key")

    with pytest.raises(ThreeArgs) as info:
        ac.get(parse_config.remote(), timeout=30)
    err = info.value
    assert isinstance(err, E.TaskError)
    assert err.path == "app.toml"
    assert "bad key" in str(err)
    assert "parse_config" in err.traceback_text


@pytest.mark.timeout(60)
async def test_awaited_ref_raises_user_class(runtime):
    ac = runtime

    @ac.remote
    async def async_fails():
        raise MyError("from a coroutine")

    with pytest.raises(MyError) as info:
        await async_fails.remote()
    assert isinstance(info.value, E.TaskError)
    assert "async_fails" in info.value.traceback_text


@pytest.mark.timeout(60)
def test_actor_method_exception_carries_traceback(runtime):
    ac = runtime

    @ac.remote
    class Account:
        def __init__(self):
            self.balance = 10

        def withdraw(self, n):
            if n > self.balance:
                raise MyError(f"cannot withdraw {n}")
            self.balance -= n
            return self.balance

    a = Account.remote()
    with pytest.raises(MyError) as info:
        ac.get(a.withdraw.remote(100), timeout=30)
    assert isinstance(info.value, E.TaskError)
    assert "withdraw" in info.value.traceback_text
    assert "cannot withdraw 100" in str(info.value)
    # the actor lives on after a method raised
    assert ac.get(a.withdraw.remote(3), timeout=30) == 7


@pytest.mark.timeout(60)
def test_task_error_survives_pickling(runtime):
    ac = runtime

    @ac.remote
    def fails():
        raise_my_error_here("p")

    with pytest.raises(MyError) as info:
        ac.get(fails.remote(), timeout=30)
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, E.TaskError)
    assert isinstance(copy, MyError)
    assert copy.traceback_text == info.value.traceback_text


@pytest.mark.timeout(60)
def test_error_passed_through_a_dependency(runtime):
    """A task whose argument failed fails with the argument's error."""
    ac = runtime

    @ac.remote
    def fails():
        raise_my_error_here("upstream")

    @ac.remote
    def consume(x):
        return x

    with pytest.raises(MyError) as info:
        ac.get(consume.remote(fails.remote()), timeout=30)
    assert "upstream" in str(info.value)


# --- exceptions that cannot be unpickled on the driver ------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "exc_type,message",
    [
        (NeedsTwoArgs, "left and right"),
        (FailsToUnpickle, "reduce trouble"),
        (HoldsALock, "locked up"),
    ],
)
def test_unpicklable_user_exception_still_arrives(runtime, exc_type, message):
    ac = runtime

    @ac.remote
    def raise_odd_exception():
        if exc_type is NeedsTwoArgs:
            raise NeedsTwoArgs("left", "right")
        raise exc_type(message)

    with pytest.raises(E.TaskError) as info:
        ac.get(raise_odd_exception.remote(), timeout=30)
    err = info.value
    assert err.cause_type_name == exc_type.__qualname__
    assert message in str(err)
    assert exc_type.__qualname__ in str(err)
    assert "raise_odd_exception" in err.traceback_text


# --- the runtime's own errors --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_get_timeout_error_is_a_timeout_error(runtime):
    ac = runtime

    @ac.remote
    def slow():
        time.sleep(3)
        return 1

    ref = slow.remote()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        ac.get(ref, timeout=0.3)
    assert isinstance(info.value, E.GetTimeoutError)
    assert time.monotonic() - t0 < 10  # the timeout, not the 3 s task, ended it
    # the ref is still usable afterwards
    assert ac.get(ref, timeout=30) == 1


@pytest.mark.timeout(60)
def test_get_timeout_on_a_list(runtime):
    ac = runtime

    @ac.remote
    def slow():
        time.sleep(3)
        return 1

    @ac.remote
    def fast():
        return 2

    refs = [fast.remote(), slow.remote()]
    with pytest.raises(E.GetTimeoutError):
        ac.get(refs, timeout=0.3)
    assert ac.get(refs, timeout=30) == [2, 1]


@pytest.mark.timeout(60)
async def test_blocking_get_on_a_loop_raises(runtime):
    ac = runtime

    @ac.remote
    def one():
        return 1

    ref = one.remote()
    with pytest.raises(E.BlockingCallError) as info:
        ac.get(ref)
    assert isinstance(info.value, RuntimeError)
    assert "await" in str(info.value)
    assert await ref == 1


@pytest.mark.timeout(60)
def test_cancelled_task_raises_task_cancelled(runtime):
    ac = runtime

    @ac.remote
    async def forever():
        import asyncio

        await asyncio.sleep(60)

    ref = forever.remote()
    with pytest.raises(E.GetTimeoutError):
        ac.get(ref, timeout=0.3)  # it is running
    ac.cancel(ref)
    with pytest.raises(E.TaskCancelledError):
        ac.get(ref, timeout=30)


@pytest.mark.timeout(60)
def test_cancelled_sync_task_raises_task_cancelled(runtime, tmp_path):
    ac = runtime
    started = tmp_path / "started"

    @ac.remote
    def busy(path):
        open(path, "w").close()
        for _ in range(6000):
            time.sleep(0.01)
        return "finished"

    ref = busy.remote(str(started))
    ac.testing.wait_for(started.exists, 30, what="task started")
    ac.cancel(ref)
    with pytest.raises(E.TaskCancelledError):
        ac.get(ref, timeout=30)


@pytest.mark.timeout(60)
def test_killed_actor_raises_actor_died(runtime):
    ac = runtime

    @ac.remote
    class Victim:
        def ping(self):
            return "pong"

    v = Victim.remote()
    assert ac.get(v.ping.remote(), timeout=30) == "pong"
    ac.kill(v)
    with pytest.raises(E.ActorDiedError):
        ac.get(v.ping.remote(), timeout=30)


@pytest.mark.timeout(60)
def test_actor_failing_in_init_raises_actor_died_with_cause(runtime):
    ac = runtime

    @ac.remote
    class Broken:
        def __init__(self):
            raise MyError("init went wrong")

        def ping(self):
            return "pong"

    b = Broken.remote()
    with pytest.raises(E.ActorDiedError) as info:
        ac.get(b.ping.remote(), timeout=30)
    assert "init went wrong" in str(info.value)


@pytest.mark.timeout(60)
def test_crashed_worker_raises_worker_crashed(runtime):
    ac = runtime

    @ac.remote(max_retries=0)
    def crash():
        os._exit(3)

    with pytest.raises(E.WorkerCrashedError) as info:
        ac.get(crash.remote(), timeout=30)
    assert "crash" in str(info.value)


# --- values that cannot be pickled -------------------------------------------------------------


def _generator():
    yield 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "make,type_name",
    [(threading.Lock, "lock"), (_generator, "generator")],
    ids=["lock", "generator"],
)
def test_unpicklable_argument_fails_at_call_site(runtime, make, type_name):
    ac = runtime

    @ac.remote
    def takes_anything(x):
        return 1

    with pytest.raises(E.SerializationError) as info:
        takes_anything.remote(make())
    err = info.value
    assert isinstance(err, TypeError)
    text = str(err)
    assert type_name in text
    assert "argument" in text
    assert "takes_anything" in text


@pytest.mark.timeout(60)
def test_unpicklable_keyword_argument_fails_at_call_site(runtime):
    ac = runtime

    @ac.remote
    def takes_kw(*, data=None):
        return 1

    with pytest.raises(E.SerializationError) as info:
        takes_kw.remote(data={"inner": [threading.Lock()]})
    assert "lock" in str(info.value)
    assert "takes_kw" in str(info.value)


@pytest.mark.timeout(60)
def test_unpicklable_actor_argument_fails_at_call_site(runtime):
    ac = runtime

    @ac.remote
    class Keeper:
        def __init__(self, x=None):
            self.x = x

        def keep(self, x):
            return 1

    k = Keeper.remote()
    with pytest.raises(E.SerializationError) as info:
        k.keep.remote(threading.Lock())
    assert "lock" in str(info.value)
    assert "keep" in str(info.value)
    with pytest.raises(E.SerializationError) as info:
        Keeper.remote(threading.Lock())
    assert "lock" in str(info.value)
    assert "Keeper" in str(info.value)
    assert ac.get(k.keep.remote(1), timeout=30) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["lock", "generator"])
def test_unpicklable_return_value_fails_the_ref(runtime, kind):
    ac = runtime

    @ac.remote
    def returns_bad():
        if kind == "lock":
            return threading.Lock()
        return (i for i in range(3))

    with pytest.raises(E.ActorCoreError) as info:
        ac.get(returns_bad.remote(), timeout=30)
    text = str(info.value)
    assert kind in text
    assert "return value" in text
    assert "returns_bad" in text


@pytest.mark.timeout(60)
def test_unpicklable_actor_return_value_fails_the_ref(runtime):
    ac = runtime

    @ac.remote
    class Leaky:
        def leak(self):
            return threading.Lock()

        def ok(self):
            return "ok"

    a = Leaky.remote()
    with pytest.raises(E.ActorCoreError) as info:
        ac.get(a.leak.remote(), timeout=30)
    assert "lock" in str(info.value)
    assert "return value" in str(info.value)
    assert ac.get(a.ok.remote(), timeout=30) == "ok"
