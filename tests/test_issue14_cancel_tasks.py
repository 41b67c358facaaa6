"""Issue 14 item 4 probed as a new user would (only the public API and the OS):
a cancel that lands. A sync task blocked in many kinds of waits sees
``TaskCancelledError`` where it blocks and its ``finally`` runs; force; queued,
finished and async tasks; races of cancel with completion; a cancel while a task
waits on the (stopped) store leaks nothing.

Tests with a node of their own come first; the module's shared node
(``runtime``: 2 CPUs) is started by the first test that asks for it (one
runtime per process).
"""

from __future__ import annotations

import gc
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
from issue14_helpers import MiB, StoppedDaemon, cancel_and_get, daemon_pid, store_objects

import actorcore as ac
from actorcore.errors import TaskCancelledError
from actorcore.testing import wait_for


@pytest.mark.timeout(60)
def test_a_task_that_took_sigusr2_does_not_disable_cancel_for_the_next(fresh_runtime, tmp_path):
    fresh_runtime(num_cpus=1)

    @ac.remote
    def takes_sigusr2():
        signal.signal(signal.SIGUSR2, lambda *_: None)  # e.g. a library's own use of it
        return os.getpid()

    @ac.remote
    def sleeps(path):
        pathlib.Path(path).write_text(str(os.getpid()))
        time.sleep(3)
        return "slept"

    pid = ac.get(takes_sigusr2.remote(), timeout=30)
    started = tmp_path / "started"
    ref = sleeps.remote(str(started))
    wait_for(lambda: started.exists() and started.read_text(), 30, what="running")
    if int(started.read_text()) != pid:
        ac.cancel(ref, force=True)
        pytest.skip("the second task ran on another worker")
    time.sleep(0.2)
    out, took = cancel_and_get(ref, 20)
    assert out == "TaskCancelledError" and took < 2.0, f"get -> {out!r} after {took:.1f} s"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ["read", "write"])
def test_a_cancel_while_a_task_waits_on_the_store_leaks_nothing(fresh_runtime, tmp_path, op):
    """The task's store read (or put) is held up (the daemon is stopped) when the
    cancel comes: the read's pin must still be released (else the object
    outlives its last ref for as long as the worker lives), the put's range
    aborted or owned (else it stays allocated, never sealed or freed)."""
    fresh_runtime(num_cpus=1, object_store_memory=64 * MiB)

    def wait_go(go: str, running: str, started: str) -> None:
        pathlib.Path(running).touch()
        while not os.path.exists(go):  # holds its worker (and lease) meanwhile
            time.sleep(0.01)
        pathlib.Path(started).touch()

    @ac.remote
    def reader(refs, go, running, started):
        wait_go(go, running, started)
        return int(ac.get(refs[0])[0])

    @ac.remote
    def writer(go, running, started):
        wait_go(go, running, started)
        r = ac.put(np.full(8 * MiB, 3, dtype=np.uint8))
        return r.hex()

    x = ac.put(np.full(8 * MiB, 7, dtype=np.uint8))
    go, running, started = (str(tmp_path / n) for n in ("go", "running", "started"))
    ref = (
        reader.remote([x], go, running, started)
        if op == "read"
        else writer.remote(go, running, started)
    )
    wait_for(lambda: os.path.exists(running), 30, what="the task runs")
    with StoppedDaemon(daemon_pid()):
        pathlib.Path(go).touch()
        wait_for(lambda: os.path.exists(started), 20, what="the task calls the (stopped) store")
        time.sleep(0.3)
        ac.cancel(ref)
        with pytest.raises((TaskCancelledError, ac.errors.GetTimeoutError)):
            ac.get(ref, timeout=1)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=15)
    del x
    gc.collect()
    wait_for(lambda: not store_objects(), 15, what=f"store empty: nothing left by the {op}")
    assert ac.get(pid_of.remote(), timeout=30) > 0


def _waits(kind: str, started: str, cleaned: str, port: int) -> str:
    import queue as queue_mod
    import select

    try:
        if kind == "event":
            ev = threading.Event()
            pathlib.Path(started).write_text(str(os.getpid()))
            ev.wait(60)
        elif kind == "event-no-timeout":
            ev = threading.Event()
            pathlib.Path(started).write_text(str(os.getpid()))
            ev.wait()
        elif kind == "subprocess":
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            try:
                pathlib.Path(started).write_text(str(os.getpid()))
                p.wait()
            finally:
                p.kill()
                p.wait()
        elif kind == "queue":
            q: queue_mod.Queue = queue_mod.Queue()
            pathlib.Path(started).write_text(str(os.getpid()))
            q.get()
        elif kind == "queue-timeout":
            q = queue_mod.Queue()
            pathlib.Path(started).write_text(str(os.getpid()))
            q.get(timeout=60)
        elif kind == "pipe-read":
            r, w = os.pipe()
            try:
                pathlib.Path(started).write_text(str(os.getpid()))
                os.read(r, 1)
            finally:
                os.close(r)
                os.close(w)
        elif kind == "select":
            s = socket.create_connection(("127.0.0.1", port))
            try:
                pathlib.Path(started).write_text(str(os.getpid()))
                select.select([s], [], [], 60)
            finally:
                s.close()
        elif kind == "accept":
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            try:
                pathlib.Path(started).write_text(str(os.getpid()))
                srv.accept()
            finally:
                srv.close()
        elif kind == "thread-join":
            t = threading.Thread(target=time.sleep, args=(30,), daemon=True)
            t.start()
            pathlib.Path(started).write_text(str(os.getpid()))
            t.join()
        elif kind == "ac-get":  # waiting for another task's result
            pathlib.Path(started).write_text(str(os.getpid()))
            ac.get(_sleeper.remote(30))
        return "not cancelled"
    finally:
        pathlib.Path(cleaned).write_text(str(time.time()))


waits = ac.remote(_waits)


def _sleeper_fn(s: float) -> str:
    time.sleep(s)
    return "slept"


_sleeper = ac.remote(num_cpus=0)(_sleeper_fn)


@ac.remote
def pid_of() -> int:
    return os.getpid()


@pytest.fixture
def silent_port():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


def _cpus_back() -> None:
    wait_for(lambda: ac.available_resources().get("CPU") == 2, 15, what="both CPUs given back")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind",
    [
        "event",
        "event-no-timeout",
        "subprocess",
        "queue",
        "queue-timeout",
        "pipe-read",
        "select",
        "accept",
        "thread-join",
        "ac-get",
    ],
)
def test_cancel_lands_in_other_blocking_waits(runtime, tmp_path, silent_port, kind):
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    ref = waits.remote(kind, str(started), str(cleaned), silent_port)
    wait_for(started.exists, 30, what="task blocking")
    time.sleep(0.2)  # let it enter the blocking call (the file is written just before)
    t0 = time.time()
    ac.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=15)
    took = time.time() - t0
    wait_for(cleaned.exists, 10, what="the task's finally ran")
    fin = float(cleaned.read_text()) - t0
    print(f"\n{kind}: error after {took:.3f} s, finally after {fin:.3f} s")
    assert took < 2.0 and fin < 2.0, f"{kind}: cancel took {took:.2f} s, finally {fin:.2f} s"
    assert ac.get(pid_of.remote(), timeout=30) > 0
    _cpus_back()


@pytest.mark.timeout(60)
def test_force_cancel_replaces_the_worker(runtime, tmp_path):
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    ref = waits.remote("event-no-timeout", str(started), str(cleaned), 0)
    wait_for(lambda: started.exists() and started.read_text(), 30, what="task blocking")
    victim = int(started.read_text())
    t0 = time.time()
    ac.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=15)
    assert time.time() - t0 < 2.0
    wait_for(
        lambda: not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie",
        10,
        what="the forced worker is gone",
    )
    assert not cleaned.exists()
    pids = {ac.get(pid_of.remote(), timeout=30) for _ in range(3)}
    assert victim not in pids
    _cpus_back()


@pytest.mark.timeout(60)
def test_cancel_of_a_queued_task_never_runs_it(runtime, tmp_path):
    s1, c1, s2, c2 = (tmp_path / n for n in ("s1", "c1", "s2", "c2"))
    a = waits.remote("event", str(s1), str(c1), 0)
    b = waits.remote("event", str(s2), str(c2), 0)
    wait_for(lambda: s1.exists() and s2.exists(), 30, what="both CPUs busy")
    ran = tmp_path / "queued-ran"

    @ac.remote
    def mark(path):
        pathlib.Path(path).touch()
        return "ran"

    q = mark.remote(str(ran))
    t0 = time.time()
    ac.cancel(q)
    with pytest.raises(TaskCancelledError):
        ac.get(q, timeout=10)
    assert time.time() - t0 < 2.0
    ac.cancel(a)
    ac.cancel(b)
    for r in (a, b):
        with pytest.raises(TaskCancelledError):
            ac.get(r, timeout=15)
    assert ac.get(pid_of.remote(), timeout=30) > 0
    assert not ran.exists(), "a cancelled queued task ran"
    _cpus_back()


@pytest.mark.timeout(60)
def test_cancel_of_a_finished_task_is_a_no_op(runtime):
    ref = pid_of.remote()
    pid = ac.get(ref, timeout=30)
    ac.cancel(ref)
    ac.cancel(ref, force=True)
    assert ac.get(ref, timeout=5) == pid
    # the worker was not hurt (force on a finished task must not kill it)
    assert ac.get(pid_of.remote(), timeout=30) > 0
    _cpus_back()


@pytest.mark.timeout(90)
def test_cancels_racing_with_completion_hit_only_their_task(runtime):
    """Cancel short tasks around the moment they finish: a task that was not
    cancelled never fails, a cancelled one either ran or raised
    TaskCancelledError, and the workers keep serving."""

    @ac.remote
    def short(i, s):
        time.sleep(s)
        return i

    rng = random.Random(7)
    for rnd in range(12):
        refs = [short.remote(i, rng.choice([0, 0.001, 0.005, 0.02])) for i in range(20)]
        victims = set(rng.sample(range(20), 8))
        time.sleep(rng.choice([0, 0.005, 0.02]))
        for i in victims:
            ac.cancel(refs[i])
        for i, r in enumerate(refs):
            if i in victims:
                try:
                    assert ac.get(r, timeout=20) == i
                except TaskCancelledError:
                    pass
            else:
                assert ac.get(r, timeout=20) == i, f"round {rnd}: task {i} was not cancelled"
    assert ac.get(pid_of.remote(), timeout=30) > 0
    _cpus_back()


@pytest.mark.timeout(60)
def test_cancel_of_an_async_task_runs_its_finally(runtime, tmp_path):
    cleaned = tmp_path / "cleaned"
    started = tmp_path / "started"

    @ac.remote
    async def slow(s, c):
        import asyncio

        try:
            pathlib.Path(s).touch()  # noqa: ASYNC240 (tiny marker file)
            await asyncio.sleep(60)
        finally:
            pathlib.Path(c).touch()  # noqa: ASYNC240

    ref = slow.remote(str(started), str(cleaned))
    wait_for(started.exists, 30, what="async task running")
    t0 = time.time()
    ac.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=10)
    assert time.time() - t0 < 2.0
    wait_for(cleaned.exists, 5, what="finally of the async task")
    _cpus_back()


@pytest.mark.timeout(90)
def test_cancel_during_a_long_numpy_call_lands_after_it(runtime, tmp_path):
    """A C call that does not return to Python (a big matrix product) cannot be
    interrupted by a signal; the cancel lands when it returns. Reported, and the
    worker must be healthy afterwards."""
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"

    @ac.remote
    def crunch(s, c):
        try:
            x = np.ones((1500, 1500))
            pathlib.Path(s).touch()
            for _ in range(100):
                x = np.linalg.inv(x @ x.T + np.eye(1500))
            return "finished"
        finally:
            pathlib.Path(c).write_text(str(time.time()))

    ref = crunch.remote(str(started), str(cleaned))
    wait_for(started.exists, 30, what="numpy running")
    time.sleep(0.2)
    t0 = time.time()
    ac.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=60)
    took = time.time() - t0
    print(f"\ncancel of a numpy loop landed after {took:.2f} s")
    wait_for(cleaned.exists, 5, what="finally ran")
    assert ac.get(pid_of.remote(), timeout=30) > 0
    _cpus_back()


@pytest.mark.timeout(60)
def test_cancel_lands_through_a_broad_except_exception(runtime, tmp_path):
    started = tmp_path / "started"

    @ac.remote
    def retry_loop(s):
        pathlib.Path(s).touch()
        for _ in range(4):
            try:
                time.sleep(1)  # e.g. poll a service, retry on errors
            except Exception:
                continue
        return "ran to the end"

    ref = retry_loop.remote(str(started))
    wait_for(started.exists, 30, what="running")
    time.sleep(0.2)
    out, took = cancel_and_get(ref, 40)
    _cpus_back()
    assert out == "TaskCancelledError" and took < 2.0, f"get -> {out!r} after {took:.1f} s"


@pytest.mark.timeout(60)
def test_cancel_twice_does_not_cut_the_finally_short(runtime, tmp_path):
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"

    @ac.remote
    def careful(s, c):
        try:
            pathlib.Path(s).touch()
            time.sleep(30)
        finally:
            time.sleep(0.5)  # cleanup that blocks a little
            pathlib.Path(c).touch()

    ref = careful.remote(str(started), str(cleaned))
    wait_for(started.exists, 30, what="running")
    time.sleep(0.2)
    ac.cancel(ref)
    time.sleep(0.1)  # the first cancel has landed; the task is in its finally
    ac.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=10)
    wait_for(cleaned.exists, 5, what="the finally completed")
    _cpus_back()
