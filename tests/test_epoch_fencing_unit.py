"""Fencing by incarnation, without sockets (issue 10 item 2): on the owner's side a
reply counts only from the incarnation (epoch) its call was sent to, and only while
the owner has not learned that a newer one replaced it; a worker answers nothing past
its daemon's vouch; a node declared dead writes no actor record."""

import itertools
import threading
import time

import pytest

from actorcore._args import PreparedArgs
from actorcore._owner import ActorCore
from actorcore._owner import _actor_events as E
from actorcore._owner._actor_state import ActorState, CallSpec
from actorcore._refcount import INLINE
from actorcore._vouch import Vouch
from actorcore.errors import ActorDiedError

pytestmark = pytest.mark.timeout(10)

A = b"a" * 16
NODE = b"n" * 16
OTHER = b"o" * 16
OLD = [[INLINE, b"old instance", None]]
NEW = [[INLINE, b"new instance", None]]


def call(method="m", retries=0):
    return CallSpec(method, PreparedArgs(), retries, 1)


def of(out, kind):
    return [i for i in out if isinstance(i, kind)]


class Caller:
    def __init__(self):
        self.core = ActorCore(next_rid=itertools.count(1).__next__)

    def feed(self, *events):
        out = self.core.handle(events)
        self.core.validate()  # among others: every call in flight went to the client's epoch
        return out

    @property
    def c(self):
        return self.core.clients[A]

    def submit(self, *specs):
        return self.feed(*[E.SubmitActorCall(A, "C", s.retries_left, s) for s in specs])

    def located(self, epoch, node):
        return self.feed(E.ActorLocated(self.c, "ALIVE", ("w", "h", epoch), epoch, None, node))

    def connect(self, epoch, node):
        out = self.located(epoch, node)
        assert of(out, E.ConnectActor)
        peer = object()
        return peer, out + self.feed(E.ActorConnected(self.c, epoch, peer, node))

    def reply(self, spec_rid, results, peer):
        """The answer of the host behind ``peer`` to request ``spec_rid``."""
        return self.feed(E.CallReplied(self.c, spec_rid, results, peer))


def sent(out):
    return [(i.spec, i.peer, i.spec.epoch) for i in of(out, E.SendActorCall)]


def done(out):
    return [(d.spec, d.results) for d in of(out, E.CallDone)]


def test_a_stale_epoch_reply_is_dropped_and_the_resent_call_completes_from_the_new_one():
    o = Caller()
    a = call("who", retries=1)
    o.submit(a)
    peer0, out = o.connect(0, NODE)
    assert sent(out) == [(a, peer0, 0)]
    rid0 = a.rid
    # the cluster declares the node dead (its lease expired): the call goes again
    out = o.feed(E.NodeDied(NODE))
    assert of(out, E.CallFailed) == [] and list(o.c.queue) == [a]
    assert [i.min_epoch for i in of(out, E.LocateActor)] == [1]
    # the frozen node resumes and answers: dropped, nothing completes
    assert done(o.reply(rid0, OLD, peer0)) == []
    peer1, out = o.connect(1, OTHER)
    assert sent(out) == [(a, peer1, 1)] and a.rid != rid0
    assert done(o.reply(rid0, OLD, peer0)) == []  # still dropped, the call now in flight anew
    assert done(o.reply(a.rid, NEW, peer1)) == [(a, NEW)]
    assert o.c.in_flight == {} and o.c.node_id == OTHER


def test_an_old_instance_answering_the_rid_now_in_flight_to_the_new_one_is_dropped():
    """Even an answer bearing the very rid the call was sent again as counts only from
    the connection (the incarnation) it went to: the call completes with the new
    instance's answer, never the old one's."""
    o = Caller()
    a = call("who", retries=1)
    o.submit(a)
    peer0, _ = o.connect(0, NODE)
    o.feed(E.NodeDied(NODE))
    peer1, out = o.connect(1, OTHER)
    assert sent(out) == [(a, peer1, 1)]
    assert done(o.reply(a.rid, OLD, peer0)) == []  # same rid, the old instance's connection
    assert o.c.in_flight == {a.rid: a}  # still waiting for its own instance
    assert done(o.reply(a.rid, NEW, peer1)) == [(a, NEW)]
    assert done(o.reply(a.rid, OLD, peer0)) == []
    assert o.c.in_flight == {}


def test_learning_of_a_newer_incarnation_by_locating_fences_calls_still_in_flight():
    """No NODE_DIED reached this owner (yet): a call to the old incarnation is still in
    flight when the daemon answers that incarnation 1 runs. The old one was declared
    dead, so the call is lost there, and its late answer never counts."""
    o = Caller()
    a, b = call("a", retries=1), call("b", retries=1)
    o.submit(a, b)
    peer0, _ = o.connect(0, NODE)
    rid_a0 = a.rid
    out = o.feed(E.SendFailed(o.c, b, peer0))  # b never left: the host is gone
    assert o.c.state is ActorState.RESOLVING and o.c.in_flight == {rid_a0: a}
    assert [i.min_epoch for i in of(out, E.LocateActor)] == [1]
    out = o.located(1, OTHER)
    assert o.c.in_flight == {} and list(o.c.queue) == [a, b]  # a lost there, first sent first
    assert done(o.reply(rid_a0, OLD, peer0)) == []
    peer1 = object()
    out = o.feed(E.ActorConnected(o.c, 1, peer1, OTHER))
    assert sent(out) == [(a, peer1, 1), (b, peer1, 1)]
    assert done(o.reply(rid_a0, OLD, peer0)) == []
    assert done(o.reply(a.rid, NEW, peer1) + o.reply(b.rid, NEW, peer1)) == [(a, NEW), (b, NEW)]


def test_without_retries_a_call_to_the_replaced_incarnation_fails_and_never_completes():
    o = Caller()
    a, b = call("a"), call("b", retries=1)
    o.submit(a, b)
    peer0, _ = o.connect(0, NODE)
    rid_a0 = a.rid
    o.feed(E.SendFailed(o.c, b, peer0))
    out = o.located(1, OTHER)
    (failed,) = of(out, E.CallFailed)
    assert failed.spec is a and isinstance(failed.error, ActorDiedError)
    assert done(o.reply(rid_a0, OLD, peer0)) == []


def test_node_death_fences_calls_in_flight_even_while_the_client_is_resolving():
    o = Caller()
    a, b = call("a", retries=1), call("b", retries=1)
    o.submit(a, b)
    peer0, _ = o.connect(0, NODE)
    rid_a0 = a.rid
    o.feed(E.SendFailed(o.c, b, peer0))  # resolving; a still in flight to the node
    out = o.feed(E.NodeDied(NODE))
    assert o.c.in_flight == {} and list(o.c.queue) == [a, b]
    assert of(out, E.CallFailed) == []
    assert done(o.reply(rid_a0, OLD, peer0)) == []


def test_a_rejection_from_a_replaced_incarnation_is_dropped_too():
    o = Caller()
    a = call("a", retries=1)
    o.submit(a)
    _peer0, _ = o.connect(0, NODE)
    rid0 = a.rid
    o.feed(E.NodeDied(NODE))
    assert o.feed(E.CallRejected(o.c, rid0, ValueError("late"), _peer0)) == []
    assert list(o.c.queue) == [a]


def test_a_call_sent_directly_with_an_older_epoch_than_the_clients_is_sent_again():
    """A caller's thread read the open way (the old peer) just as the loop moved on."""
    o = Caller()
    o.submit(call("warm"))
    peer0, _ = o.connect(0, NODE)
    d = call("direct", retries=1)
    d.rid, d.peer, d.epoch = 1000, peer0, 0
    o.feed(E.NodeDied(NODE))
    peer1, _ = o.connect(1, OTHER)
    out = o.feed(E.CallSentDirect(o.c, d))
    assert sent(out) == [(d, peer1, 1)]
    assert done(o.reply(1000, OLD, peer0)) == []
    assert done(o.reply(d.rid, NEW, peer1)) == [(d, NEW)]


def test_a_reply_of_a_call_sent_to_the_current_epoch_still_completes_at_once():
    o = Caller()
    a = call("a")
    o.submit(a)
    peer, _ = o.connect(3, NODE)
    assert a.epoch == 3
    assert done(o.reply(a.rid, NEW, peer)) == [(a, NEW)]


# --- the worker's side: no answer past the daemon's vouch ------------------------------------


class Ended(Exception):
    pass


def end(why):
    raise Ended(why)


def test_a_reply_past_the_vouch_waits_for_the_watch_and_goes_on_when_renewed():
    v = Vouch()
    v.until = time.monotonic() - 0.1  # the watch thread has not answered in time (starved)

    def renew():
        v.until = time.monotonic() + 5.0

    t = threading.Timer(0.05, renew)
    t.start()
    try:
        v.wait_renewed(2.0, end=end)  # returns: the daemon still vouches
    finally:
        t.cancel()
    assert v.until > time.monotonic()


def test_a_reply_past_the_vouch_that_is_never_renewed_ends_the_worker():
    v = Vouch()
    v.until = time.monotonic() - 0.1
    with pytest.raises(Ended, match="vouch"):
        v.wait_renewed(0.1, end=end)


def test_a_stale_record_pointing_at_a_dead_node_is_never_called():
    """The owner knows the node died; the daemon still answers with the old incarnation
    there (its record not moved yet): the owner waits for the next one instead."""
    o = Caller()
    a = call("a")
    o.feed(E.NodeDied(NODE))
    out = o.submit(a)
    assert [i.min_epoch for i in of(out, E.LocateActor)] == [0]
    out = o.located(0, NODE)
    assert of(out, E.ConnectActor) == []
    assert [i.min_epoch for i in of(out, E.LocateActor)] == [1]
    peer1, out = o.connect(1, OTHER)
    assert sent(out) == [(a, peer1, 1)]


def test_a_node_declared_dead_while_connecting_is_not_called_either():
    o = Caller()
    a = call("a")
    o.submit(a)
    assert of(o.located(0, NODE), E.ConnectActor)
    o.feed(E.NodeDied(NODE))
    out = o.feed(E.ActorConnected(o.c, 0, object(), NODE))
    assert sent(out) == [] and o.c.state is ActorState.RESOLVING
    assert [i.min_epoch for i in of(out, E.LocateActor)] == [1]
    peer1, out = o.connect(1, OTHER)
    assert sent(out) == [(a, peer1, 1)]


# --- the daemon's side: a node declared dead writes no actor record ----------------------------


def test_actor_records_are_written_only_while_the_nodes_key_is_in_etcd():
    """A node that resumes after its lease expired must not write its stale view (say,
    RESTARTING at the old node) over the record of the incarnation restarted elsewhere."""
    import asyncio
    import types

    from actorcore.gcs import ActorRecord, ActorTable, ControlStoreError, EmbeddedControlStore

    from actorcore._cluster_node import BatchedActorTable
    from actorcore._peers import NODES

    me = b"\x01" * 16
    aid = b"\x0a" * 16

    def rec(state, node, epoch):
        return ActorRecord(
            actor_id=aid,
            name=None,
            namespace="default",
            state=state,
            node_id=node,
            address=None,
            epoch=epoch,
            owner=None,
            detached=False,
            class_name="C",
        )

    async def main():
        async with EmbeddedControlStore() as store:
            lease = await store.grant_lease(60.0)
            await store.put(NODES + me.hex().encode(), b"me", lease=lease)
            daemon = types.SimpleNamespace(node_id=me, actors=types.SimpleNamespace(actors={}))
            table = BatchedActorTable(store, daemon, lambda: lease)
            await table.put(rec("ALIVE", me, 0))
            assert (await table.get(aid)).state == "ALIVE"
            await store.revoke_lease(lease)  # the cluster declares this node dead ...
            await ActorTable(store).put(rec("ALIVE", b"\x02" * 16, 1))  # ... restarts it
            with pytest.raises(ControlStoreError, match="declared dead"):
                await table.put(rec("RESTARTING", me, 1))  # the resumed node's stale view
            got = await table.get(aid)
            assert (got.state, got.node_id, got.epoch) == ("ALIVE", b"\x02" * 16, 1)
            unguarded = BatchedActorTable(store, daemon)  # (before it registered: no guard)
            await unguarded.put(rec("ALIVE", me, 2))
            assert (await table.get(aid)).epoch == 2

    asyncio.run(main())


def test_a_node_declared_dead_frees_no_name():
    import asyncio

    from actorcore.gcs import EmbeddedControlStore

    from actorcore._cluster_node import FencedNameRegistry
    from actorcore._peers import NODES

    me, aid = b"\x01" * 16, b"\x0a" * 16

    async def main():
        async with EmbeddedControlStore() as store:
            lease = await store.grant_lease(60.0)
            await store.put(NODES + me.hex().encode(), b"me", lease=lease)
            names = FencedNameRegistry(store, me, lambda: lease)
            assert await names.claim("ns", "svc", aid)
            assert await names.release("ns", "svc", aid)  # alive: frees it
            assert await names.claim("ns", "svc", aid)
            await store.revoke_lease(lease)  # declared dead; the actor restarts elsewhere
            assert not await names.release("ns", "svc", aid)
            assert await names.lookup("ns", "svc") == aid
            assert await FencedNameRegistry(store, me, lambda: 0).release("ns", "svc", aid)

    asyncio.run(main())
