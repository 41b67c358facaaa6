"""A worker's actor-call path without sockets: the handler, the mailbox and the reply
(issue 14: what one call costs on the worker was cut; what it does must not change)."""

import asyncio
import os
import pickle
import threading

import pytest

from actorcore import _global as G
from actorcore import _protocol as P
from actorcore import _task_events as TE
from actorcore._config import Config
from actorcore._mailbox import ActorMailbox
from actorcore._refcount import ERROR, INLINE
from actorcore._rpc import RpcPeer
from actorcore._runtime import NodeInfo
from actorcore._worker import WorkerRuntime

pytestmark = pytest.mark.timeout(30)

AID = b"a" * 16
OWNER = [b"o" * 16, "127.0.0.1", 4000, ""]


class Actor:
    def __init__(self):
        self.seen = []

    def plain(self, x=None):
        self.seen.append(x)
        return x

    async def slow(self, gate):
        self.seen.append("slow")
        await gate.wait()
        return "slow"

    async def quick(self):
        self.seen.append("quick")
        return "quick"


class Conn:
    closed = congested = lendable = False

    def __init__(self):
        self.sent = []
        self.alone = []

    def send(self, msg, buffers=None, alone=False):
        self.sent.append(msg)
        self.alone.append(alone)


class Pool:  # executor jobs run when the test says so
    def __init__(self):
        self.jobs = []

    def submit(self, job):
        self.jobs.append(job)

    def begin_wait(self):
        return False

    def end_wait(self):
        pass

    def jobs_waiting(self):
        return False

    def run(self):
        while self.jobs:
            self.jobs.pop(0)()


@pytest.fixture
def worker():
    node = NodeInfo(
        {"node_id": b"n" * 16, "address": ["127.0.0.1", 1], "arena_path": "", "capacity": 1,
         "session": "s"}
    )  # fmt: skip
    rt = WorkerRuntime(Config(), b"t" * 32, b"w" * 16, node)
    loop = asyncio.new_event_loop()
    rt.loop, rt.loop_thread_id = loop, threading.get_ident()
    rt.pool = Pool()
    before = G.runtime
    G.runtime = rt
    TE.worker_started(rt)
    peer = RpcPeer(rt, rt.bound_handlers())
    peer.conn = Conn()
    yield rt, peer, loop
    G.runtime = before
    TE.reset_after_fork()
    loop.close()


def host(rt, max_concurrency=1, epoch=1):
    mb = ActorMailbox(rt, AID, Actor(), "Actor", max_concurrency)
    mb.epoch = epoch
    rt.mailboxes[AID] = mb
    return mb


def call(peer, rid, method, args=b"", epoch=1):
    msg = P.ActorCallMsg(
        rid, AID, method, os.urandom(16), args, [], [os.urandom(20)], OWNER, 0, epoch
    )
    peer.on_frame(peer.conn, msg, [])
    return msg


def value(reply):
    kind, payload, _nested = reply.results[0]
    return pickle.loads(payload) if kind == INLINE else ("error", pickle.loads(payload))


def test_sync_calls_with_and_without_arguments_reply_in_order(worker):
    rt, peer, _loop = worker
    mb = host(rt)
    call(peer, 1, "plain")
    call(peer, 2, "plain", pickle.dumps(((7,), {}), protocol=5))
    call(peer, 3, "plain", pickle.dumps(((), {"x": "kw"}), protocol=5))
    assert len(rt.pool.jobs) == 1  # one thread drains the actor's calls
    rt.pool.run()
    assert [m.rid for m in peer.conn.sent] == [1, 2, 3]
    assert [value(m) for m in peer.conn.sent] == [None, 7, "kw"]
    assert mb.instance.seen == [None, 7, "kw"] and mb.running == 0 and mb.sync_running == 0


def test_plain_results_round_trip_exactly(worker):
    rt, peer, _loop = worker
    mb = host(rt)
    values = [b"ok", "text", 2**70, -1.5, True, None, [1, 2], {"a": (1,)}]
    for i, v in enumerate(values):
        mb.instance.plain = lambda v=v: v
        call(peer, i + 1, "plain")
        rt.pool.run()
    got = [value(m) for m in peer.conn.sent]
    assert got == values and [type(g) for g in got] == [type(v) for v in values]


def test_an_error_and_a_missing_method_are_replies(worker):
    rt, peer, _loop = worker
    host(rt)
    call(peer, 1, "nope")
    call(peer, 2, "__init__")
    rt.pool.run()
    assert [m.results[0][0] for m in peer.conn.sent] == [ERROR, ERROR]


def test_a_call_for_another_incarnation_is_refused(worker):
    rt, peer, _loop = worker
    host(rt, epoch=3)
    call(peer, 1, "plain", epoch=2)
    assert rt.pool.jobs == []
    (reply,) = peer.conn.sent
    assert reply.TAG == P.Tag.ERROR_REPLY and "incarnation 3" in reply.message


def test_async_calls_run_up_to_the_limit_and_free_their_slots(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=2)
    gate = asyncio.Event()
    mb.instance.slow = lambda g=gate, f=Actor.slow, i=mb.instance: f(i, g)
    for rid, method in [(1, "slow"), (2, "slow"), (3, "quick")]:
        call(peer, rid, method)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.running == 2 and len(mb.queue) == 1 and peer.conn.sent == []
    gate.set()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert sorted(m.rid for m in peer.conn.sent) == [1, 2, 3]
    assert mb.running == 0 and mb.async_tasks == {} and not mb.queue


def test_an_async_call_cancelled_before_it_began_frees_its_slot(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=1)
    msg = call(peer, 1, "quick")  # its task is made, its first step not run yet
    assert mb.running == 1 and msg.task_id in mb.async_tasks
    assert mb.cancel(msg.task_id)
    call(peer, 2, "quick")  # waits for the slot
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == ["quick"]  # only the second ran
    assert [m.rid for m in peer.conn.sent] == [2]
    assert mb.running == 0 and mb.async_tasks == {}


def test_an_async_call_cancelled_while_it_runs_replies_cancelled(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=1)
    gate = asyncio.Event()
    mb.instance.slow = lambda g=gate, f=Actor.slow, i=mb.instance: f(i, g)
    msg = call(peer, 1, "slow")
    call(peer, 2, "quick")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.cancel(msg.task_id)
    loop.run_until_complete(asyncio.sleep(0.01))
    first, second = peer.conn.sent
    assert first.rid == 1 and first.results[0][0] == ERROR
    assert second.rid == 2 and value(second) == "quick"
    assert mb.running == 0 and mb.async_tasks == {}


def test_the_reply_of_a_lone_async_call_goes_out_at_once(worker):
    """Written in the loop's turn when it is the actor's only call; with others
    running, it waits for the turn's end with theirs (one write)."""
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    call(peer, 1, "quick")
    loop.run_until_complete(asyncio.sleep(0.01))
    gate = asyncio.Event()
    mb.instance.slow = lambda g=gate, f=Actor.slow, i=mb.instance: f(i, g)
    call(peer, 2, "slow")
    call(peer, 3, "quick")
    loop.run_until_complete(asyncio.sleep(0.01))
    gate.set()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert [m.rid for m in peer.conn.sent] == [1, 3, 2]
    assert peer.conn.alone == [True, False, True]
