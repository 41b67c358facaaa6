"""The owner's fast paths for pipelined actor calls (issue 14, h15pipe), without sockets.

Each fast path must do exactly what the general path does for the case it takes,
and refuse (changing nothing) every other case: an actor reply completed without
events (``ActorCore.replied``), a call's results completed without events
(``ObjectCore.results_arrived``), the bare submission forms, a single waiter kept
bare, and several calls encoded into one write.
"""

import itertools

import pytest

from actorcore import _protocol as P
from actorcore._args import NO_ARGS, PreparedArgs, prepare_args
from actorcore._owner import ActorCore
from actorcore._owner import _actor_events as E
from actorcore._owner import _object_events as OE
from actorcore._owner._actor_state import ActorState, CallSpec
from actorcore._owner._objects import ObjectCore
from actorcore._refcount import ERROR, FAILED, INLINE, PENDING, READY, STORE, ObjectTable
from actorcore._rpc import RpcPeer, Service
from actorcore._serialization import exception_blob
from actorcore.errors import ConnectionBrokenError, MessageTooLargeError

pytestmark = pytest.mark.timeout(10)

A = b"a" * 16
NODE = b"n" * 16
ME = b"m" * 16
ADDR = (ME, "127.0.0.1", 1)


def call(method="m", retries=0):
    return CallSpec(method, PreparedArgs(), retries, 1)


def connected(core, epoch=0):
    """A core whose client of actor A is alive at a host; returns (client, peer)."""
    core.handle([E.SubmitActorCall(A, "C", 0, call("first"))])
    c = core.clients[A]
    core.handle([E.ActorLocated(c, "ALIVE", ("w", "h", 1), epoch, None, NODE)])
    peer = object()
    core.handle([E.ActorConnected(c, epoch, peer, NODE)])
    return c, peer


def new_core():
    return ActorCore(next_rid=itertools.count(1).__next__)


def snapshot(core):
    c = core.clients[A]
    return (
        c.state,
        c.peer,
        c.direct,
        c.epoch,
        dict(c.in_flight),
        list(c.queue),
        c.kill_when_idle,
        dict(core.by_return),
    )


# --- ActorCore.replied ---------------------------------------------------------------------


def test_replied_does_what_handle_does_for_a_plain_answer():
    fast, slow = new_core(), new_core()
    results = {}
    for core in (fast, slow):
        c, peer = connected(core)
        spec = call("x")
        out = core.handle([E.SubmitActorCall(A, "C", 0, spec)])
        (send,) = [i for i in out if isinstance(i, E.SendActorCall)]
        results[id(core)] = (c, peer, spec, send)
    c, peer, spec, _ = results[id(fast)]
    assert fast.replied(c, spec.rid, peer) is spec
    c2, peer2, spec2, _ = results[id(slow)]
    out = slow.handle([E.CallReplied(c2, spec2.rid, [[INLINE, b"v", None]], peer2)])
    assert [type(i) for i in out] == [E.CallDone] and out[0].spec is spec2
    for core in (fast, slow):
        core.validate()
    f, s = snapshot(fast), snapshot(slow)
    assert f[0] == s[0] is ActorState.ALIVE
    assert (f[2] is f[1]) and (s[2] is s[1])  # the way stays open, as handle() publishes it
    assert len(f[4]) == len(s[4]) and not f[5] and not s[5]
    assert spec.return_ids[0] not in fast.by_return
    assert spec2.return_ids[0] not in slow.by_return


@pytest.mark.parametrize("case", ["unknown rid", "other peer", "queued", "kill", "dead"])
def test_replied_refuses_anything_but_the_plain_case_and_changes_nothing(case):
    core = new_core()
    c, peer = connected(core)
    spec = call("x")
    core.handle([E.SubmitActorCall(A, "C", 0, spec)])
    rid, answer_peer = spec.rid, peer
    if case == "unknown rid":
        rid = 10_000
    elif case == "other peer":
        answer_peer = object()
    elif case == "queued":  # a call waits behind: handle() must send it
        c.queue.append(call("waiting"))
    elif case == "kill":
        core.handle([E.ActorOutOfScope(A)])
        assert c.kill_when_idle
    elif case == "dead":
        c.state = ActorState.DEAD
    before = snapshot(core)
    assert core.replied(c, rid, answer_peer) is None
    assert snapshot(core) == before


def test_replied_refuses_an_answer_from_an_older_incarnation():
    core = new_core()
    c, peer = connected(core, epoch=0)
    spec = call("x")
    core.handle([E.SubmitActorCall(A, "C", 0, spec)])
    c.epoch = 1  # (as a fence would have left it, minus the loss: the check alone)
    before = snapshot(core)
    assert core.replied(c, spec.rid, peer) is None
    assert snapshot(core) == before


def test_a_bare_spec_is_its_own_submission():
    bare, typed = new_core(), new_core()
    for core, kind in ((bare, "bare"), (typed, "typed")):
        connected(core)
        spec = call("x", retries=2)
        if kind == "bare":
            spec.actor_id, spec.class_name = A, "C"
            out = core.handle([spec])
        else:
            out = core.handle([E.SubmitActorCall(A, "C", 2, spec)])
        (send,) = [i for i in out if isinstance(i, E.SendActorCall)]
        assert send.spec is spec and send.client is core.clients[A] and spec.client is send.client
        assert core.by_return[spec.return_ids[0]] is spec
        core.validate()
    # a bare first call makes the client with the spec's retries
    core = new_core()
    spec = call("first", retries=3)
    spec.actor_id, spec.class_name = b"z" * 16, "Z"
    core.handle([spec])
    assert core.clients[b"z" * 16].max_task_retries == 3


# --- ObjectCore.results_arrived --------------------------------------------------------------


def _table_view(core):
    return {
        oid: (e.state, e.kind, e.data if e.kind != ERROR else type(e.data), e.local, e.locations)
        for oid, e in core.table.entries.items()
    }


@pytest.mark.parametrize(
    "result",
    [
        [INLINE, b"v", None],
        [STORE, [1], None],
        [ERROR, exception_blob(ValueError("boom")), None],
        [INLINE, b"v", [[b"inner" + b"\0" * 11, list(ADDR)]]],
    ],
    ids=["inline", "store", "error", "nested"],
)
def test_results_arrived_does_what_result_events_do(result):
    fast, slow = ObjectCore(ME, ADDR), ObjectCore(ME, ADDR)
    woken = {id(fast): [], id(slow): []}
    for core in (fast, slow):
        core.handle([[b"r"], OE.Watch([(b"r", ADDR)], woken[id(core)].append)])
    out_fast: list = []
    fast.results_arrived([b"r"], [result], NODE, out_fast)
    out_slow = slow.handle([OE.ResultArrived(b"r", *result, NODE)])
    assert [type(i) for i in out_fast] == [type(i) for i in out_slow]
    assert _table_view(fast) == _table_view(slow)
    assert fast.table.entries[b"r"].state in (READY, FAILED)
    for out in (out_fast, out_slow):
        (wake,) = [i for i in out if isinstance(i, OE.Wake)]
        assert len(wake.waiters) == 1 and wake.entry.oid == b"r"
    fast.validate()


def test_results_arrived_for_a_result_nobody_wants_drops_it_like_the_event():
    fast, slow = ObjectCore(ME, ADDR), ObjectCore(ME, ADDR)
    out_fast: list = []
    fast.results_arrived([b"gone"], [[STORE, [1], None]], NODE, out_fast)
    out_slow = slow.handle([OE.ResultArrived(b"gone", STORE, [1], None, NODE)])
    assert out_fast == out_slow and out_fast  # the store copy is freed
    assert b"gone" not in fast.table.entries


def test_results_arrived_refuses_a_count_mismatch_before_changing_anything():
    core = ObjectCore(ME, ADDR)
    core.handle([[b"a", b"b"]])
    with pytest.raises(ValueError):
        core.results_arrived([b"a", b"b"], [[INLINE, b"v", None]], None, [])
    assert all(e.state == PENDING for e in core.table.entries.values())


def test_a_bare_list_creates_owned_pending_objects_like_objects_created():
    bare, typed = ObjectCore(ME, ADDR), ObjectCore(ME, ADDR)
    bare.handle([[b"x", b"y"]])
    typed.handle([OE.ObjectsCreated([b"x", b"y"], [])])
    assert _table_view(bare) == _table_view(typed)
    assert all(e.owned and e.local == 1 for e in bare.table.entries.values())


def test_a_dropped_plain_result_leaves_the_table_as_the_general_drop_does():
    core = ObjectCore(ME, ADDR)
    core.handle([[b"x"]])
    core.results_arrived([b"x"], [[INLINE, b"v", None]], None, [])
    assert core.handle([b"x"]) == []  # (a bare RefsDropped)
    assert b"x" not in core.table.entries
    core.handle([[b"s"]])
    core.results_arrived([b"s"], [[STORE, [1], None]], NODE, [])
    out = core.handle([b"s"])
    assert [type(i) for i in out] == [OE.FreeStore]  # a store object still frees its copy


# --- waiters kept bare -------------------------------------------------------------------------


def test_one_waiter_is_kept_bare_and_more_become_a_list():
    t = ObjectTable(b"me")
    e = t.create_owned(b"x", ADDR)
    first, second = (lambda _e: None), (lambda _e: None)
    assert t.add_waiter(e, first)
    assert e.waiters is first
    assert t.add_waiter(e, second)
    assert e.waiters == [first, second]
    t.remove_waiter(e, first)
    assert t.complete(e, INLINE, b"v") == [second]
    e2 = t.create_owned(b"y", ADDR)
    t.add_waiter(e2, first)
    t.remove_waiter(e2, second)  # not there: nothing happens
    assert e2.waiters is first
    t.remove_waiter(e2, first)
    assert e2.waiters is None
    assert t.complete(e2, INLINE, b"v") == []


# --- shared empty arguments ----------------------------------------------------------------------


def test_calls_without_arguments_share_one_empty_never_changed():
    assert NO_ARGS.deps == [] and NO_ARGS.held == [] and NO_ARGS.nested_ids == []
    p = PreparedArgs()
    assert p.deps is NO_ARGS.deps  # (no lists made)

    class _Rt:
        class config:
            inline_threshold = 1 << 20

    q = prepare_args(_Rt(), (1, 2), {}, "f()")  # (no refs: nothing held)
    assert q.deps is not NO_ARGS.deps and q.held is not NO_ARGS.held
    assert NO_ARGS.deps == [] and NO_ARGS.held == [] and NO_ARGS.nested_ids == []


# --- several calls in one write ------------------------------------------------------------


def _calls(n):
    return [
        P.ActorCallMsg(i + 1, A, "m", b"t" * 16, b"", (), (b"r" * 16,), ADDR, 0, 3)
        for i in range(n)
    ]


def test_encode_all_is_the_frames_of_each_message_in_order():
    msgs = _calls(3)
    joined = P.encode_all(msgs, 1 << 20, 1 << 30)
    assert joined == b"".join(P.encode(m) for m in msgs)
    frames = P.FrameDecoder(1 << 20, 1 << 30).feed(joined)
    assert [m for m, _bufs in frames] == msgs


def test_encode_all_refuses_a_message_over_the_limits():
    big = _calls(2)
    big[1] = big[1]._replace(method="x" * 5000)
    with pytest.raises(MessageTooLargeError):
        P.encode_all(big, 1000, 1 << 30)


class _Conn:
    def __init__(self, fail=None):
        self.fail = fail
        self.sent = []

    def send_all(self, msgs):
        if self.fail is not None:
            raise self.fail
        self.sent.append(list(msgs))


def test_request_all_registers_every_callback_or_none():
    peer = RpcPeer(Service(), {})
    peer.conn = _Conn()
    msgs = _calls(3)
    got = []
    peer.request_all(msgs, [got.append] * 3)
    assert sorted(peer.pending) == [1, 2, 3] and peer.conn.sent == [msgs]
    peer2 = RpcPeer(Service(), {})
    peer2.conn = _Conn(ConnectionBrokenError("gone"))
    with pytest.raises(ConnectionBrokenError):
        peer2.request_all(msgs, [got.append] * 3)
    assert peer2.pending == {}


# --- reading a value ----------------------------------------------------------------------------


def test_a_value_is_unpickled_with_its_refs_collected_unless_its_producer_listed_none():
    import pickle

    from actorcore._ref import ObjectRef
    from actorcore._refcount import ObjectEntry
    from actorcore._values import value_of

    class _Rt:
        def __init__(self):
            self.borrows = []

        def register_borrows(self, refs, container):
            self.borrows.append(([r.id for r in refs], container))

    rt = _Rt()
    plain = ObjectEntry(b"p", ADDR, True)
    plain.state, plain.kind, plain.data = READY, INLINE, pickle.dumps(b"v", protocol=5)
    assert value_of(rt, plain) == b"v" and rt.borrows == []
    inner = ObjectRef(b"i" * 16, (b"other", "h", 2), _counted=True)
    holder = ObjectEntry(b"h", ADDR, True)
    holder.state, holder.kind = READY, INLINE
    holder.data = pickle.dumps([inner], protocol=5)
    holder.nested = [(inner.id, inner.owner)]  # (as the object core records a result's refs)
    (got,) = value_of(rt, holder)
    assert got.id == inner.id and rt.borrows == [([inner.id], b"h")]
    borrowed = ObjectEntry(b"b", (b"other", "h", 2), False)  # (no ``nested`` recorded)
    borrowed.state, borrowed.kind, borrowed.data = READY, INLINE, holder.data
    value_of(rt, borrowed)
    assert rt.borrows[-1] == ([inner.id], b"b")


def test_a_values_refs_are_recorded_before_the_value_is_published():
    """Other threads read a value once its state leaves PENDING, without a lock: by
    then its nested refs must be recorded (a reader relies on them, see value_of)."""
    from actorcore._refcount import ObjectEntry

    class _Spy(ObjectEntry):
        __slots__ = ("nested_when_published",)

        def __setattr__(self, name, value):
            if name == "state" and value != PENDING:
                object.__setattr__(self, "nested_when_published", self.nested)
            object.__setattr__(self, name, value)

    inner = [[b"i" * 16, list(ADDR)]]
    core = ObjectCore(ME, ADDR)
    spy = core.table.entries[b"r"] = _Spy(b"r", ADDR, True)
    spy.local = 1
    core.handle([OE.ResultArrived(b"r", INLINE, b"v", inner)])
    assert spy.nested_when_published == [(b"i" * 16, ADDR)]
    out: list = []
    spy2 = core.table.entries[b"s"] = _Spy(b"s", ADDR, True)
    spy2.local = 1
    core.results_arrived([b"s"], [[INLINE, b"v", inner]], None, out)
    assert spy2.nested_when_published == [(b"i" * 16, ADDR)]


def test_a_watch_of_several_values_already_there_wakes_them_in_one_instruction():
    core = ObjectCore(ME, ADDR)
    core.handle([[b"a", b"b", b"c"]])
    core.results_arrived([b"a", b"b"], [[INLINE, b"1", None], [INLINE, b"2", None]], None, [])
    seen = []
    out = core.handle([OE.Watch([(b"a", ADDR), (b"c", ADDR), (b"b", ADDR)], seen.append)])
    (each,) = out
    assert type(each) is OE.WakeEach and [e.oid for e in each.entries] == [b"a", b"b"]
    assert each.waiter == seen.append and seen == []  # described, not run
    assert core.table.entries[b"c"].waiters == seen.append  # the pending one waits
    (one,) = core.handle([OE.Watch([(b"a", ADDR)], seen.append)])
    assert type(one) is OE.Wake  # (a single one: as ever)
