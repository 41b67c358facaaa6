"""Streaming generators (issue 12) with real processes: tasks and actor methods
that ``yield``, called with ``num_returns="streaming"``."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

import actorcore as ac
from actorcore import errors as E
from actorcore.testing import wait_for


def _stream(fn, *args, **opts):
    return fn.options(num_returns="streaming", **opts).remote(*args)


@ac.remote
def count(n, payload=0):
    for i in range(n):
        yield i if not payload else np.full(payload, i, dtype=np.int64)


@ac.remote
def stamped(n):
    for i in range(n):
        yield (i, time.monotonic())


@ac.remote
def fails_at(n, k):
    for i in range(n):
        if i == k:
            raise ValueError(f"bad item {i}")
        yield i


@ac.remote
def forever(pause, marker=None):
    try:
        i = 0
        while True:
            yield i
            i += 1
            time.sleep(pause)
    finally:
        if marker:
            with open(marker, "w") as f:
                f.write("closed")


@ac.remote
def pid_then_wait(n):
    yield os.getpid()
    for i in range(1, n):
        time.sleep(0.01)
        yield i


@ac.remote
def dies_once(n, marker):
    first = not os.path.exists(marker)
    if first:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
    for i in range(n):
        if first and i == n // 2:
            os.kill(os.getpid(), signal.SIGKILL)
        yield i


@ac.remote
def sum_of_stream(n):
    gen = count.options(num_returns="streaming").remote(n)
    return sum(ac.get(r) for r in gen)


@ac.remote
class Source:
    def __init__(self):
        self.made = 0

    def items(self, n):
        for i in range(n):
            self.made += 1
            yield i * i

    async def aitems(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"i": i}

    async def abig(self, n, size):
        for i in range(n):
            yield np.full(size, i, dtype=np.int64)

    async def afails(self, k):
        for i in range(k):
            yield i
        raise KeyError("async boom")

    def forever(self):
        i = 0
        while True:
            yield i
            i += 1

    def made_count(self):
        return self.made

    async def aforever(self):
        i = 0
        while True:
            await asyncio.sleep(0.005)
            yield i
            i += 1


# --- options ----------------------------------------------------------------------------


def test_options_are_checked_at_the_call_site(runtime):
    with pytest.raises(ValueError, match="streaming"):
        count.options(num_returns="dynamic")
    with pytest.raises(ValueError, match="only with num_returns='streaming'"):
        count.options(generator_backpressure=3)
    with pytest.raises(ValueError, match="int >= 1"):
        count.options(num_returns="streaming", _generator_backpressure_num_objects="x")
    src = Source.remote()
    with pytest.raises(TypeError, match="unknown option"):
        src.items.options(num_returns="streaming", bogus=1)


# --- order, values, errors ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_items_arrive_in_order_and_the_end_counts_them(runtime):
    gen = _stream(count, 200)
    assert isinstance(gen, ac.ObjectRefGenerator)
    assert [ac.get(r) for r in gen] == list(range(200))
    assert ac.get(gen.completed()) == 200
    with pytest.raises(StopIteration):
        next(gen)


@pytest.mark.timeout(60)
def test_an_empty_generator_ends_at_once(runtime):
    assert list(_stream(count, 0)) == []


@pytest.mark.timeout(60)
def test_an_error_arrives_at_its_item_then_iteration_stops(runtime):
    refs = list(_stream(fails_at, 10, 3))
    assert len(refs) == 4
    assert ac.get(refs[:3]) == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3") as info:
        ac.get(refs[3])
    assert isinstance(info.value, E.TaskError)


@pytest.mark.timeout(60)
def test_a_function_that_does_not_yield_fails_clearly(runtime):
    @ac.remote
    def plain():
        return 5

    refs = list(_stream(plain))
    assert len(refs) == 1
    with pytest.raises(TypeError, match="not a generator"):
        ac.get(refs[0])


@pytest.mark.timeout(60)
def test_large_items_go_through_the_store(runtime):
    from actorcore import _global as G

    size = 300_000  # 2.4 MB each
    refs = list(_stream(count, 5, size))
    rt = G.require()
    assert all(rt.object_locations(r.id) == {rt.node.node_id} for r in refs)
    got = [ac.get(r) for r in refs]
    assert [int(a[0]) for a in got] == [0, 1, 2, 3, 4]
    assert all(a.shape == (size,) and int(a.sum()) == i * size for i, a in enumerate(got))


@pytest.mark.timeout(60)
def test_a_worker_consumes_a_stream(runtime):
    assert ac.get(sum_of_stream.remote(50), timeout=30) == sum(range(50))


@pytest.mark.timeout(60)
def test_consumers_holding_every_cpu_give_it_back_while_they_wait(runtime):
    # two consumer tasks take both CPUs; their producers need one each
    got = ac.get([sum_of_stream.remote(20) for _ in range(2)], timeout=40)
    assert got == [sum(range(20))] * 2


# --- back-pressure -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "option", ["generator_backpressure", "_generator_backpressure_num_objects"]
)
def test_backpressure_bounds_how_far_the_producer_runs_ahead(runtime, option):
    n, window = 30, 3
    taken_at = []
    made_at = []
    for ref in _stream(stamped, n, **{option: window}):
        i, t = ac.get(ref)
        made_at.append(t)
        taken_at.append(time.monotonic())
        time.sleep(0.003)  # a slow consumer (workload, not synchronization)
    assert len(made_at) == n
    # item i is made only after the consumer took item i - window
    for i in range(window, n):
        assert made_at[i] > taken_at[i - window], (i, made_at[i], taken_at[i - window])


@pytest.mark.timeout(60)
def test_without_backpressure_the_producer_runs_ahead(runtime):
    gen = _stream(stamped, 20)
    first = ac.get(next(gen))
    wait_for(
        lambda: gen.completed() in ac.wait([gen.completed()], timeout=0)[0],
        20,
        what="the producer to finish before the consumer read on",
    )
    rest = [ac.get(r) for r in gen]
    assert first[0] == 0 and [x[0] for x in rest] == list(range(1, 20))


# --- cancel, drop, killed workers ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cancel_stops_the_producer_and_ends_iteration(runtime, tmp_path):
    marker = str(tmp_path / "closed")
    gen = _stream(forever, 0.002, marker)
    assert ac.get(next(gen)) == 0
    ac.cancel(gen)
    refs = list(gen)  # ends: never hangs
    with pytest.raises(E.TaskCancelledError):
        ac.get(refs[-1])
    wait_for(lambda: os.path.exists(marker), 20, what="the generator to be closed")


@pytest.mark.timeout(60)
def test_dropping_the_generator_frees_items_and_stops_the_producer(runtime, tmp_path):
    from actorcore import _global as G

    marker = str(tmp_path / "closed")
    gen = _stream(forever, 0.0, marker, generator_backpressure=4)
    refs = [next(gen) for _ in range(3)]
    oids = [r.id for r in refs]
    del refs
    rt = G.require()
    del gen
    wait_for(lambda: os.path.exists(marker), 20, what="the producer to stop")
    wait_for(lambda: not any(o in rt.table.entries for o in oids), 20, what="the items freed")


@pytest.mark.timeout(60)
def test_dropping_frees_large_items_in_the_store(runtime):
    from actorcore import _global as G

    gen = _stream(count, 4, 200_000)
    refs = list(gen)
    oids = [r.id for r in refs]
    assert int(ac.get(refs[3])[0]) == 3
    del refs, gen
    rt = G.require()
    wait_for(lambda: not any(o in rt.table.entries for o in oids), 20, what="the items freed")


@pytest.mark.timeout(90)
def test_a_killed_worker_without_retries_ends_the_stream_with_an_error(runtime):
    gen = _stream(pid_then_wait, 1000, max_retries=0, generator_backpressure=1)
    pid = ac.get(next(gen))
    os.kill(pid, signal.SIGKILL)
    refs = list(gen)  # never hangs
    with pytest.raises(E.WorkerCrashedError):
        ac.get(refs[-1])
    assert ac.get(refs[:-1]) == list(range(1, len(refs)))


@pytest.mark.timeout(90)
def test_a_killed_worker_with_retries_restarts_and_skips_what_was_seen(runtime, tmp_path):
    marker = str(tmp_path / "first")
    values = [ac.get(r) for r in _stream(dies_once, 20, marker, max_retries=2)]
    assert values == list(range(20))
    assert os.path.exists(marker)


# --- actors ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_actor_method_streams(runtime):
    src = Source.remote()
    gen = src.items.options(num_returns="streaming").remote(10)
    assert [ac.get(r) for r in gen] == [i * i for i in range(10)]
    empty = src.items.options(num_returns="streaming").remote(0)
    assert ac.get(empty.completed()) == 0 and list(empty) == []


@pytest.mark.timeout(60)
async def test_async_generator_actor_method_from_an_asyncio_app(runtime):
    src = Source.remote()
    got = [await r async for r in src.aitems.options(num_returns="streaming").remote(20)]
    assert got == [{"i": i} for i in range(20)]
    big = [await r async for r in src.abig.options(num_returns="streaming").remote(3, 200_000)]
    assert [int(a[0]) for a in big] == [0, 1, 2] and big[2].shape == (200_000,)
    gen = src.afails.options(num_returns="streaming").remote(2)
    refs = [r async for r in gen]
    assert [await r for r in refs[:2]] == [0, 1]
    with pytest.raises(KeyError):
        await refs[2]
    gen = src.aforever.options(num_returns="streaming", generator_backpressure=2).remote()
    assert await (await gen.__anext__()) == 0
    ac.cancel(gen)
    refs = [r async for r in gen]
    with pytest.raises(E.TaskCancelledError):
        await refs[-1]
    with pytest.raises(E.BlockingCallError):
        gen2 = src.aitems.options(num_returns="streaming").remote(1)
        while True:
            next(gen2)


@pytest.mark.timeout(60)
def test_a_stream_that_ends_before_its_generator_is_made_keeps_its_items(runtime, monkeypatch):
    # a direct send lets a short call end on the loop before the caller's thread
    # (descheduled, under load) makes the generator: it must still see every item
    from actorcore import _global as G

    streams = G.require().streams
    make = streams.generator

    def late(end, backpressure):
        wait_for(lambda: end.id not in streams.buffers, what="the stream ended on the loop")
        return make(end, backpressure)

    src = Source.remote()
    assert ac.get(src.made_count.remote(), timeout=20) == 0  # up: the next calls go direct
    monkeypatch.setattr(streams, "generator", late)
    refs = list(src.afails.options(num_returns="streaming").remote(2))
    assert [ac.get(r, timeout=10) for r in refs[:2]] == [0, 1] and len(refs) == 3
    with pytest.raises(KeyError):
        ac.get(refs[2], timeout=10)
    assert ac.get(list(_stream(src.items, 3)), timeout=10) == [0, 1, 4]


@pytest.mark.timeout(60)
def test_dropping_an_actor_stream_frees_the_actor_for_its_next_call(runtime):
    src = Source.remote()
    gen = src.forever.options(num_returns="streaming", generator_backpressure=2).remote()
    assert [ac.get(next(gen)) for _ in range(3)] == [0, 1, 2]
    del gen  # the sync method is paused on back-pressure: it must stop, or the next call waits
    assert ac.get(src.made_count.remote(), timeout=20) == 0


@pytest.mark.timeout(60)
def test_an_actor_killed_mid_stream_ends_it_with_actor_died(runtime):
    src = Source.remote()
    gen = src.forever.options(num_returns="streaming", generator_backpressure=2).remote()
    assert ac.get(next(gen)) == 0
    ac.kill(src)
    refs = list(gen)  # never hangs
    with pytest.raises(E.ActorDiedError):
        ac.get(refs[-1])


@pytest.mark.timeout(60)
def test_streaming_declared_in_the_decorators(runtime):
    @ac.remote(num_returns="streaming", generator_backpressure=2)
    def letters():
        yield from "abc"

    @ac.remote
    class Words:
        @ac.method(num_returns="streaming")
        def split(self, text):
            yield from text.split()

    assert [ac.get(r) for r in letters.remote()] == ["a", "b", "c"]
    w = Words.remote()
    assert [ac.get(r) for r in w.split.remote("to be or not")] == ["to", "be", "or", "not"]
    refs = w.split.options(num_returns=1).remote  # a plain call of a generator method
    with pytest.raises(E.ActorCoreError):
        ac.get(refs("x"))


@ac.remote(max_restarts=1, max_task_retries=1)
class Paced:
    """Makes item i once the test sends a byte on this attempt's own connection."""

    def __init__(self):
        import uuid

        self.token = uuid.uuid4().hex[:8]

    def where(self):
        return os.getpid(), self.token

    def items(self, port, n):
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(self.token.encode())
            for i in range(n):
                if s.recv(1) != b"x":
                    return
                yield (self.token, i)


@ac.remote(max_restarts=1, max_task_retries=1)
class AsyncPaced:
    """:class:`Paced` with an async generator."""

    def __init__(self):
        import uuid

        self.token = uuid.uuid4().hex[:8]

    async def where(self):
        return os.getpid(), self.token

    async def items(self, port, n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(self.token.encode())
            for i in range(n):
                if await reader.read(1) != b"x":
                    return
                yield (self.token, i)
        finally:
            writer.close()


def _restarted(handle) -> bool:
    """The daemon placed the actor's next incarnation (the old one was dropped first)."""
    from actorcore.testing import list_state

    aid = handle.id.hex()
    return any(
        a["actor_id"] == aid and a["state"] == "ALIVE" and a["restarts"] >= 1
        for a in list_state("actors")
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backpressure", [0, 2])
@pytest.mark.parametrize("cls", [Paced, AsyncPaced], ids=["sync", "async"])
def test_a_stream_retried_on_a_restart_in_the_same_worker(runtime, backpressure, cls):
    """A packed actor restarted (``ac.kill(no_restart=False)``) in the same worker
    gets its streaming call again, on the same connection and under the same
    stream id. The consumer gets every item once, in order: the first ones from
    the first incarnation, the rest from the second; nothing the first made
    after it was dropped; and the retry is told at once how far the consumer got
    (with back-pressure it would wait forever for an ack otherwise)."""
    import socket
    import threading

    n = 8
    g = cls.options(num_cpus=0).remote()
    pid, first = ac.get(g.where.remote(), timeout=30)
    opts = {"generator_backpressure": backpressure} if backpressure else {}
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(30)
        gen = g.items.options(num_returns="streaming", **opts).remote(srv.getsockname()[1], n)
        a, _ = srv.accept()
        with a:
            assert a.recv(8).decode() == first
            a.sendall(b"xxx")
            got = [ac.get(next(gen), timeout=30) for _ in range(3)]
            assert got == [(first, 0), (first, 1), (first, 2)]
            ac.kill(g, no_restart=False)  # dropped while it waits for its next byte
            wait_for(lambda: _restarted(g), 30, what="the actor restarted")
            a.sendall(b"x")  # it makes one more item, after it was dropped
            b, _ = srv.accept()  # the call again, on the next incarnation
        with b:
            second = b.recv(8).decode()
            assert second != first
            b.sendall(b"x" * n)
            out: list = []
            reader = threading.Thread(target=lambda: out.extend(ac.get(r) for r in gen))
            reader.start()
            reader.join(30)
            assert not reader.is_alive(), f"the stream hangs after {got + out}"
    assert ac.get(g.where.remote(), timeout=30) == (pid, second)  # in the same worker
    assert got + out == [(first, i) for i in range(3)] + [(second, i) for i in range(3, n)]
