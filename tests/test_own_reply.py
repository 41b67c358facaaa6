"""A thread blocked in get() on its own actor call reads the reply off the connection
itself (issue 14, item 1): same results, order, errors and failures as through the loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import actorcore as ac
from actorcore import _global as G
from actorcore.errors import ActorDiedError, GetTimeoutError, TaskError
from actorcore.testing import wait_for


@ac.remote
class Counter:
    def __init__(self):
        self.items = []

    def append(self, x):
        self.items.append(x)
        return len(self.items)

    def items_(self):
        return list(self.items)

    def boxed(self, x):
        return [ac.put(x)]

    def read_box(self, box):
        return ac.get(box[0]) + 1  # asks the driver (the owner) while it waits

    def fail(self):
        raise ValueError("no")

    def sleep(self, s):
        time.sleep(s)
        return s

    def die(self):
        os._exit(1)


def _conn(handle) -> object:
    rt = G.require()
    return rt.actors.core.clients[handle.id].peer.conn


def test_the_caller_reads_its_reply_and_the_loop_catches_up(runtime):
    c = Counter.remote()
    assert ac.get(c.append.remote(0), timeout=30) == 1
    conn = _conn(c)
    before = conn.caller_reads
    refs = []
    for i in range(50):
        refs.append(c.append.remote(i))
        assert ac.get(refs[-1], timeout=30) == i + 2
    assert conn.caller_reads - before >= 40  # read here, not woken by the loop
    # the loop took every frame: the objects are ready, a second get reads them again
    ready, rest = ac.wait(refs, num_returns=len(refs), timeout=10)
    assert len(ready) == len(refs) and not rest
    assert ac.get(refs, timeout=10) == list(range(2, 52))


def test_calls_stay_in_order_with_unawaited_calls_before_them(runtime):
    c = Counter.remote()
    first = [c.append.remote(i) for i in range(20)]  # not waited on yet
    assert ac.get(c.append.remote(20), timeout=30) == 21
    assert ac.get(first, timeout=30) == list(range(1, 21))
    assert ac.get(c.items_.remote(), timeout=30) == list(range(21))


def test_replies_with_refs_errors_and_owner_requests(runtime):
    c = Counter.remote()
    box = ac.get(c.boxed.remote(41), timeout=30)  # nested ref: the loop's way
    assert ac.get(box[0], timeout=30) == 41
    mine = ac.put(1)
    assert ac.get(c.read_box.remote([mine]), timeout=30) == 2  # the worker asks us meanwhile
    with pytest.raises(TaskError) as info:
        ac.get(c.fail.remote(), timeout=30)
    assert isinstance(info.value, ValueError)
    assert ac.get(c.append.remote("x"), timeout=30) == 1


def test_timeout_then_the_value_later(runtime):
    c = Counter.remote()
    ref = c.sleep.remote(1.5)
    t = time.monotonic()
    with pytest.raises(GetTimeoutError):
        ac.get(ref, timeout=0.3)
    assert time.monotonic() - t < 1.2
    assert ac.get(ref, timeout=30) == 1.5
    assert ac.get(c.append.remote(1), timeout=30) == 1


def test_several_threads_calling_one_actor(runtime):
    c = Counter.remote()
    ac.get(c.append.remote(-1), timeout=30)
    errors: list[BaseException] = []
    results: dict[int, list[int]] = {}

    def run(k: int) -> None:
        try:
            got = results.setdefault(k, [])
            for _ in range(150):
                got.append(ac.get(c.append.remote(k), timeout=30))
        except BaseException as e:  # (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert all(not th.is_alive() for th in threads)
    for got in results.values():
        assert got == sorted(got) and len(got) == 150  # each thread's calls in its order
    assert len(ac.get(c.items_.remote(), timeout=30)) == 601


def test_the_actor_dies_while_the_caller_reads(runtime):
    c = Counter.options(max_restarts=0).remote()
    assert ac.get(c.append.remote(1), timeout=30) == 1
    t = time.monotonic()
    with pytest.raises(ActorDiedError):
        ac.get(c.die.remote(), timeout=30)
    assert time.monotonic() - t < 10
    with pytest.raises(ActorDiedError):
        ac.get(c.append.remote(2), timeout=30)


def test_an_asyncio_driver_awaiting_its_calls_one_at_a_time(runtime):
    c = Counter.remote()
    ac.get(c.append.remote(0), timeout=30)
    conn = _conn(c)
    before = conn.caller_reads

    async def run() -> list[int]:
        got = []
        for i in range(50):
            got.append(await asyncio.wait_for(c.append.remote(i), 30))
        early = c.append.remote("early")  # not awaited before the next one
        got.append(await asyncio.wait_for(c.append.remote("late"), 30))
        got.append(await asyncio.wait_for(early, 30))
        with pytest.raises(ValueError):
            await asyncio.wait_for(c.fail.remote(), 30)
        slow = c.sleep.remote(1.0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow, 0.2)  # cancelled while its loop watched the socket
        got.append(await asyncio.wait_for(c.append.remote("after"), 30))
        assert await asyncio.wait_for(slow, 30) == 1.0
        return got

    loop = asyncio.new_event_loop()
    try:
        got = loop.run_until_complete(asyncio.wait_for(run(), 60))
    finally:
        loop.close()
    assert got == [*range(2, 52), 53, 52, 54]
    assert conn.caller_reads - before >= 40
    assert conn.claim is None or not conn.claim.live()  # (its loop closed: gone)
    assert ac.get(c.append.remote(1), timeout=30) == 55  # the runtime's loop reads again


def test_many_replies_read_by_the_caller_are_delivered_in_one_go(runtime, monkeypatch):
    c = Counter.remote()
    ac.get(c.append.remote(0), timeout=30)
    rt = G.require()
    # nothing makes the loop take the frames this thread reads until the end (the
    # flush would, every few ms): hundreds pile up, delivered one after the other
    monkeypatch.setattr(rt, "_schedule_flush", lambda: None)
    refs = []
    for i in range(600):
        refs.append(c.append.remote(i))
        assert ac.get(refs[-1], timeout=30) == i + 2
    monkeypatch.undo()
    rt.kick_handed()
    ready, rest = ac.wait(refs, num_returns=len(refs), timeout=30)
    assert len(ready) == len(refs) and not rest
    assert ac.get(c.append.remote("x"), timeout=30) == 602


@ac.remote
class Gate:
    def ping(self):
        return "pong"

    def held(self, port):
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.recv(1)  # until the test lets it answer
        return "done"


def _top_frame(ident: int) -> str | None:
    import sys

    frame = sys._current_frames().get(ident)
    return None if frame is None else frame.f_code.co_name


def _watch_queued(rt, oid: bytes) -> bool:
    """A waiter on ``oid`` is queued for the loop, and no drain of the queue is due."""
    inbox = rt.objects.inbox
    queued = any(
        type(ev).__name__ == "Watch" and any(o == oid for o, _ in ev.refs)
        for ev in list(inbox._events)
    )
    return queued and not inbox._scheduled and not inbox.draining


def _watch_registered(rt, oid: bytes) -> bool:
    """A waiter on ``oid`` is registered, and nothing is queued for the loop."""
    e = rt.table.entries.get(oid)
    return e is not None and bool(e.waiters) and rt.objects.inbox.quiet()


def _other_get(ref, out):
    out.append(ac.get(ref, timeout=10))


def _other_wait(ref, out):
    ready, _ = ac.wait([ref], num_returns=1, timeout=10)
    out.append(ac.get(ready[0], timeout=1) if ready else "not ready")


def _other_await(ref, out):
    async def main():
        return await asyncio.wait_for(ref, 10)

    out.append(asyncio.run(main()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("registered", [False, True], ids=["queued", "registered"])
@pytest.mark.parametrize("how", [_other_get, _other_wait, _other_await])
def test_other_waiters_see_the_value_the_caller_read_at_once(runtime, monkeypatch, how, registered):
    """Another thread (get, wait) or event loop (await) waits on the ref whose reply
    the caller reads itself: it must not wait for the runtime's periodic flush
    (up to 5 ms; here the flush is switched off, so without a prompt hand-over the
    other waiter would time out). Its waiter is still queued for the loop, or
    already registered, when the caller reads the reply."""
    import socket

    g = Gate.remote()
    for _ in range(3):
        assert ac.get(g.ping.remote(), timeout=30) == "pong"  # direct calls from here on
    rt = G.require()
    monkeypatch.setattr(rt, "_schedule_flush", lambda: None)
    rt.kick_handed()  # what this thread read so far: delivered before the other waits
    wait_for(  # (and a flush armed before is over: none comes from now on)
        lambda: not rt.handed_conns and rt.objects.inbox.quiet() and not rt._flush_scheduled,
        10,
        what="quiet",
    )
    me = threading.get_ident()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(30)
        ref = g.held.remote(srv.getsockname()[1])
        out: list = []
        other = threading.Thread(target=how, args=(ref, out))
        other.start()

        def release() -> None:  # once both wait: the other thread, and this one reading
            wait_for(  # (queued, or already registered by some drain meanwhile)
                lambda: _watch_queued(rt, ref.id) or _watch_registered(rt, ref.id),
                30,
                what="the other waits",
            )
            if registered:
                rt.objects.inbox.wake()
                wait_for(lambda: _watch_registered(rt, ref.id), 30, what="registered")
            wait_for(lambda: _top_frame(me) == "read_reply", 30, what="the caller reads")
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"x")

        releaser = threading.Thread(target=release)
        releaser.start()
        try:
            assert ac.get(ref, timeout=30) == "done"
            read_here = own_reply_answered()
            other.join(15)
            releaser.join(15)
        finally:
            monkeypatch.undo()
            rt.kick_handed()
    assert read_here, "the caller did not read its own reply (nothing was tested)"
    assert out == ["done"], out


def own_reply_answered() -> bool:
    from actorcore._owner._own_reply import last_call

    return last_call().answered


@pytest.mark.timeout(60)
def test_an_asyncio_driver_registers_the_socket_once_for_a_run_of_calls(runtime):
    """Awaited one after the other, the calls' replies are read by the caller's loop,
    which keeps watching the socket between them: it is registered with that loop
    once, not once per call (add_reader/remove_reader per reply before)."""
    c = Counter.remote()
    ac.get(c.append.remote(0), timeout=30)
    conn = _conn(c)
    before = conn.caller_reads
    loop = asyncio.new_event_loop()
    added = []
    real_add = loop.add_reader
    loop.add_reader = lambda fd, *a: (added.append(fd), real_add(fd, *a))[1]

    async def run() -> list[int]:
        return [await asyncio.wait_for(c.append.remote(i), 30) for i in range(100)]

    try:
        got = loop.run_until_complete(asyncio.wait_for(run(), 60))
    finally:
        loop.close()
    assert got == list(range(2, 102))
    assert conn.caller_reads - before >= 90  # (read by the caller's loop)
    assert added.count(conn.fd) <= 5, f"registered {added.count(conn.fd)} times for 100 calls"
    assert ac.get(c.append.remote(1), timeout=30) == 102  # the runtime's loop reads again


@pytest.mark.timeout(60)
def test_a_caller_loop_busy_after_its_call_does_not_hold_the_socket(runtime):
    """After its reply the caller's loop watches the socket a moment longer; if that
    loop then blocks on other work, replies on the same connection for others
    (here another thread's call that the runtime's loop reads) must not wait for it."""
    c = Counter.remote()
    ac.get(c.append.remote(0), timeout=30)
    done = threading.Event()

    def other() -> None:
        first = c.append.remote("a")  # not its last call: the runtime's loop reads it
        c.append.remote("b")
        ac.get(first, timeout=30)
        done.set()

    async def run() -> bool:
        for i in range(5):  # (the runtime's loop has stepped aside by now)
            assert await asyncio.wait_for(c.append.remote("x"), 30) == i + 2
        t = threading.Thread(target=other)
        t.start()
        ok = done.wait(20)  # this loop blocks meanwhile (the point of the test)
        t.join(30)
        return ok

    loop = asyncio.new_event_loop()
    try:
        ok = loop.run_until_complete(asyncio.wait_for(run(), 60))
    finally:
        loop.close()
    assert ok, "another thread's reply waited for a busy caller loop"
