"""The owner's actor core without sockets: call order, locating, restarts, lifetime."""

import itertools

import pytest

from actorcore._args import PreparedArgs
from actorcore._owner import ActorCore
from actorcore._owner import _actor_events as E
from actorcore._owner._actor_state import ActorState, CallSpec
from actorcore._refcount import INLINE
from actorcore.errors import ActorCoreError, ActorDiedError, TaskCancelledError

pytestmark = pytest.mark.timeout(10)

A = b"a" * 16
NODE = b"n" * 16
OTHER = b"o" * 16
OK = [[INLINE, b"x", None]]


def call(method="m", retries=0, deps=0):
    args = PreparedArgs()
    args.deps = [object() for _ in range(deps)]
    return CallSpec(method, args, retries, 1)


class Caller:
    def __init__(self):
        self.core = ActorCore(next_rid=itertools.count(1).__next__)

    def feed(self, *events):
        out = self.core.handle(events)
        self.core.validate()
        return out

    def submit(self, *specs, actor=A, retries=0):
        return self.feed(*[E.SubmitActorCall(actor, "C", retries, s) for s in specs])

    def client(self, actor=A):
        return self.core.clients[actor]

    def connect(self, epoch=0, node=NODE, actor=A):
        """Answer the pending locate with an ALIVE host; returns (peer, instructions)."""
        c = self.client(actor)
        out = self.feed(E.ActorLocated(c, "ALIVE", ("w", "h", 1), epoch, None, node))
        assert of(out, E.ConnectActor)
        peer = object()
        return peer, self.feed(E.ActorConnected(c, epoch, peer, node))


def of(out, kind):
    return [i for i in out if isinstance(i, kind)]


def sent(out):
    return [i.spec for i in of(out, E.SendActorCall)]


# --- call order ---------------------------------------------------------------------------


def test_calls_wait_for_the_host_then_leave_in_caller_order():
    o = Caller()
    calls = [call(str(i)) for i in range(3)]
    out = o.submit(*calls)
    assert len(of(out, E.LocateActor)) == 1  # one locate for all
    assert sent(out) == []
    peer, out = o.connect()
    assert sent(out) == calls
    assert all(i.peer is peer for i in of(out, E.SendActorCall))
    assert [s.rid for s in calls] == sorted(s.rid for s in calls)


def test_a_call_waiting_for_its_arguments_holds_the_calls_behind_it():
    o = Caller()
    o.submit()  # nothing
    first, blocked, after = call("first"), call("blocked", deps=1), call("after")
    o.submit(first)
    o.connect()
    out = o.submit(blocked, after)
    assert of(out, E.ResolveArgs) == [E.ResolveArgs(blocked, blocked.args.deps)]
    assert sent(out) == []
    out = o.feed(E.ArgsReady(blocked, [[0, INLINE, b"v", b"1"]]))
    assert sent(out) == [blocked, after]
    assert blocked.resolved == [[0, INLINE, b"v", b"1"]]


def test_a_failed_argument_fails_its_call_and_releases_the_rest():
    o = Caller()
    o.submit(call("warm"))
    o.connect()
    bad, after = call("bad", deps=1), call("after")
    o.submit(bad, after)
    out = o.feed(E.ArgsFailed(bad, ValueError("upstream")))
    assert [f.spec for f in of(out, E.CallFailed)] == [bad]
    assert sent(out) == [after]


def test_a_call_that_could_not_be_sent_goes_again_first_after_relocating():
    o = Caller()
    a, b, c = call("a"), call("b"), call("c")
    o.submit(a)
    peer, _ = o.connect()
    out = o.submit(b, c)
    assert sent(out) == [b, c]
    # both sends failed at once (the connection had closed); reported in either order
    out = o.feed(E.SendFailed(o.client(), c, peer))
    out += o.feed(E.SendFailed(o.client(), b, peer))
    assert list(o.client().queue) == [b, c]
    assert o.client().state is ActorState.RESOLVING
    assert len(of(out, E.LocateActor)) == 1
    _peer, out = o.connect(epoch=0)
    assert sent(out) == [b, c]
    assert b.retries_left == 0  # never ran: no retry used


# --- restarts --------------------------------------------------------------------------------


def test_host_death_retries_calls_in_their_first_order_on_the_next_incarnation():
    o = Caller()
    calls = [call(str(i), retries=1) for i in range(3)]
    o.submit(*calls)
    peer, _ = o.connect(epoch=0)
    later = call("later", retries=1)
    assert sent(o.submit(later)) == [later]
    # the reply to the second call says the connection broke
    out = o.feed(E.CallLost(o.client(), calls[1].rid, peer, ConnectionError("broke")))
    (locate,) = of(out, E.LocateActor)
    assert locate.min_epoch == 1  # the next incarnation
    assert list(o.client().queue) == [*calls, later]
    _p, out = o.connect(epoch=1)
    assert sent(out) == [*calls, later]
    assert all(s.retries_left == 0 for s in calls)


def test_host_death_without_retries_fails_the_calls_in_flight():
    o = Caller()
    a, b = call("a"), call("b")
    o.submit(a, b)
    peer, _ = o.connect()
    out = o.feed(E.CallLost(o.client(), a.rid, peer, ActorDiedError("gone")))
    failed = of(out, E.CallFailed)
    assert [f.spec for f in failed] == [a, b]
    assert all(isinstance(f.error, ActorDiedError) for f in failed)
    # late failures of calls already failed change nothing
    assert o.feed(E.CallLost(o.client(), b.rid, peer, ConnectionError("x"))) == []


def test_a_dead_actor_fails_queued_and_later_calls():
    o = Caller()
    a = call("a")
    o.submit(a)
    out = o.feed(E.ActorLocated(o.client(), "DEAD", None, 3, "out of restarts"))
    (failed,) = of(out, E.CallFailed)
    assert failed.spec is a and "out of restarts" in str(failed.error)
    b = call("b")
    (failed,) = of(o.submit(b), E.CallFailed)
    assert failed.spec is b and isinstance(failed.error, ActorDiedError)


def test_unreachable_host_asks_for_the_next_incarnation():
    o = Caller()
    o.submit(call())
    c = o.client()
    o.feed(E.ActorLocated(c, "ALIVE", ("w", "h", 1), 2, None, NODE))
    out = o.feed(E.ActorUnreachable(c, 2))
    assert of(out, E.LocateActor) == [E.LocateActor(c, 3)]


def test_a_system_error_reply_fails_only_that_call():
    o = Caller()
    a, b = call("a", retries=2), call("b")
    o.submit(a, b)
    o.connect()
    out = o.feed(E.CallRejected(o.client(), a.rid, ActorCoreError("bad frame")))
    assert [f.spec for f in of(out, E.CallFailed)] == [a]
    assert o.client().state is ActorState.ALIVE
    out = o.feed(E.CallReplied(o.client(), b.rid, OK))
    assert of(out, E.CallDone) == [E.CallDone(b, OK, NODE)]  # (results are on its node)


def test_peer_closed_relocates_only_actors_with_calls_to_make():
    o = Caller()
    a = call()
    o.submit(a)
    peer, _ = o.connect()
    o.feed(E.CallReplied(o.client(), a.rid, OK))
    assert of(o.feed(E.PeerClosed(peer)), E.LocateActor) == []  # idle: locate on next call
    assert o.client().state is ActorState.RESOLVING
    assert len(of(o.submit(call()), E.LocateActor)) == 1


def test_node_death_loses_the_calls_on_it():
    o = Caller()
    a, b = call("a", retries=1), call("b")
    o.submit(a, b)
    o.connect(node=OTHER)
    out = o.feed(E.NodeDied(NODE))
    assert out == []  # another node
    out = o.feed(E.NodeDied(OTHER))
    assert [f.spec for f in of(out, E.CallFailed)] == [b]
    assert list(o.client().queue) == [a]
    assert len(of(out, E.LocateActor)) == 1


# --- creation -------------------------------------------------------------------------------


def create(o, actor=A, deps=0):
    args = PreparedArgs()
    args.deps = [object() for _ in range(deps)]
    args.held = [b"h" * 16]
    return o.feed(E.CreateActor(actor, "C", 0, {"name": None}, args, lambda _r: None))


def test_calls_made_before_the_daemon_has_the_actor_wait_for_it():
    o = Caller()
    out = create(o)
    (send,) = of(out, E.SendCreate)
    assert send.resolved == []
    a = call()
    assert of(o.submit(a), E.LocateActor) == []  # not before the daemon has it
    out = o.feed(E.ActorRegistered(A, A))
    assert of(out, E.LocateActor) == [E.LocateActor(o.client(), 0)]
    _p, out = o.connect()
    assert sent(out) == [a]


def test_creation_waits_for_its_arguments_and_fails_with_them():
    o = Caller()
    out = create(o, deps=1)
    (resolve,) = of(out, E.ResolveArgs)
    assert of(out, E.SendCreate) == []
    a = call()
    o.submit(a)
    out = o.feed(E.ArgsFailed(resolve.item, ValueError("bad arg")))
    assert of(out, E.CreationFailed)[0].creation is resolve.item
    (failed,) = of(out, E.CallFailed)
    assert failed.spec is a and "could not be created" in str(failed.error)
    assert of(out, E.ReleaseHeld) == [E.ReleaseHeld([b"h" * 16])]


def test_named_creation_answered_with_an_existing_actor_calls_that_one():
    o = Caller()
    create(o)
    a = call()
    o.submit(a)
    existing = b"e" * 16
    out = o.feed(E.ActorRegistered(A, existing))
    (locate,) = of(out, E.LocateActor)
    assert locate.client.actor_id == existing
    assert o.core.clients[existing] is o.client(A)
    _p, out = o.connect()
    (s,) = of(out, E.SendActorCall)
    assert s.client.actor_id == existing and s.spec is a


# --- cancel and lifetime ------------------------------------------------------------------------


def test_cancel_drops_a_queued_call_and_tells_the_host_of_a_sent_one():
    o = Caller()
    a, b, c = call("a"), call("b", deps=1), call("c")
    o.submit(a)
    peer, _ = o.connect()
    o.submit(b, c)
    out = o.feed(E.CancelCall(b.return_ids[0], False))
    (failed,) = of(out, E.CallFailed)
    assert failed.spec is b and isinstance(failed.error, TaskCancelledError)
    assert sent(out) == [c]  # no longer held up
    assert o.feed(E.CancelCall(a.return_ids[0], False)) == [E.SendCancel(peer, a.task_id)]
    assert o.feed(E.CancelCall(b"?" * 16, False)) == []


def test_out_of_scope_ends_the_actor_once_its_calls_are_done():
    o = Caller()
    create(o)
    o.feed(E.ActorRegistered(A, A))
    a = call()
    o.submit(a)
    o.connect()
    assert o.feed(E.ActorOutOfScope(A)) == []  # a call is still in flight
    out = o.feed(E.CallReplied(o.client(), a.rid, OK))
    assert of(out, E.KillActor) == [E.KillActor(A)]
    assert of(out, E.ReleaseHeld) == [E.ReleaseHeld([b"h" * 16])]
    assert A not in o.core.clients


def test_out_of_scope_before_creation_is_answered_waits():
    o = Caller()
    create(o)
    assert o.feed(E.ActorOutOfScope(A)) == []
    o.feed(E.ActorRegistered(A, A))
    _p, out = o.connect()
    assert of(out, E.KillActor) == [E.KillActor(A)]


def test_out_of_scope_of_an_actor_never_called_kills_it():
    o = Caller()
    assert o.feed(E.ActorOutOfScope(b"z" * 16)) == [E.KillActor(b"z" * 16)]


# --- calls sent by the caller's thread --------------------------------------------------------


def test_the_way_is_published_open_only_while_alive_with_nothing_queued():
    o = Caller()
    a = call()
    o.submit(a)
    assert o.client().direct is None  # locating
    peer, _ = o.connect()
    assert o.client().direct is peer
    held = call("held", deps=1)
    o.submit(held)
    assert o.client().direct is None  # a call waits for its arguments: keep the order
    o.feed(E.ArgsReady(held, []))
    assert o.client().direct is peer
    o.feed(E.PeerClosed(peer))
    assert o.client().direct is None


def test_a_call_sent_directly_is_tracked_and_completed():
    o = Caller()
    o.submit(call("warm"))
    peer, _ = o.connect()
    d = call("direct")
    d.rid, d.peer, d.epoch = 1000, peer, o.client().epoch  # (as the shell does)
    assert o.feed(E.CallSentDirect(o.client(), d)) == []
    assert o.client().in_flight[1000] is d
    out = o.feed(E.CallReplied(o.client(), 1000, OK))
    assert of(out, E.CallDone) == [E.CallDone(d, OK, NODE)]


def test_a_call_sent_directly_to_a_host_that_went_away_is_retried():
    o = Caller()
    o.submit(call("warm"))
    peer, _ = o.connect()
    out = o.feed(E.PeerClosed(peer))  # handled before the direct call's event
    d = call("direct", retries=1)
    d.rid, d.peer, d.epoch = 1000, peer, o.client().epoch  # (as the shell does)
    out += o.feed(E.CallSentDirect(o.client(), d))
    assert list(o.client().queue) == [d] and 1000 not in o.client().in_flight
    assert len(of(out, E.LocateActor)) == 1
    assert o.feed(E.CallLost(o.client(), 1000, peer, ConnectionError("x"))) == []


def test_a_call_sent_directly_to_a_dead_actor_fails():
    o = Caller()
    o.submit(call("warm"))
    peer, _ = o.connect()
    o.feed(E.ActorDied(o.client(), ConnectionError("daemon gone")))
    d = call("direct")
    d.rid, d.peer, d.epoch = 1000, peer, o.client().epoch  # (as the shell does)
    (failed,) = of(o.feed(E.CallSentDirect(o.client(), d)), E.CallFailed)
    assert failed.spec is d and isinstance(failed.error, ActorDiedError)
