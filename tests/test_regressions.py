"""Scenarios from code review that used to hang, leak or misbehave."""

import gc
import os
import time

import numpy as np
import pytest

import actorcore as ac
from actorcore.testing import list_state, wait_for


class Boom(Exception):
    pass


@ac.remote
def fails():
    raise Boom("no")


@ac.remote
def echo(x):
    return x


@ac.remote
def slow(t):
    time.sleep(t)
    return t


@ac.remote
class Keeper:
    def __init__(self, arg=None):
        self.arg = arg

    def ping(self, x=None):
        return "pong"


def store_objects():
    return {o["object_id"] for o in ac.memory_summary()["objects"]}


@pytest.mark.timeout(60)
def test_a_failed_argument_does_not_block_later_calls_to_the_actor(runtime):
    k = Keeper.remote()
    assert ac.get(k.ping.remote(), timeout=30) == "pong"
    bad = fails.remote()
    with pytest.raises(Boom):
        ac.get(bad, timeout=30)
    with pytest.raises(Boom):
        ac.get(k.ping.remote(bad), timeout=30)
    assert ac.get(k.ping.remote(), timeout=30) == "pong"  # used to hang


@pytest.mark.timeout(60)
def test_an_actor_given_a_failed_argument_dies_and_waiters_still_wake(runtime):
    bad = fails.remote()
    k = Keeper.remote(bad)
    with pytest.raises(ac.errors.ActorDiedError, match=r"Boom|no"):
        ac.get(k.ping.remote(), timeout=30)
    with pytest.raises(Boom):  # a later waiter on the same ref is not stranded
        ac.get(bad, timeout=30)


@pytest.mark.timeout(60)
def test_a_ref_sent_to_a_task_and_returned_is_freed_afterwards(runtime):
    x = ac.put(np.ones(1_000_000))
    hexid = x.id.hex()
    r = echo.remote([x])
    (inner,) = ac.get(r, timeout=30)
    assert inner == x
    del r, x, inner
    gc.collect()
    wait_for(lambda: hexid not in store_objects(), 20, what="the round-tripped object freed")


@pytest.mark.timeout(60)
def test_refs_returned_to_a_caller_that_dropped_the_result_are_freed(runtime, tmp_path):
    note = tmp_path / "made"

    @ac.remote
    def make(path):
        ref = ac.put(np.zeros(500_000))
        with open(path + ".tmp", "w") as f:
            f.write(ref.id.hex())
        os.rename(path + ".tmp", path)
        return [ref]

    make.remote(str(note))  # fire and forget: the result arrives with nobody holding it
    gc.collect()
    # first the object exists (else "not in the store" would hold from the start) ...
    wait_for(note.exists, 30, what="the nested object made")
    hexid = note.read_text()
    # ... then it goes: its owner (the worker) frees it once the caller let go
    wait_for(lambda: hexid not in store_objects(), 20, what="the nested object freed")


@ac.remote
def spin(t):
    end = time.monotonic() + t
    while time.monotonic() < end:  # Python code: a cancel lands at the next bytecode
        pass
    return t


@pytest.mark.timeout(60)
def test_cancelling_running_sync_tasks_leaves_the_worker_serving(runtime):
    for _ in range(5):
        r = spin.remote(10)
        wait_for(lambda: ac.available_resources().get("CPU", 2) < 2, 10, what="running")
        ac.cancel(r)
        with pytest.raises(ac.errors.TaskCancelledError):
            ac.get(r, timeout=5)  # well before the 10 s the task would take
    assert ac.get([echo.remote(i) for i in range(20)], timeout=30) == list(range(20))


@pytest.mark.timeout(60)
def test_a_handle_dropped_before_its_actor_exists_still_ends_the_actor(runtime):
    dep = slow.remote(0.5)
    h = Keeper.remote(dep)
    aid = h.id.hex()
    del h
    gc.collect()
    ac.get(dep, timeout=20)

    def ended():
        states = [a["state"] for a in list_state("actors") if a["actor_id"] == aid]
        return states == ["DEAD"] or not states

    wait_for(ended, 20, what="the actor ended")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1])
def test_non_finite_or_negative_resources_fail_at_the_call_site(runtime, bad):
    with pytest.raises(ValueError):
        echo.options(num_cpus=bad).remote(1)
    with pytest.raises(ValueError):
        Keeper.options(resources={"x": bad}).remote()


class _DieWhilePickled:
    """Pickling it kills the worker, once (after the first return was sealed)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return (str, ("second",))


@pytest.mark.timeout(60)
def test_a_task_retried_after_sealing_a_return_value_stores_it_again(runtime, tmp_path):
    @ac.remote(num_returns=2, max_retries=1)
    def two(marker):
        return np.arange(300_000), _DieWhilePickled(marker)

    big, second = two.remote(str(tmp_path / "died-once"))
    assert ac.get(second, timeout=30) == "second"
    assert ac.get(big, timeout=30)[-1] == 299_999


@ac.remote
class _Answer:
    def m(self):
        return 42


@pytest.mark.timeout(120)
def test_future_of_a_ref_nobody_else_holds_resolves(runtime):
    # the ref is dropped right after .future(): the future keeps it (and its waiter) alive
    c = _Answer.remote()
    for _ in range(200):
        assert c.m.remote().future().result(timeout=30) == 42
    big = [echo.remote(np.arange(200_000)).future() for _ in range(5)]  # store values too
    assert all(f.result(timeout=30).sum() == np.arange(200_000).sum() for f in big)
