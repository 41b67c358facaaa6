"""An actor call's lost argument got back in place (_arg_recovery), without sockets:
what to do with each owner answer, and the ask-and-copy loop with a scripted owner."""

from __future__ import annotations

import pickle
import types

import pytest

from actorcore import _arg_recovery as R
from actorcore._refcount import ERROR, INLINE, STORE
from actorcore.errors import (
    ObjectLostError,
    ObjectReconstructionFailedError,
    OwnerDiedError,
    TaskError,
)

pytestmark = pytest.mark.timeout(30)

OID = b"o" * 16
OWNER = (b"p" * 16, "127.0.0.1", 1)
B, C = b"B" * 16, b"C" * 16


def judge(answer, failed=frozenset({B}), stale_s=0.0, limit_s=10.0):
    return R.judge(OID, OWNER, answer, failed, stale_s, limit_s)


def test_new_holders_are_pulled_from():
    assert judge([STORE, 10, None, [C]]) == R.Pull(frozenset({C}))
    assert judge([STORE, 10, None, None]) == R.Pull(None)  # (every node is asked)
    assert judge([STORE, 10, None, None], failed=None) == R.Again()


def test_the_dead_holders_again_are_asked_again_until_the_limit():
    assert judge([STORE, 10, None, [B]]) == R.Again()
    step = judge([STORE, 10, None, [B]], stale_s=11.0)
    assert isinstance(step, R.GiveUp) and type(step.error) is ObjectLostError
    assert B.hex() in str(step.error)


def test_an_inline_value_is_used_as_is():
    assert judge([INLINE, b"x", None, None]) == R.UseValue(INLINE, b"x")


def test_a_failed_object_gives_up_with_its_own_error():
    lost = ObjectLostError("no lineage to rebuild it from")
    step = judge([ERROR, pickle.dumps(lost), None])
    assert isinstance(step, R.GiveUp) and type(step.error) is ObjectLostError
    assert "no lineage" in str(step.error)
    failed = ObjectReconstructionFailedError("the task failed")
    step = judge([ERROR, pickle.dumps(failed), None])
    assert type(step.error) is ObjectReconstructionFailedError
    step = judge([ERROR, pickle.dumps(TaskError("f", "tb", ValueError("x"))), None])
    assert type(step.error) is ObjectReconstructionFailedError  # (an error, not a loss)


def test_an_owner_that_freed_it_or_died_gives_up_naming_why():
    freed = ObjectLostError("its owner freed it")
    assert judge(freed) == R.GiveUp(freed)
    step = judge(ConnectionRefusedError("refused"))
    assert type(step.error) is OwnerDiedError and OWNER[0].hex() in str(step.error)
    step = judge(RuntimeError("a bug over there"))  # an answer, not a death
    assert type(step.error) is ObjectLostError and "could not provide it" in str(step.error)


def test_the_stale_limit_grows_with_the_ttl():
    assert R.stale_limit_s(2.0) < R.stale_limit_s(10.0)
    assert R.stale_limit_s(0.5) >= 5.0


class Script:
    """A node whose pulls succeed only from ``good`` holders, and an owner whose
    answers are scripted (one per ask)."""

    def __init__(self, good, answers):
        self.good = good
        self.answers = list(answers)
        self.pulls = []
        self.asks = 0
        self.rt = types.SimpleNamespace(
            config=types.SimpleNamespace(node_ttl_s=1.0), my_id=b"me" * 8
        )

    def ensure_local(self, _rt, oid, holders, owner, _cancel=None):
        self.pulls.append(None if holders is None else frozenset(holders))
        if holders is None or not set(holders) & self.good:
            raise ObjectLostError(f"object {oid.hex()} could not be copied to this node")

    def ask(self, _rt, owner, oid, _cancel):
        self.asks += 1
        return self.answers.pop(0)


@pytest.fixture
def script(monkeypatch):
    def make(good, answers):
        s = Script(good, answers)
        monkeypatch.setattr(R, "ensure_local", s.ensure_local)
        monkeypatch.setattr(R, "_ask_owner", s.ask)
        monkeypatch.setattr(R, "PAUSE_S", 0.0)
        return s

    return make


def _resolved(holders):
    return [[0, STORE, 10, OID, holders, list(OWNER)], [1, INLINE, b"v", b"i" * 16]]


def test_the_loop_asks_until_the_owner_names_the_rebuilt_copy(script):
    s = script({C}, [[STORE, 10, None, [B]], [STORE, 10, None, [B]], [STORE, 10, None, [C]]])
    payload, resolved = R.recover_sources(s.rt, b"args", _resolved([B]))
    assert payload == b"args"
    assert resolved[0][4] == [C] and resolved[1] == [1, INLINE, b"v", b"i" * 16]
    assert s.pulls == [frozenset({B}), frozenset({B}), frozenset({B}), frozenset({C})]
    assert s.asks == 3


def test_the_loop_rewrites_a_store_payload_and_an_inline_answer(script):
    s = script({C}, [[STORE, 10, None, [C]], [INLINE, b"small", None, None]])
    other = b"q" * 16
    payload = [STORE, other, [B], list(OWNER)]
    resolved = [[0, STORE, 10, OID, [B], list(OWNER)]]
    payload, resolved = R.recover_sources(s.rt, payload, resolved)
    assert payload == [STORE, other, [C], list(OWNER)]
    assert resolved == [[0, INLINE, b"small", OID]]


def test_the_loop_gives_up_with_the_owners_error_marked_as_the_calls(script):
    s = script({C}, [ConnectionResetError("gone")])
    with pytest.raises(OwnerDiedError) as info:
        R.recover_sources(s.rt, b"", _resolved([B]))
    assert info.value._actorcore_system  # the call's result is this error, not a TaskError


def test_the_loop_is_bounded_whatever_the_owner_says(script, monkeypatch):
    monkeypatch.setattr(R, "MAX_ASKS", 5)
    s = script(set(), [[STORE, 10, None, [C]], [STORE, 10, None, [B]]] * 5)
    with pytest.raises(ObjectLostError, match="5 times"):
        R.recover_sources(s.rt, b"", _resolved([B]))


def test_an_owner_subclass_error_or_our_own_object_is_not_asked(script, monkeypatch):
    s = script(set(), [])

    def owner_died(*_a):
        raise OwnerDiedError("dead")

    monkeypatch.setattr(R, "ensure_local", owner_died)
    with pytest.raises(OwnerDiedError):
        R.recover_sources(s.rt, b"", _resolved([B]))
    s = script(set(), [])
    mine = [[0, STORE, 10, OID, [B], [s.rt.my_id, "127.0.0.1", 2]]]
    with pytest.raises(ObjectLostError):
        R.recover_sources(s.rt, b"", mine)
    assert s.asks == 0


def test_a_reader_of_a_borrowed_ref_pauses_while_its_owner_names_the_dead_holders():
    from actorcore._refcount import PENDING, READY
    from actorcore._values import _Stale

    stale = _Stale(types.SimpleNamespace(config=types.SimpleNamespace(node_ttl_s=1.0)))
    e = types.SimpleNamespace(owned=False, state=READY, locations={B})
    assert stale.pause(e, [B]) == R.PAUSE_S
    assert stale.pause(e, None) == 0.0  # (the first read: nothing failed before)
    e.locations = {C}
    assert stale.pause(e, [B]) == 0.0  # a new copy: read again at once
    e.locations = {B}
    assert stale.pause(e, [B]) == R.PAUSE_S
    stale.since -= stale.limit_s + 1
    assert stale.pause(e, [B]) == 0.0  # past the limit: the read fails for good
    assert stale.pause(types.SimpleNamespace(owned=True, state=READY, locations={B}), [B]) == 0
    assert stale.pause(types.SimpleNamespace(owned=False, state=PENDING, locations=None), [B]) == 0


def test_async_calls_get_their_arguments_in_call_order(monkeypatch):
    """An async call still copying its arguments holds the calls behind it (even ones with
    inline arguments); its failure or a cancel of one of them does not stall the rest."""
    import asyncio

    from actorcore import _worker as W

    async def main():
        release = asyncio.Event()

        async def decode_async(_rt, payload, _resolved):
            if payload.startswith(b"slow"):
                await release.wait()
            if payload == b"slow-bad":
                raise ValueError("bad argument")
            return (payload,), {}, None

        monkeypatch.setattr(W, "decode_args_async", decode_async)
        monkeypatch.setattr(W, "decode_args", lambda _rt, p, _r, pulled=False: ((p,), {}, None))
        monkeypatch.setattr(W, "store_args", lambda p, _r: [p] if p.startswith(b"slow") else [])
        me = types.SimpleNamespace(loop=asyncio.get_running_loop())
        mb = types.SimpleNamespace(args_ahead=None)
        done: list[bytes] = []

        async def run(payload):
            call = types.SimpleNamespace(payload=payload, resolved=[])
            try:
                args = (await W.WorkerRuntime._actor_args(me, mb, call))[0]
            except ValueError:
                args = (b"failed",)
            done.append(args[0])

        first = [asyncio.create_task(run(p)) for p in (b"slow", b"a", b"b")]
        for _ in range(3):
            await asyncio.sleep(0)  # (a yield: each task runs up to its first wait)
        assert done == []  # the inline ones wait for the slow one
        first[1].cancel()  # the one behind it still waits for the slow one
        for _ in range(3):
            await asyncio.sleep(0)
        assert done == []
        release.set()
        await asyncio.wait_for(asyncio.gather(*first, return_exceptions=True), 5)
        assert done == [b"slow", b"b"] and mb.args_ahead is None
        release.clear()
        second = [asyncio.create_task(run(p)) for p in (b"slow-bad", b"c")]
        for _ in range(3):
            await asyncio.sleep(0)
        assert done == [b"slow", b"b"]
        release.set()
        await asyncio.wait_for(asyncio.gather(*second), 5)
        assert done[2:] == [b"failed", b"c"] and mb.args_ahead is None
        assert await W.WorkerRuntime._actor_args(
            me, mb, types.SimpleNamespace(payload=b"d", resolved=[])
        ) == ((b"d",), {}, None)  # nobody ahead: at once

    asyncio.run(main())


def test_the_same_argument_twice_is_got_back_once(script):
    s = script({C}, [[STORE, 10, None, [C]]])
    twice = [[0, STORE, 10, OID, [B], list(OWNER)], [1, STORE, 10, OID, [B], list(OWNER)]]
    _payload, resolved = R.recover_sources(s.rt, b"", twice)
    assert [r[4] for r in resolved] == [[C], [C]] and s.asks == 1


class SilentOwner:
    """An owner that never answers (it waits for a rebuild that takes long)."""

    def __init__(self):
        self.asked = 0
        self.rt = types.SimpleNamespace(
            config=types.SimpleNamespace(node_ttl_s=1.0),
            my_id=b"me" * 8,
            call_soon=self.call_soon,
            with_peer=None,
        )

    def call_soon(self, *_a):
        self.asked += 1


def _never_local(_rt, oid, _holders, _owner, _cancel=None):
    raise ObjectLostError(f"object {oid.hex()} could not be copied to this node")


@pytest.mark.parametrize("early", [False, True], ids=["while-asking", "before-the-first-ask"])
def test_a_cancel_stops_the_recovery_where_it_waits(monkeypatch, early):
    """Cancelled while it waits for the owner's answer (or before its recovery even
    started, while its first copy failed): TaskCancelledError at once, marked as the
    call's own result; nothing of it stays registered."""
    import threading

    from actorcore.errors import TaskCancelledError

    monkeypatch.setattr(R, "ensure_local", _never_local)
    owner = SilentOwner()
    task_id = b"t-early" if early else b"t-asking"
    if early:
        assert not R.cancel_recovery(task_id)  # (not recovering yet: kept for a while)
    out = []

    def run():
        try:
            R.recover_sources(owner.rt, b"", _resolved([B]), task_id)
            out.append("recovered")
        except TaskCancelledError as e:
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    if not early:
        from actorcore.testing import wait_for

        wait_for(lambda: owner.asked == 1, 10, what="the owner asked")
        assert R.cancel_recovery(task_id)
    t.join(5)
    assert not t.is_alive(), "the recovery did not stop"
    assert len(out) == 1 and isinstance(out[0], TaskCancelledError), out
    assert out[0]._actorcore_system  # the caller gets TaskCancelledError itself
    assert task_id not in R._recovering and task_id not in R._early


def test_a_cancel_stops_the_wait_for_a_pull_and_its_copy_is_still_reported():
    """Cancelled while its daemon pulls the argument (from a holder that does not
    answer): the call stops waiting; a copy that comes later is still reported to
    the owner (never left unknown in the store)."""
    import threading

    from actorcore import _protocol as P
    from actorcore.errors import TaskCancelledError
    from actorcore.testing import wait_for

    pulls, located = [], []
    rt = types.SimpleNamespace(
        config=types.SimpleNamespace(node_ttl_s=1.0),
        my_id=b"me" * 8,
        node=types.SimpleNamespace(node_id=b"here" * 4, raw={"cluster": True}),
        closing=False,
        loop=types.SimpleNamespace(is_closed=lambda: False),
        call_soon=lambda fn, *a: pulls.append(a),  # (the daemon never answers here)
        objects=types.SimpleNamespace(location=lambda *a, **k: located.append(a)),
    )
    mine = [[0, STORE, 10, OID, [B], [rt.my_id, "127.0.0.1", 2]]]  # (owned: reported locally)
    out = []

    def run():
        try:
            R.recover_sources(rt, b"", mine, b"t-pull")
        except TaskCancelledError as e:
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: pulls, 10, what="the pull asked of the daemon")
    assert R.cancel_recovery(b"t-pull")
    t.join(5)
    assert not t.is_alive() and len(out) == 1
    _rt, msg, fut = pulls[0]
    fut.set_result(P.ReplyMsg(msg.rid, True))  # the copy came after all
    assert located == [(OID, rt.node.node_id)]


def test_ctrl_c_in_a_pull_on_the_main_thread_stops_the_wait_and_the_copy_is_reported():
    """A driver's main thread pulling an object (Ctrl-C lands there): the wait goes
    through the runtime's loop, so the interrupt never lands half way through the
    blocking store connection's read; a copy that comes later is still reported."""
    import signal
    import threading

    from actorcore import _locations as L
    from actorcore import _protocol as P
    from actorcore.testing import wait_for

    pulls, located = [], []
    rt = types.SimpleNamespace(
        my_id=b"me" * 8,
        node=types.SimpleNamespace(node_id=b"here" * 4, raw={"cluster": True}),
        closing=False,
        loop=types.SimpleNamespace(is_closed=lambda: False),
        call_soon=lambda fn, *a: pulls.append(a),
        objects=types.SimpleNamespace(location=lambda *a, **k: located.append(a)),
        store=None,  # (the blocking connection is not used)
    )
    main = threading.get_ident()

    def interrupt():
        wait_for(lambda: pulls, 10, what="the pull asked of the daemon")
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            L.ensure_local(rt, OID, [B], [rt.my_id, "127.0.0.1", 2])
    finally:
        t.join(10)
    _rt, msg, fut = pulls[0]
    fut.set_result(P.ReplyMsg(msg.rid, True))
    assert located == [(OID, rt.node.node_id)]
