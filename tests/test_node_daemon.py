"""The node daemon against real processes and sockets (issue 7: bug 7, the owner
check on free, node affinity that names no node, ``ac.nodes()``'s liveness).

The store tests speak the wire protocol by hand with two raw clients (two
processes as far as the daemon knows: each has its own id), so a writer can
die in the middle of writing and an intruder can try to free what it does not
own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import socket
import struct

import msgpack
import pytest

from actorcore.testing import list_state, wait_for

PRELUDE = struct.Struct("<IH")
BUFLEN = struct.Struct("<Q")
VERSION = 1
# message tags (actorcore/_protocol.py)
HELLO, AUTH, WELCOME = 1, 2, 3
REPLY, ERROR_REPLY = 10, 11
LIST_STATE = 54
CREATE_OBJECT, SEAL_OBJECT, OPEN_OBJECTS, FREE_OBJECTS = 60, 61, 62, 64

_rids = iter(range(5 * 10**6, 10**9))


def frame(tag, fields):
    header = msgpack.packb([tag, list(fields)], use_bin_type=True)
    return PRELUDE.pack(len(header), 0) + header


class RawClient:
    """A blocking client that speaks the wire protocol by hand (one process id)."""

    def __init__(self, node, timeout=30.0):
        self.sock = socket.create_connection(node["address"], timeout=timeout)
        self.buf = b""
        self.peer_id = os.urandom(16)
        self._handshake(node["token"])

    def close(self):
        self.sock.close()

    def _exactly(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read(self):
        hlen, nbufs = PRELUDE.unpack(self._exactly(6))
        lens = [BUFLEN.unpack(self._exactly(8))[0] for _ in range(nbufs)]
        tag, fields = msgpack.unpackb(self._exactly(hlen), raw=False)
        for n in lens:
            self._exactly(n)
        return tag, fields

    def _handshake(self, token):
        tag, (version, _role, _server_id, nonce) = self.read()
        assert tag == HELLO and version == VERSION
        proof = hmac.new(
            token, b"client" + nonce + b"driver" + self.peer_id, hashlib.sha256
        ).digest()
        self.send(AUTH, [VERSION, "driver", self.peer_id, os.urandom(16), proof])
        assert self.read()[0] == WELCOME

    def send(self, tag, fields):
        self.sock.sendall(frame(tag, fields))

    def reply_to(self, rid):
        """Read until the reply to request ``rid``; returns ``(tag, fields)``."""
        while True:
            tag, fields = self.read()
            if tag in (REPLY, ERROR_REPLY) and fields[0] == rid:
                return tag, fields

    def request(self, tag, fields):
        self.send(tag, fields)
        return self.reply_to(fields[0])

    def objects(self):
        tag, fields = self.request(LIST_STATE, [next(_rids), "objects"])
        assert tag == REPLY
        return {o["object_id"]: o for o in fields[1]}


@pytest.fixture(scope="module")
def node(runtime):
    info = runtime.init(ignore_reinit_error=True)
    with open(os.path.join("/dev/shm", f"actorcore-{info.session}", "node.json")) as f:
        data = json.load(f)
    return {"address": tuple(data["address"]), "token": bytes.fromhex(data["token"])}


@pytest.fixture
def clients(node):
    made = []

    def make():
        made.append(RawClient(node))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            c.close()


def _create(client, oid, owner=None):
    tag, fields = client.request(CREATE_OBJECT, [next(_rids), oid, 64, [owner or client.peer_id]])
    assert tag == REPLY, fields
    return fields[1]


# --- bug 7: a reader waiting for a seal is woken when the writer dies ----------------------


@pytest.mark.timeout(90)
def test_reader_waiting_for_a_seal_gets_object_lost_when_the_writer_dies(clients):
    writer, reader = clients(), clients()
    oid = os.urandom(20)
    _create(writer, oid)
    open_rid = next(_rids)
    reader.send(OPEN_OBJECTS, [open_rid, [oid]])
    # a request behind the open on the same connection: once it is answered the
    # daemon has taken the open, which now waits for the seal
    assert oid.hex() in reader.objects()
    writer.close()  # dies before sealing
    tag, fields = reader.reply_to(open_rid)  # today: never answered (socket timeout)
    assert tag == ERROR_REPLY, fields
    _rid, kind, message, blob = fields
    assert kind == "ObjectLostError"
    assert "died before sealing" in message and oid.hex() in message
    from actorcore.errors import ObjectLostError

    assert isinstance(pickle.loads(blob), ObjectLostError)
    wait_for(lambda: oid.hex() not in reader.objects(), timeout=30)


@pytest.mark.timeout(90)
def test_reader_waiting_for_a_seal_gets_the_object_once_sealed(clients):
    writer, reader = clients(), clients()
    oid = os.urandom(20)
    offset = _create(writer, oid)
    open_rid = next(_rids)
    reader.send(OPEN_OBJECTS, [open_rid, [oid]])
    assert oid.hex() in reader.objects()
    writer.send(SEAL_OBJECT, [0, oid, b"meta"])
    tag, fields = reader.reply_to(open_rid)
    assert tag == REPLY and fields[1] == [[offset, 64, b"meta"]]


# --- only the owner frees ---------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_only_the_owner_may_free_an_object(clients):
    owner, intruder = clients(), clients()
    oid = os.urandom(20)
    _create(owner, oid)
    owner.send(SEAL_OBJECT, [0, oid, b"m"])
    wait_for(lambda: owner.objects().get(oid.hex(), {}).get("state") == "sealed", timeout=30)
    intruder.send(FREE_OBJECTS, [[oid]])
    tag, fields = intruder.read()  # an error about a one-way message: request id 0
    assert tag == ERROR_REPLY and fields[0] == 0, fields
    assert fields[1] == "PermissionError" and "owner" in fields[2] and oid.hex() in fields[2]
    assert oid.hex() in intruder.objects(), "a refused free must free nothing"
    owner.send(FREE_OBJECTS, [[oid]])
    wait_for(lambda: oid.hex() not in owner.objects(), timeout=30)


@pytest.mark.timeout(90)
def test_only_the_writer_may_seal(clients):
    writer, intruder = clients(), clients()
    oid = os.urandom(20)
    _create(writer, oid)
    intruder.send(SEAL_OBJECT, [0, oid, b"forged"])
    tag, fields = intruder.read()
    assert tag == ERROR_REPLY and fields[0] == 0 and "not yours" in fields[2]
    assert intruder.objects()[oid.hex()]["state"] == "created"


# --- node affinity and ac.nodes() ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_hard_node_affinity_to_a_node_that_does_not_exist_fails_clearly(runtime):
    import actorcore as ac
    from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

    runtime.init(ignore_reinit_error=True)
    here = ac.get_runtime_context().get_node_id()
    nowhere = "ff" * 16

    @ac.remote
    def where():
        return ac.get_runtime_context().get_node_id()

    assert ac.get(where.options(scheduling_strategy=Affinity(here)).remote(), timeout=60) == here
    soft = where.options(scheduling_strategy=Affinity(nowhere, soft=True)).remote()
    assert ac.get(soft, timeout=60) == here
    hard = where.options(scheduling_strategy=Affinity(nowhere, soft=False)).remote()
    with pytest.raises(ac.errors.ActorCoreError, match="not a node of this cluster"):
        ac.get(hard, timeout=60)

    @ac.remote
    class Pinned:
        def ping(self):
            return "pong"

    a = Pinned.options(scheduling_strategy=Affinity(nowhere)).remote()
    with pytest.raises(ac.errors.ActorDiedError, match="not a node of this cluster"):
        ac.get(a.ping.remote(), timeout=60)
    b = Pinned.options(scheduling_strategy=Affinity(here)).remote()
    assert ac.get(b.ping.remote(), timeout=60) == "pong"
    with pytest.raises(ValueError, match="hex"):
        where.options(scheduling_strategy=Affinity("not-a-node-id")).remote()


@pytest.mark.timeout(60)
def test_nodes_reports_this_node_alive_from_the_daemon(runtime):
    import actorcore as ac

    runtime.init(ignore_reinit_error=True)
    nodes = ac.nodes()
    assert [n["NodeID"] for n in nodes] == [ac.get_runtime_context().get_node_id()]
    assert nodes[0]["Alive"] is True
    assert nodes[0]["Pid"] == list_state("node")["pid"]
