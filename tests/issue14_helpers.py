"""What the issue 14 probes (tests/test_issue14_*.py) share: digests of views, the
node daemon stopped for a block, a get on a thread with a deadline, a cancel's
outcome (not a test module)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from typing import Any

import psutil

import actorcore as ac
from actorcore.errors import TaskCancelledError
from actorcore.testing import list_state, wait_for

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digest(a) -> str:
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest()


def daemon_pid() -> int:
    return int(list_state("node")["pid"])


def store_objects() -> dict[str, dict]:
    return {o["object_id"]: o for o in ac.memory_summary()["objects"]}


def run_in_thread(fn, timeout: float):
    """fn() on a thread; (True, value) or (False, None) if it did not finish in time."""
    box: list = []

    def target() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as e:  # reported to the caller
            box.append(("err", e))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        return False, None
    kind, val = box[0]
    if kind == "err":
        raise val
    return True, val


class StoppedDaemon:
    """SIGSTOP the node daemon for a block (SIGCONT on exit, whatever happens)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> StoppedDaemon:
        os.kill(self.pid, signal.SIGSTOP)
        wait_for(
            lambda: psutil.Process(self.pid).status() == psutil.STATUS_STOPPED, 5, what="stopped"
        )
        return self

    def __exit__(self, *exc) -> None:
        os.kill(self.pid, signal.SIGCONT)


def cancel_and_get(ref, timeout: float) -> tuple[Any, float]:
    """Cancel ``ref`` and get it: ``(its value or "TaskCancelledError", the seconds
    from the cancel to that answer)``."""
    t0 = time.time()
    ac.cancel(ref)
    try:
        out = ac.get(ref, timeout=timeout)
    except TaskCancelledError:
        out = "TaskCancelledError"
    return out, time.time() - t0
