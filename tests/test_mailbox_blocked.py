"""A threaded sync actor whose call blocks in get() serves its next queued call at once.

Unit tests of :class:`ActorMailbox` with a recording worker: no loop, no
threads, no sockets. The stall check that would add the thread after a while
never runs here, so only the block hook can start the second call.
"""

from types import SimpleNamespace
from typing import Any

import pytest

from actorcore._mailbox import ActorMailbox


class _Pool:
    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def submit(self, job: Any) -> None:
        self.jobs.append(job)


class _Worker:
    """Records what the mailbox asks for; runs nothing."""

    def __init__(self) -> None:
        self.pool = _Pool()
        self.soon: list[Any] = []

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.soon.append((fn, args))


class _Actor:
    def wait_other(self) -> None: ...

    def serve(self) -> None: ...


def _mailbox(max_concurrency: int) -> tuple[ActorMailbox, _Worker]:
    worker = _Worker()
    mb = ActorMailbox(worker, b"a" * 16, _Actor(), "_Actor", max_concurrency)  # type: ignore[arg-type]
    return mb, worker


def _call(method: str) -> Any:
    return SimpleNamespace(method=method, task_id=method.encode())


@pytest.mark.timeout(10)
def test_blocked_call_lets_the_next_call_start_at_once():
    mb, worker = _mailbox(2)
    mb.push(_call("wait_other"))
    mb.push(_call("serve"))
    assert len(worker.pool.jobs) == 1  # fast calls drain on one thread
    assert [c.method for c in mb.queue] == ["serve"]
    mb.blocked()  # the first call waits in get(): stalled for sure
    assert len(worker.pool.jobs) == 2
    assert not mb.queue and mb.running == 2 and mb.sync_running == 2
    mb.blocked()  # nothing queued, limit reached: nothing more starts
    assert len(worker.pool.jobs) == 2


@pytest.mark.timeout(10)
def test_blocked_call_of_a_one_thread_actor_starts_nothing():
    mb, worker = _mailbox(1)
    mb.push(_call("wait_other"))
    mb.push(_call("serve"))
    mb.blocked()
    assert len(worker.pool.jobs) == 1
    assert [c.method for c in mb.queue] == ["serve"]
