"""A whole node frozen (SIGSTOP: its daemon and every worker) past its lease TTL, with
calls to its actor queued on the wire (issue 10 item 2: never two answering
instances). The cluster declares the node dead and the actor answers from another
node; once thawed, the old instance answers nothing: its worker sends no reply past
its daemon's vouch, and the driver (the owner) counts a reply only from the
incarnation the call went to. The frozen node fences itself and rejoins."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

import actorcore as ac
from actorcore import _global as G
from actorcore import _protocol as P
from actorcore._args import PreparedArgs
from actorcore._ids import new_id
from actorcore._rpc import error_from_reply, next_rid
from actorcore.errors import ActorDiedError
from actorcore.testing import Cluster, wait_for

TTL = 2.0


@ac.remote
class Who:
    def who(self) -> tuple[int, str]:
        return os.getpid(), ac.get_runtime_context().get_node_id()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _alive_seen_by(node, node_id: str) -> bool | None:
    for r in node.nodes():
        if r["NodeID"] == node_id:
            return bool(r["Alive"])
    return None


def _freeze(pid: int, procs: list[psutil.Process]) -> None:
    """SIGSTOP a node daemon and every process under it (fork server, workers); ``procs``
    gets them at once (the caller thaws them whatever happens)."""
    daemon = psutil.Process(pid)
    procs += [daemon, *daemon.children(recursive=True)]
    os.killpg(pid, signal.SIGSTOP)  # the whole group at once (the daemon leads its session)
    for p in procs:  # and any child outside the group
        try:
            p.send_signal(signal.SIGSTOP)
        except psutil.NoSuchProcess:
            pass

    def all_stopped() -> bool:
        for p in procs:
            try:
                if p.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_for(all_stopped, 10, what="every process of the node stopped")


def _thaw(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass


def _actor_record(c: Cluster, actor_id: bytes):
    """The actor's record, straight from etcd."""
    import asyncio

    from actorcore.gcs import ActorTable, EtcdControlStore

    async def read():
        async with EtcdControlStore(c.address, call_timeout=5.0) as store:
            return await ActorTable(store).get(actor_id)

    return asyncio.run(read())


class WireLog:
    """Every answer the driver's actor shell receives, per connection, before the owner
    core decides whether it counts (so a dropped stale answer shows here too)."""

    def __init__(self) -> None:
        shell = G.runtime.actors
        self.shell = shell
        self.orig = shell._on_reply
        self.results: list[tuple[float, object]] = []  # (when, peer)

        def on_reply(c, rid, peer, reply):
            if not isinstance(reply, BaseException) and reply.TAG == P.Tag.TASK_RESULT:
                self.results.append((time.monotonic(), peer))
            return self.orig(c, rid, peer, reply)

        shell._on_reply = on_reply

    def close(self) -> None:
        self.shell._on_reply = self.orig

    def from_peer_since(self, peer: object, since: float) -> int:
        return sum(1 for t, p in list(self.results) if p is peer and t >= since)


class Caller(threading.Thread):
    """Calls the actor back to back, recording (submitted at, pid, node) of each answer."""

    def __init__(self, actor) -> None:
        super().__init__(daemon=True)
        self.actor = actor
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, str]] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            submitted = time.monotonic()
            try:
                pid, node = ac.get(self.actor.who.remote(), timeout=60)
            except Exception as e:  # recorded: the test fails on it
                self.errors.append(e)
                return
            self.answers.append((submitted, pid, node))
            self.stop.wait(0.02)  # the load's pace (not a synchronization)


@pytest.mark.etcd
@pytest.mark.timeout(150)
def test_a_frozen_node_never_answers_after_it_was_declared_dead():
    with Cluster(num_nodes=1, ttl_s=TTL) as c:
        a = c.add_node(num_cpus=1, resources={"w": 1}, wait=False)
        b = c.add_node(num_cpus=1, resources={"w": 1}, wait=False)
        c.wait_registered()
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        procs: list[psutil.Process] = []
        caller = log = None
        try:
            actor = Who.options(max_restarts=2, max_task_retries=5, resources={"w": 1}).remote()
            old_pid, old_id = ac.get(actor.who.remote(), timeout=60)
            frozen = a if old_id == a.node_id else b
            assert frozen.node_id == old_id
            client = G.runtime.actors.core.clients[actor.id]
            old_peer, old_epoch = client.peer, client.epoch
            assert old_peer is not None
            log = WireLog()

            _freeze(frozen.pid, procs)
            frozen_at = time.monotonic()
            # calls sent now wait on the wire at the frozen worker (its socket buffers them)
            queued = [actor.who.remote() for _ in range(5)]
            caller = Caller(actor)
            caller.start()

            wait_for(
                lambda: _alive_seen_by(c.nodes[0], old_id) is False,
                TTL * 8,
                interval=0.02,
                what="the frozen node seen dead",
            )
            # the actor answers again, from the other node (a later incarnation)
            wait_for(
                lambda: any(n != old_id for _t, _p, n in caller.answers) or caller.errors,
                60,
                interval=0.02,
                what="the actor answering from another node",
            )
            assert not caller.errors, caller.errors
            assert client.epoch > old_epoch

            _thaw(procs)
            # the frozen node fences itself: its worker ends, the daemon rejoins as a new node
            wait_for(lambda: _gone(old_pid), 30, what="the old instance's worker gone")
            c.wait_reborn(frozen, 60)
            assert frozen.node_id != old_id
            assert "this daemon fenced itself as node " + old_id in c.daemon_log(frozen)
            for ref in queued:  # sent to the old instance, answered by the new one
                pid, node = ac.get(ref, timeout=60)
                assert (pid, node) != (old_pid, old_id)
                assert node != old_id
            # some more calls after the thaw, all from the new instance
            n_after = len(caller.answers)
            wait_for(lambda: len(caller.answers) >= n_after + 5 or caller.errors, 30)
            caller.stop.set()
            caller.join(70)
            assert not caller.errors, caller.errors

            late = [(t, p, n) for t, p, n in caller.answers if t >= frozen_at]
            assert late, "no call was answered after the freeze"
            assert all(p != old_pid and n != old_id for _t, p, n in late), late
            # nothing at all came back over the old instance's connection after the freeze:
            # its worker answered nothing once thawed (it checks its daemon's vouch first)
            assert log.from_peer_since(old_peer, frozen_at) == 0
            # and the thawed node wrote nothing over the record of the new incarnation
            _t, _p, new_node = caller.answers[-1]
            rec = _actor_record(c, actor.id)
            assert (rec.state, rec.node_id.hex(), rec.epoch) == ("ALIVE", new_node, client.epoch)
        finally:
            if caller is not None:
                caller.stop.set()
            if log is not None:
                log.close()
            _thaw(procs)  # never leave a stopped process behind (shutdown could not end it)
            ac.shutdown()


def _raw_call(actor, epoch: int) -> object:
    """Send the actor's host one call of ``who`` stamped with ``epoch``, around the
    owner core (its rid is the test's own); returns the raw reply."""
    rt = G.runtime
    c = rt.actors.core.clients[actor.id]
    msg = P.ActorCallMsg(
        next_rid(),
        actor.id,
        "who",
        new_id(),
        PreparedArgs().payload,
        [],
        [new_id()],
        list(rt.address),
        0,
        epoch,
    )
    got: list[object] = []
    done = threading.Event()

    def cb(reply: object) -> None:
        got.append(reply)
        done.set()

    c.peer.request(msg, cb)
    assert done.wait(30), "no reply"
    return got[0]


@pytest.mark.timeout(60)
def test_a_worker_refuses_a_call_meant_for_another_incarnation(fresh_runtime):
    fresh_runtime()
    actor = Who.options(max_restarts=1).remote()
    pid, _ = ac.get(actor.who.remote(), timeout=30)
    epoch = G.runtime.actors.core.clients[actor.id].epoch
    assert epoch == 0
    for wrong in (epoch + 1, epoch + 5):
        reply = _raw_call(actor, wrong)
        assert reply.TAG == P.Tag.ERROR_REPLY
        err = error_from_reply(reply)
        assert isinstance(err, ActorDiedError) and "incarnation" in str(err), err
    # the right one (and an unstamped one) is served, and the actor goes on as before
    assert _raw_call(actor, epoch).TAG == P.Tag.TASK_RESULT
    assert _raw_call(actor, -1).TAG == P.Tag.TASK_RESULT
    assert ac.get(actor.who.remote(), timeout=30)[0] == pid


@ac.remote
class Instance:
    def __init__(self) -> None:
        self.token = os.urandom(8).hex()  # one per incarnation (a restart runs __init__)

    def token_of(self) -> str:
        return self.token


@pytest.mark.timeout(60)
def test_calls_after_a_restart_reach_the_new_incarnation(fresh_runtime):
    """ac.kill(no_restart=False) restarts the actor (here on the same worker, over the
    same connection): the owner moves to epoch 1, every later call is answered there."""
    fresh_runtime()
    actor = Instance.options(max_restarts=1, max_task_retries=3).remote()
    first = ac.get(actor.token_of.remote(), timeout=30)
    ac.kill(actor, no_restart=False)

    def answered_by_the_new_instance() -> bool:
        return ac.get(actor.token_of.remote(), timeout=30) != first

    wait_for(answered_by_the_new_instance, 30, what="the restarted instance answering")
    assert G.runtime.actors.core.clients[actor.id].epoch == 1
    assert first not in {ac.get(actor.token_of.remote(), timeout=30) for _ in range(5)}
