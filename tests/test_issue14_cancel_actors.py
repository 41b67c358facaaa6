"""Issue 14 item 4 probed as a new user would (only the public API): a cancel of
an actor call, running or queued, sync or async; a mixed actor's sync methods
run one at a time. On the module's shared node (``runtime``: 2 CPUs)."""

from __future__ import annotations

import pathlib
import time

import pytest
from issue14_helpers import cancel_and_get

import actorcore as ac
from actorcore.errors import TaskCancelledError
from actorcore.testing import wait_for


@ac.remote
class Blocky:
    def __init__(self):
        self.n = 0

    def block(self, started, cleaned, s=30):
        try:
            pathlib.Path(started).touch()
            time.sleep(s)
            return "not cancelled"
        finally:
            pathlib.Path(cleaned).write_text(str(time.time()))

    def incr(self):
        self.n += 1
        return self.n


@ac.remote
class AsyncBlocky:
    def __init__(self):
        self.n = 0

    async def incr(self):
        self.n += 1
        return self.n

    async def ablock(self, started, cleaned):
        import asyncio

        try:
            pathlib.Path(started).touch()  # noqa: ASYNC240 (tiny marker file)
            await asyncio.sleep(30)
        finally:
            pathlib.Path(cleaned).write_text(str(time.time()))  # noqa: ASYNC240


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cpus", [0, 1])
def test_cancel_of_a_running_sync_actor_call(runtime, tmp_path, cpus):
    """``ac.cancel`` documents "the task (or async actor call)"; Ray 2.60 does not
    interrupt a running call of a sync actor (actors have state) either. What a
    user sees is reported; the caller gets the value or TaskCancelledError and
    the actor serves on."""
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    a = Blocky.options(num_cpus=cpus).remote()
    assert ac.get(a.incr.remote(), timeout=30) == 1
    ref = a.block.remote(str(started), str(cleaned), 3)
    wait_for(started.exists, 30, what="actor call blocking")
    time.sleep(0.2)
    t0 = time.time()
    out, took = cancel_and_get(ref, 40)
    fin = float(cleaned.read_text()) - t0 if cleaned.exists() else None
    print(f"\nsync actor call (num_cpus={cpus}) cancelled: {out} after {took:.2f} s, finally {fin}")
    assert ac.get(a.incr.remote(), timeout=40) == 2
    ac.kill(a)
    assert out in ("TaskCancelledError", "not cancelled")


@pytest.mark.timeout(60)
def test_cancel_of_a_queued_sync_actor_call(runtime, tmp_path):
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    a = Blocky.options(num_cpus=0).remote()
    first = a.block.remote(str(started), str(cleaned), 3)
    wait_for(started.exists, 30, what="actor busy")
    queued = a.incr.remote()
    out, took = cancel_and_get(queued, 40)
    first_done = bool(ac.wait([first], timeout=0)[0])
    after = ac.get(a.incr.remote(), timeout=60)
    ac.kill(a)
    assert out == "TaskCancelledError", (
        f"cancelled queued call returned {out!r} after {took:.2f} s while the call "
        f"before it was {'done' if first_done else 'still running'}; next incr -> {after}"
    )
    assert took < 2.0, f"a queued actor call's cancel took {took:.1f} s"


@pytest.mark.timeout(60)
def test_cancel_of_an_async_actor_call(runtime, tmp_path):
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    a = AsyncBlocky.options(num_cpus=0).remote()
    ref = a.ablock.remote(str(started), str(cleaned))
    wait_for(started.exists, 30, what="async actor call running")
    t0 = time.time()
    ac.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=10)
    assert time.time() - t0 < 2.0
    wait_for(cleaned.exists, 5, what="finally of the async actor call")
    assert ac.get(a.incr.remote(), timeout=30) == 1
    ac.kill(a)


@pytest.mark.timeout(60)
def test_sync_methods_of_a_mixed_actor_run_one_at_a_time(runtime, tmp_path):
    started = tmp_path / "started"

    @ac.remote
    class Mixed:
        def __init__(self):
            self.inside = 0

        def slow(self, s):
            self.inside += 1
            pathlib.Path(s).touch()
            time.sleep(1.0)
            self.inside -= 1
            return "slow done"

        def peek(self):
            return self.inside  # 0 if sync methods do not overlap

        async def ping(self):
            return "pong"

    m = Mixed.options(num_cpus=0).remote()
    ref = m.slow.remote(str(started))
    wait_for(started.exists, 30, what="slow running")
    inside = ac.get(m.peek.remote(), timeout=30)
    assert ac.get(ref, timeout=30) == "slow done"
    ac.kill(m)
    assert inside == 0, "a second sync method ran while the first was still running"
