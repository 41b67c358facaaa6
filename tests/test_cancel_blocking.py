"""Cancel that lands (issue 14, item 4): a running sync task blocked in
``time.sleep``, a socket read or a lock wait sees ``TaskCancelledInterrupt`` (a
KeyboardInterrupt, like Ray's) where it blocks within a second of ``ac.cancel``
(its caller gets ``TaskCancelledError``), and its ``finally`` still runs;
``force=True`` kills the worker, which is replaced.

Each task marks a file when it is about to block (so the cancel is sent while
it blocks, not before) and another from its ``finally``.
"""

from __future__ import annotations

import os
import pathlib
import socket
import threading
import time

import pytest

import actorcore as ac
from actorcore.errors import TaskCancelledError
from actorcore.testing import wait_for

LANDS_WITHIN_S = 1.0  # what the issue asks; the deadline below only bounds a failure


def _blocker(kind: str, started: str, cleaned: str, port: int = 0) -> str:
    try:
        if kind == "sleep":
            pathlib.Path(started).touch()
            time.sleep(60)
        elif kind == "socket":
            s = socket.create_connection(("127.0.0.1", port))
            pathlib.Path(started).touch()
            s.recv(1)  # the server never sends
        elif kind == "lock":
            lock = threading.Lock()
            lock.acquire()
            pathlib.Path(started).touch()
            lock.acquire()  # never released
        elif kind == "spin":
            pathlib.Path(started).touch()
            end = time.monotonic() + 60
            while time.monotonic() < end:
                pass
        return "not cancelled"
    finally:
        pathlib.Path(cleaned).write_text(str(time.monotonic()))


blocker = ac.remote(_blocker)


@ac.remote
def whoami():
    return os.getpid()


@pytest.fixture
def silent_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        for c in conns:
            c.close()
        srv.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["sleep", "socket", "lock", "spin"])
def test_cancel_lands_where_the_task_blocks(runtime, tmp_path, silent_server, kind):
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    ref = blocker.remote(kind, str(started), str(cleaned), silent_server)
    try:
        wait_for(started.exists, 30, what="task blocking")
    finally:
        t0 = time.monotonic()
        ac.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=20)
    took = time.monotonic() - t0
    wait_for(cleaned.exists, 10, what="the task's finally ran")
    assert float(cleaned.read_text()) - t0 < LANDS_WITHIN_S * 5  # generous under load
    assert took < LANDS_WITHIN_S * 5, f"cancel took {took:.2f} s"
    # the worker lives on and serves the next task
    assert ac.get(whoami.remote(), timeout=30) > 0
    wait_for(lambda: ac.available_resources().get("CPU") == 2, 10, what="CPU given back")


@pytest.mark.timeout(90)
def test_force_cancel_kills_the_worker_and_it_is_replaced(runtime, tmp_path):
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    ref = blocker.remote("sleep", str(started), str(cleaned))
    wait_for(started.exists, 30, what="task blocking")
    ac.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=20)
    assert not cleaned.exists()  # force: the process is gone, no finally
    assert ac.get(whoami.remote(), timeout=30) > 0
    wait_for(lambda: ac.available_resources().get("CPU") == 2, 10, what="CPU given back")


@pytest.mark.timeout(90)
def test_a_task_may_install_its_own_signal_handlers(runtime):
    """Sync tasks now run on the main thread: ``signal.signal`` works there, as on Ray."""

    @ac.remote
    def installs() -> bool:
        import signal

        old = signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.signal(signal.SIGUSR1, old)
        return True

    assert ac.get(installs.remote(), timeout=30) is True
