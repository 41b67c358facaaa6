"""Node-to-node object pulls between real node daemons on this machine (over TCP).

Each node is its own daemon process with its own arena and session, as if on
another machine. The test process writes objects into a node's store as a
client of that node (what a driver's ``put`` does) and reads them back from
another node's store after a pull.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading

import numpy as np
import pytest
from actorcore.store._session import sweep_stale

from actorcore import _protocol as P
from actorcore._config import Config
from actorcore._driver import spawn_daemon
from actorcore._ids import new_id
from actorcore._rpc import error_from_reply, next_rid
from actorcore._serialization import serialize
from actorcore._store_client import StoreClient
from actorcore._sync_client import SyncClient
from actorcore.errors import ObjectLostError
from actorcore.testing import kill_pid, wait_for

MiB = 1 << 20
TOKEN = os.urandom(32)


class Node:
    """One node daemon and a store client attached to it."""

    def __init__(self, token: bytes = TOKEN, **cfg) -> None:
        self.token = token
        cfg.setdefault("num_cpus", 1)
        cfg.setdefault("prestart_workers", 0)
        cfg.setdefault("object_store_memory", 512 * MiB)
        self.proc, self.info = spawn_daemon(Config.from_env(**cfg), token, os.getpid())
        self.id = new_id()
        self.clients: list[SyncClient] = []
        self.store = StoreClient(
            self.info["arena_path"], self.info["capacity"], self._client(), self.id
        )
        self.ctl = self._client()  # one request at a time per client: stats on its own
        self.puller = self._client()
        self.transfer_address = self.stats()["address"]

    def _client(self) -> SyncClient:
        c = SyncClient(
            tuple(self.info["address"]),
            token=self.token,
            role="driver",
            my_id=self.id,
            max_header_bytes=1 << 20,
            max_frame_bytes=1 << 30,
            timeout=60.0,
        )
        self.clients.append(c)
        return c

    def call(self, msg, client: SyncClient | None = None):
        reply = (client or self.ctl).call(msg)
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        return reply.value

    def put(self, oid: bytes, value) -> int:
        return self.store.put(oid, serialize(value), self.id)

    def pull(self, oid: bytes, holders: list) -> int:
        addresses = [h if isinstance(h, list) else list(h.transfer_address) for h in holders]
        return self.call(P.PullObjectMsg(next_rid(), oid, addresses, self.id), self.puller)

    def stats(self) -> dict:
        return self.call(P.TransferStatsMsg(next_rid()))

    def objects(self) -> list:
        return self.call(P.ListStateMsg(next_rid(), "objects"))

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.store.arena.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()

    def kill(self) -> None:
        kill_pid(self.proc.pid)
        self.proc.wait(5)
        sweep_stale(self.info["arena_path"].rsplit("/", 2)[0], tempfile.gettempdir())


@pytest.fixture
def nodes():
    started: list[Node] = []

    def start(n: int = 1, **cfg) -> list[Node]:
        for _ in range(n):
            started.append(Node(**cfg))
        return started[-n:]

    try:
        yield start
    finally:
        for node in started:
            node.stop()


def _array(nbytes: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, nbytes, dtype=np.uint8)


@pytest.mark.timeout(120)
def test_pull_a_large_array_between_two_nodes(nodes):
    a, b = nodes(2)
    arr = _array(64 * MiB + 12345)
    oid = new_id()
    size = a.put(oid, arr)
    assert b.pull(oid, [a]) == size
    got, _ = b.store.get(oid)
    assert np.array_equal(got, arr)
    del got
    # the copy on B is a real copy: B's store holds it, in B's own arena
    assert any(o["object_id"] == oid.hex() and o["state"] == "sealed" for o in b.objects())
    assert a.info["arena_path"] != b.info["arena_path"]
    st = b.stats()
    assert st["pulls_done"] == 1 and st["bytes_received"] == size
    assert st["inflight_bytes"] == 0
    # a second request finds the local copy: nothing moves
    assert b.pull(oid, [a]) == size
    assert b.stats()["bytes_received"] == size
    # the holder unpinned it once the pull ended
    wait_for(lambda: a.stats()["serving_bytes"] == 0, 10)
    assert all(o["pins"] == 0 for o in a.objects())


@pytest.mark.timeout(120)
def test_a_drivers_put_is_pulled_by_another_node(fresh_runtime):
    import actorcore as ac
    from actorcore import _global as G
    from actorcore.testing import list_state

    fresh_runtime(num_cpus=1)
    arr = _array(100 * MiB, seed=11)
    ref = ac.put(arr)  # into the driver's own node (A)
    a_address = list(list_state("node")["transfer_address"])
    b = Node(token=G.require().token)  # another node of the same cluster (same token)
    try:
        b.pull(ref.id, [a_address])
        got, _ = b.store.get(ref.id)
        assert np.array_equal(got, arr)
        del got
    finally:
        b.stop()


@pytest.mark.timeout(120)
def test_pull_from_two_holders_uses_both(nodes):
    # paced holders (50 MB/s each), so that both have answered before one could do it all
    a1, a2 = nodes(2, transfer_chunk_bytes=1 * MiB, transfer_serve_rate=50e6)
    (b,) = nodes(1, transfer_chunk_bytes=1 * MiB)
    arr = _array(48 * MiB, seed=2)
    oid = new_id()
    a1.put(oid, arr)
    a2.put(oid, arr)
    b.pull(oid, [a1, a2])
    got, _ = b.store.get(oid)
    assert np.array_equal(got, arr)
    sources = b.stats()["received_from"]
    assert len(sources) == 2 and all(v > 0 for v in sources.values()), sources


@pytest.mark.timeout(120)
def test_three_nodes_pull_one_object_at_once(nodes):
    a, *pullers = nodes(4, transfer_chunk_bytes=2 * MiB)
    arr = _array(32 * MiB, seed=6)
    oid = new_id()
    size = a.put(oid, arr)
    done: list = []
    threads = [
        threading.Thread(target=lambda n=n: done.append(_try(lambda: n.pull(oid, [a]))))
        for n in pullers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert done == [size] * 3
    for n in pullers:
        got, _ = n.store.get(oid)
        assert np.array_equal(got, arr)
        del got
    assert a.stats()["bytes_sent"] == 3 * size
    wait_for(lambda: all(o["pins"] == 0 for o in a.objects()), 10)


@pytest.mark.timeout(120)
def test_holder_killed_mid_pull_resumes_from_the_other(nodes):
    # Slow holders (16 MB/s each) so the kill lands mid-pull.
    a1, a2 = nodes(2, transfer_chunk_bytes=1 * MiB, transfer_serve_rate=16e6)
    (b,) = nodes(1, transfer_chunk_bytes=1 * MiB)
    arr = _array(40 * MiB, seed=3)
    oid = new_id()
    a1.put(oid, arr)
    a2.put(oid, arr)
    done: list = []
    t = threading.Thread(target=lambda: done.append(_try(lambda: b.pull(oid, [a1, a2]))))
    t.start()
    try:
        victim = wait_for(lambda: _sending(b, [a1, a2], 2 * MiB), 30, what="a holder sends")
        victim.kill()
    finally:
        t.join(60)
    assert done and not isinstance(done[0], BaseException), done
    got, _ = b.store.get(oid)
    assert np.array_equal(got, arr)
    assert b.stats()["received_from"][_key(victim)] < 40 * MiB


@pytest.mark.timeout(120)
def test_only_holder_killed_mid_pull_fails_clearly(nodes):
    (a,) = nodes(1, transfer_chunk_bytes=1 * MiB, transfer_serve_rate=16e6)
    (b,) = nodes(1, transfer_chunk_bytes=1 * MiB)
    oid = new_id()
    a.put(oid, _array(40 * MiB, seed=4))
    done: list = []
    t = threading.Thread(target=lambda: done.append(_try(lambda: b.pull(oid, [a]))))
    t.start()
    try:
        wait_for(lambda: b.stats()["bytes_received"] >= 2 * MiB, 30, what="a sends")
        a.kill()
    finally:
        t.join(60)
    assert done and isinstance(done[0], ObjectLostError), done
    assert "could not be fetched" in str(done[0]) and oid.hex() in str(done[0])
    # the half-written copy is gone from B's store and B goes on serving pulls
    assert not b.objects()
    assert b.stats()["pulls_failed"] == 1


@pytest.mark.timeout(120)
def test_holder_that_stops_answering_is_dropped(nodes):
    a1, a2 = nodes(2, transfer_chunk_bytes=1 * MiB, transfer_serve_rate=16e6)
    (b,) = nodes(1, transfer_chunk_bytes=1 * MiB, transfer_timeout_s=1.0)
    arr = _array(24 * MiB, seed=5)
    oid = new_id()
    a1.put(oid, arr)
    a2.put(oid, arr)
    done: list = []
    t = threading.Thread(target=lambda: done.append(_try(lambda: b.pull(oid, [a1, a2]))))
    t.start()
    victim = None
    try:
        victim = wait_for(lambda: _sending(b, [a1, a2], MiB), 30, what="a holder sends")
        os.kill(victim.proc.pid, signal.SIGSTOP)
        t.join(60)
    finally:
        if victim is not None:
            os.kill(victim.proc.pid, signal.SIGCONT)
        t.join(60)
    assert done and not isinstance(done[0], BaseException), done
    got, _ = b.store.get(oid)
    assert np.array_equal(got, arr)


@pytest.mark.timeout(60)
def test_pull_of_an_object_nobody_has_fails_at_once(nodes):
    a, b = nodes(2)
    with pytest.raises(ObjectLostError, match="no copy"):
        b.pull(new_id(), [a])
    with pytest.raises(ObjectLostError, match="no node holds a copy"):
        b.pull(new_id(), [])
    assert not b.objects()


def _key(node: Node) -> str:
    return "{}:{}".format(*node.transfer_address)


def _sending(puller: Node, holders: list[Node], at_least: int) -> Node | None:
    """A holder that has sent ``puller`` at least ``at_least`` bytes, if any."""
    got = puller.stats()["received_from"]
    return next((h for h in holders if got.get(_key(h), 0) >= at_least), None)


def _try(fn):
    try:
        return fn()
    except BaseException as e:
        return e
