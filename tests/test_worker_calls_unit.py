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


# --- one caller's order across sync and async methods (ActorMailbox._Caller) -------------


def other_peer(rt):
    peer = RpcPeer(rt, rt.bound_handlers())
    peer.conn = Conn()
    return peer


def test_an_async_call_waits_for_the_callers_sync_call_before_it(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    assert mb.ordered
    call(peer, 1, "plain", pickle.dumps(((1,), {}), protocol=5))
    call(peer, 2, "quick")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [] and mb.running == 1  # the async call is held, not started
    rt.pool.run()  # the sync call ends: the async one is admitted and started
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [1, "quick"]
    assert [m.rid for m in peer.conn.sent] == [1, 2]
    assert mb.running == 0 and not mb.queue and not mb.callers[peer].held


def test_a_sync_call_waits_for_the_callers_async_call_before_it_to_begin(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    gate = asyncio.Event()
    mb.instance.slow = lambda g=gate, f=Actor.slow, i=mb.instance: f(i, g)
    call(peer, 1, "slow")  # its task is made, its first step not run yet
    call(peer, 2, "plain", pickle.dumps(((2,), {}), protocol=5))
    assert rt.pool.jobs == []  # held until the async call begins
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == ["slow"]
    assert len(rt.pool.jobs) == 1  # admitted after its first step, not at its end
    rt.pool.run()
    assert mb.instance.seen == ["slow", 2]
    gate.set()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert sorted(m.rid for m in peer.conn.sent) == [1, 2]
    assert mb.running == 0 and mb.callers[peer].unbegun is None


def test_calls_of_other_callers_are_not_held_back(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    peer2 = other_peer(rt)
    call(peer, 1, "plain", pickle.dumps(((1,), {}), protocol=5))  # its thread not run yet
    call(peer, 2, "quick")  # held behind it
    call(peer2, 3, "quick")  # another caller: starts at once
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == ["quick"] and [m.rid for m in peer2.conn.sent] == [3]
    rt.pool.run()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == ["quick", 1, "quick"]
    assert [m.rid for m in peer.conn.sent] == [1, 2]


def test_held_calls_keep_the_callers_order_and_the_concurrency_limit(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=2)
    gate = asyncio.Event()
    mb.instance.slow = lambda g=gate, f=Actor.slow, i=mb.instance: f(i, g)
    call(peer, 1, "plain", pickle.dumps(((1,), {}), protocol=5))
    call(peer, 2, "slow")
    call(peer, 3, "slow")
    call(peer, 4, "quick")  # async: behind the two slow ones (the limit)
    call(peer, 5, "plain", pickle.dumps(((5,), {}), protocol=5))  # sync: after 4 began
    rt.pool.run()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [1, "slow", "slow"] and mb.running == 2
    assert rt.pool.jobs == []  # 5 waits for 4 to begin
    gate.set()
    loop.run_until_complete(asyncio.sleep(0.01))
    rt.pool.run()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [1, "slow", "slow", "quick", 5]
    assert sorted(m.rid for m in peer.conn.sent) == [1, 2, 3, 4, 5]
    assert mb.running == 0 and not mb.queue and not mb.callers[peer].held


def test_a_held_call_can_be_cancelled_and_the_next_goes_on(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    call(peer, 1, "plain", pickle.dumps(((1,), {}), protocol=5))
    held = call(peer, 2, "quick")
    call(peer, 3, "plain", pickle.dumps(((3,), {}), protocol=5))  # held behind 2
    assert mb.cancel(held.task_id)
    (cancelled,) = peer.conn.sent
    assert cancelled.rid == 2 and cancelled.results[0][0] == ERROR
    assert [c.rid for c in mb.queue] == [3]  # admitted: nothing of its caller holds it now
    rt.pool.run()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [1, 3]
    assert [m.rid for m in peer.conn.sent] == [2, 1, 3]


def test_a_queued_sync_call_cancelled_lets_the_held_async_call_go(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    peer2 = other_peer(rt)
    call(peer2, 1, "plain", pickle.dumps(((1,), {}), protocol=5))  # runs (its thread)
    queued = call(peer, 2, "plain", pickle.dumps(((2,), {}), protocol=5))  # queued behind
    call(peer, 3, "quick")  # held behind 2
    assert mb.cancel(queued.task_id)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == ["quick"]
    rt.pool.run()
    assert mb.instance.seen == ["quick", 1]
    assert [m.rid for m in peer.conn.sent] == [2, 3]


def test_held_calls_fail_when_the_actor_goes(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    call(peer, 1, "plain", pickle.dumps(((1,), {}), protocol=5))
    call(peer, 2, "quick")
    call(peer, 3, "plain")
    mb.close("killed")
    died = [m for m in peer.conn.sent if m.TAG == P.Tag.ERROR_REPLY]
    assert sorted(m.rid for m in died) == [2, 3] and "killed" in died[0].message
    rt.pool.run()  # the running call ends; nothing more starts
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [1] and mb.running == 0 and not mb.callers[peer].held


def test_a_threaded_callers_async_call_waits_for_all_its_sync_calls(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=4)
    call(peer, 1, "plain", pickle.dumps(((1,), {}), protocol=5))
    call(peer, 2, "plain", pickle.dumps(((2,), {}), protocol=5))
    call(peer, 3, "quick")
    mb.blocked()  # the first waits in get(): the second gets a thread of its own
    assert len(rt.pool.jobs) == 2 and mb.sync_running == 2
    rt.pool.jobs.pop()()  # the second ends first
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [2]  # the async call still waits for the first
    rt.pool.run()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [2, 1, "quick"]


class SyncOnly:
    def f(self): ...


class AsyncOnly:
    async def f(self): ...

    async def g(self): ...


def test_actors_with_one_kind_of_methods_keep_the_plain_path(worker):
    rt, peer, loop = worker
    for cls, ordered in [(SyncOnly, False), (AsyncOnly, False), (Actor, True)]:
        assert ActorMailbox(rt, AID, cls(), cls.__name__, 1).ordered is ordered
    mb = host(rt, max_concurrency=10)
    call(peer, 1, "quick")
    call(peer, 2, "quick")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert [m.rid for m in peer.conn.sent] == [1, 2] and len(mb.callers) == 1
    for i in range(70):  # callers come and go: the idle ones are forgotten
        p = other_peer(rt)
        call(p, 10 + i, "quick")
        loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(mb.callers) <= 64


def test_async_calls_started_off_the_loop_begin_before_later_ones(worker):
    """A call admitted by the executor thread (its sync call before it ended) is
    started on the loop later; a call pushed meanwhile must not begin before it."""
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    call(peer, 1, "plain")
    call(peer, 2, "quick")  # held behind 1
    t = threading.Thread(target=rt.pool.run)  # 1 runs and ends off the loop's thread
    t.start()
    t.join(10)
    assert [c.rid for c in mb.to_start] == [2]
    call(peer, 3, "quick")  # on the loop: behind 2
    loop.run_until_complete(asyncio.sleep(0.01))
    assert [m.rid for m in peer.conn.sent] == [1, 2, 3]
    assert mb.running == 0 and not mb.to_start


def test_an_async_call_about_to_start_on_the_loop_can_be_cancelled(worker):
    rt, peer, loop = worker
    mb = host(rt, max_concurrency=10)
    call(peer, 1, "plain")
    msg = call(peer, 2, "quick")  # held behind 1
    t = threading.Thread(target=rt.pool.run)
    t.start()
    t.join(10)
    assert [c.rid for c in mb.to_start] == [2]
    assert mb.cancel(msg.task_id)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert mb.instance.seen == [None]
    assert [(m.rid, m.results[0][0]) for m in peer.conn.sent] == [(1, INLINE), (2, ERROR)]
    assert mb.running == 0 and not mb.to_start and mb.async_tasks == {}
