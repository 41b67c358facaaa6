"""Bad input (issue 2, item 10): nothing a peer sends takes the node daemon down.

A raw client built here from plain sockets, msgpack and hmac (following
``actorcore/_protocol.py`` and ``actorcore/_transport.py``) sends malformed
frames, a wrong token, oversized frames, unknown message types and calls to
actor methods that do not exist. Each gets an error or a dropped connection,
and afterwards the daemon still serves the driver and new clients.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import random
import socket
import struct
import threading

import msgpack
import pytest

from actorcore import errors as E
from actorcore._transport import HANDSHAKE_TIMEOUT_S
from actorcore.testing import list_state

PRELUDE = struct.Struct("<IH")
BUFLEN = struct.Struct("<Q")
VERSION = 1

# message tags (actorcore/_protocol.py)
HELLO, AUTH, WELCOME, REJECT = 1, 2, 3, 4
REPLY, ERROR_REPLY = 10, 11
PUSH_TASK, TASK_RESULT, ACTOR_CALL = 20, 21, 22
WAIT_ACTOR, LIST_STATE, SHUTDOWN_NODE = 49, 54, 56


class PeerClosed(Exception):
    pass


def frame(tag, fields, buffers=()):
    header = msgpack.packb([tag, list(fields)], use_bin_type=True)
    lens = b"".join(BUFLEN.pack(len(b)) for b in buffers)
    return PRELUDE.pack(len(header), len(buffers)) + lens + header + b"".join(buffers)


class RawClient:
    """A blocking client that speaks the wire protocol by hand."""

    def __init__(self, address, timeout=10.0):
        self.sock = socket.create_connection(tuple(address), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.peer_id = os.urandom(16)

    def close(self):
        self.sock.close()

    def _recv_exactly(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PeerClosed(f"peer closed with {len(self.buf)} of {n} bytes read")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read(self):
        """One frame as ``(tag, fields, buffers)``."""
        hlen, nbufs = PRELUDE.unpack(self._recv_exactly(6))
        lens = [BUFLEN.unpack(self._recv_exactly(8))[0] for _ in range(nbufs)]
        tag, fields = msgpack.unpackb(self._recv_exactly(hlen), raw=False)
        bufs = [self._recv_exactly(n) for n in lens]
        return tag, fields, bufs

    def send(self, data):
        self.sock.sendall(data)

    def handshake(self, token, role="driver", *, wrong=False, extra=b""):
        tag, fields, _ = self.read()
        assert tag == HELLO
        version, server_role, server_id, nonce = fields
        assert version == VERSION
        key = b"not the token" if wrong else token
        proof = hmac.new(
            key, b"client" + nonce + role.encode() + self.peer_id, hashlib.sha256
        ).digest()
        my_nonce = os.urandom(16)
        self.send(frame(AUTH, [VERSION, role, self.peer_id, my_nonce, proof]) + extra)
        tag, fields, _ = self.read()
        if tag == WELCOME:
            want = hmac.new(
                token, b"server" + my_nonce + server_role.encode() + server_id, hashlib.sha256
            )
            assert hmac.compare_digest(want.digest(), fields[0]), (
                "the server failed to prove the token"
            )
        return tag, fields

    def request(self, tag, fields):
        """Send a request (``fields[0]`` is its rid) and return the frame answering it."""
        rid = fields[0]
        self.send(frame(tag, fields))
        while True:
            rtag, rfields, bufs = self.read()
            if rtag in (REPLY, ERROR_REPLY, TASK_RESULT) and rfields[0] == rid:
                return rtag, rfields, bufs

    def outcome(self):
        """What the peer does next: ("frame", tag, fields) or ("closed",)."""
        try:
            tag, fields, _ = self.read()
            return ("frame", tag, fields)
        except (PeerClosed, ConnectionResetError):
            return ("closed",)

    def error_or_closed(self):
        """Read until an error frame or the end; returns what ended it."""
        seen = []
        while True:
            got = self.outcome()
            seen.append(got)
            if got[0] == "closed":
                return seen
            if got[1] in (REJECT, ERROR_REPLY):
                return seen


_rid = iter(range(10**6, 10**9))


def rid():
    return next(_rid)


@pytest.fixture(scope="module")
def node(runtime):
    """The node's address, token and pid, from its node.json."""
    info = runtime.init(ignore_reinit_error=True)
    path = os.path.join("/dev/shm", f"actorcore-{info.session}", "node.json")
    with open(path) as f:
        data = json.load(f)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    return {
        "address": tuple(data["address"]),
        "token": bytes.fromhex(data["token"]),
        "pid": data["pid"],
        "session": info.session,
    }


@pytest.fixture
def client(node):
    c = RawClient(node["address"])
    try:
        yield c
    finally:
        c.close()


def assert_still_serving(ac, node):
    """The daemon answers the driver, runs a task, and accepts a new client."""

    @ac.remote
    def ping(x):
        return x + 1

    assert ac.get(ping.remote(41), timeout=30) == 42
    state = list_state("node")
    assert state["pid"] == node["pid"]
    c = RawClient(node["address"])
    try:
        assert c.handshake(node["token"])[0] == WELCOME
        tag, fields, _ = c.request(LIST_STATE, [rid(), "node"])
        assert tag == REPLY and fields[1]["pid"] == node["pid"]
    finally:
        c.close()


def is_error_or_drop(seen):
    last = seen[-1]
    return last[0] == "closed" or last[1] in (REJECT, ERROR_REPLY)


# --- a wrong token, with messages behind it ------------------------------------------


@pytest.mark.timeout(60)
def test_messages_after_a_wrong_token_are_never_decoded(fresh_runtime):
    """First in the module (the shared ``runtime`` is not started yet).

    A shutdown request sent right behind a failed AUTH must not be acted on."""
    import actorcore as ac

    info = fresh_runtime(num_cpus=1)
    with open(os.path.join("/dev/shm", f"actorcore-{info.session}", "node.json")) as f:
        data = json.load(f)
    token = bytes.fromhex(data["token"])
    c = RawClient(data["address"])
    try:
        behind = frame(SHUTDOWN_NODE, [rid()]) + frame(LIST_STATE, [rid(), "node"])
        tag, _ = c.handshake(token, wrong=True, extra=behind)
        assert tag == REJECT
        assert c.outcome() == ("closed",)
    finally:
        c.close()

    @ac.remote
    def ping():
        return "pong"

    # A decoded SHUTDOWN_NODE would have stopped the daemon before it closed
    # our socket; these requests come after that.
    assert list_state("node")["pid"] == data["pid"]
    assert ac.get(ping.remote(), timeout=30) == "pong"
    assert list_state("node")["pid"] == data["pid"]


@pytest.mark.timeout(60)
def test_wire_limits_are_settings_that_take_effect(fresh_runtime, monkeypatch):
    """Second in the module (the shared ``runtime`` is not started yet). The limits
    against misbehaving peers are Config fields (and ``ACTORCORE_*`` variables)
    that reach the daemon's and the driver's listeners and connections."""
    import time

    from actorcore import _global as G
    from actorcore.testing import wait_for

    monkeypatch.setenv("ACTORCORE_HANDSHAKE_TIMEOUT_S", "0.5")  # default 5 s
    info = fresh_runtime(
        num_cpus=1,
        max_pending_handshakes=2,  # default 64
        send_high_water_bytes=8 << 20,
        send_max_queued_bytes=16 << 20,
    )
    rt = G.require()
    assert rt.config.handshake_timeout_s == 0.5
    with open(os.path.join("/dev/shm", f"actorcore-{info.session}", "node.json")) as f:
        address = json.load(f)["address"]
    # the daemon drops a socket that never authenticates after 0.5 s, not 5
    silent = socket.create_connection(tuple(address), timeout=10)
    try:
        t0 = time.monotonic()
        while silent.recv(65536):  # the daemon's HELLO, then nothing: we never answer
            pass
        assert time.monotonic() - t0 < 4.0
    finally:
        silent.close()
    # the driver's own listener holds at most two unauthenticated sockets
    socks = [socket.create_connection(rt.listener.address, timeout=10) for _ in range(4)]
    try:
        wait_for(lambda: rt.listener.evicted >= 2, 10, what="the oldest sockets evicted")
    finally:
        for s in socks:
            s.close()
    # send back-pressure bounds of the driver's connection to its daemon
    conn = rt.daemon.conn
    assert (conn._high, conn._max) == (8 << 20, 16 << 20)


@pytest.mark.timeout(60)
def test_an_undecodable_frame_behind_a_wrong_token_is_not_parsed(runtime, node, client):
    """In the same write as a failed AUTH: the daemon answers the AUTH (a REJECT
    naming the token) and drops the rest unread; decoding it would have failed
    first."""
    behind = PRELUDE.pack(12, 0) + b"\xc1" * 12  # not msgpack
    tag, fields = client.handshake(node["token"], wrong=True, extra=behind)
    assert tag == REJECT and "token" in fields[0], fields
    assert client.outcome() == ("closed",)
    assert_still_serving(runtime, node)


# --- the raw client itself ---------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.timeout(60)
def test_a_request_right_behind_the_handshake_is_answered(runtime, node, client):
    """A request sent in the same write as AUTH arrives with the handshake's last
    bytes; it used to be dispatched before the connection was wired to its RPC
    peer, and its reply was dropped (a borrower's ADD_BORROWER then waited 30 s)."""
    behind = frame(LIST_STATE, [rid(), "node"])
    tag, _ = client.handshake(node["token"], extra=behind)
    assert tag == WELCOME
    client.sock.settimeout(20)
    rtag, rfields, _ = client.read()
    assert rtag == REPLY and rfields[1]["pid"] == node["pid"]


def test_raw_client_speaks_the_protocol(runtime, node, client):
    tag, _ = client.handshake(node["token"])
    assert tag == WELCOME
    tag, fields, _ = client.request(LIST_STATE, [rid(), "node"])
    assert tag == REPLY
    assert fields[1]["pid"] == node["pid"]
    assert fields[1]["session"] == node["session"]
    # a request the handler rejects gets an error reply; the connection goes on
    tag, fields, _ = client.request(LIST_STATE, [rid(), "no such kind"])
    assert tag == ERROR_REPLY
    assert "no such kind" in fields[2]
    tag, fields, _ = client.request(LIST_STATE, [rid(), "workers"])
    assert tag == REPLY and isinstance(fields[1], list)


# --- malformed frames ------------------------------------------------------------------------


GARBAGE = {
    # seeded: unseeded bytes sometimes form a plausible, merely incomplete frame,
    # which a daemon rightly waits on
    "random bytes": random.Random(20261121).randbytes(4096),
    "all ones": b"\xff" * 64,
    "header not msgpack": PRELUDE.pack(12, 0) + b"\xc1" * 12,
    "header not a list": PRELUDE.pack(6, 0) + msgpack.packb("hello"),
    "header an int": PRELUDE.pack(1, 0) + msgpack.packb(5),
    "fields not a list": PRELUDE.pack(3, 0) + msgpack.packb([LIST_STATE, 7]),
    "too few fields": frame(LIST_STATE, [12345]),
    "too many fields": frame(LIST_STATE, [12345, "node", "extra", "more"]),
    "truncated then closed": PRELUDE.pack(1000, 0) + b"\x93" * 10,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_malformed_frame_after_handshake(runtime, node, client, kind):
    assert client.handshake(node["token"])[0] == WELCOME
    client.send(GARBAGE[kind])
    if kind == "truncated then closed":
        client.sock.shutdown(socket.SHUT_WR)
    seen = client.error_or_closed()
    assert is_error_or_drop(seen), seen
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_garbage_instead_of_handshake(runtime, node, client):
    tag, _, _ = client.read()
    assert tag == HELLO
    client.send(os.urandom(2048))
    seen = client.error_or_closed()
    assert is_error_or_drop(seen), seen
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_request_before_handshake_is_refused(runtime, node, client):
    tag, _, _ = client.read()
    assert tag == HELLO
    client.send(frame(LIST_STATE, [rid(), "node"]))
    seen = client.error_or_closed()
    assert seen[-1][0] == "closed" or seen[-1][1] == REJECT, seen
    assert not [s for s in seen if s[0] == "frame" and s[1] == REPLY]
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_many_bad_clients_at_once(runtime, node):
    """A burst of bad connections in parallel, while the driver keeps working."""
    errors = []

    def bad(i):
        try:
            # a truncated frame in place of AUTH is dropped at the daemon's handshake
            # deadline (HANDSHAKE_TIMEOUT_S): wait longer than that
            c = RawClient(node["address"], timeout=HANDSHAKE_TIMEOUT_S + 15)
            try:
                c.read()
                c.send(GARBAGE[list(GARBAGE)[i % len(GARBAGE)]])
                c.error_or_closed()
            finally:
                c.close()
        except (OSError, PeerClosed) as e:
            errors.append(e)

    threads = [threading.Thread(target=bad, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    ac = runtime

    @ac.remote
    def square(x):
        return x * x

    assert ac.get([square.remote(i) for i in range(20)], timeout=30) == [i * i for i in range(20)]
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_silent_and_half_sent_clients_do_not_block_others(runtime, node):
    """Connections that never finish the handshake or a frame hold nobody up."""
    idle = []
    try:
        for i in range(40):
            c = RawClient(node["address"])
            idle.append(c)
            if i % 2:
                assert c.handshake(node["token"])[0] == WELCOME
                c.send(frame(LIST_STATE, [rid(), "node"])[:9])  # half a frame, then silence
        assert_still_serving(runtime, node)
    finally:
        for c in idle:
            c.close()
    assert_still_serving(runtime, node)


# --- wrong token ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_wrong_token_is_rejected(runtime, node, client):
    tag, fields = client.handshake(node["token"], wrong=True)
    assert tag == REJECT
    assert "token" in fields[0]
    assert client.outcome() == ("closed",)
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_wrong_protocol_version_is_rejected(runtime, node, client):
    tag, fields, _ = client.read()
    assert tag == HELLO
    nonce = fields[3]
    proof = hmac.new(
        node["token"], b"client" + nonce + b"driver" + client.peer_id, hashlib.sha256
    ).digest()
    client.send(frame(AUTH, [VERSION + 99, "driver", client.peer_id, os.urandom(16), proof]))
    seen = client.error_or_closed()
    assert seen[-1][0] == "closed" or seen[-1][1] == REJECT, seen
    assert not [s for s in seen if s[0] == "frame" and s[1] == WELCOME]
    assert_still_serving(runtime, node)


# --- oversized frames -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "prelude",
    [
        PRELUDE.pack(2**32 - 1, 0),  # a 4 GiB header
        PRELUDE.pack(65 * 1024 * 1024, 0),  # just over the 64 MiB header limit
        PRELUDE.pack(10, 1) + BUFLEN.pack(2**40),  # a 1 TiB buffer
        PRELUDE.pack(10, 3) + BUFLEN.pack(2**30) * 3,  # buffers adding up past the frame limit
    ],
    ids=["huge-header", "header-over-limit", "huge-buffer", "buffers-over-limit"],
)
def test_oversized_frame_is_refused(runtime, node, client, prelude):
    assert client.handshake(node["token"])[0] == WELCOME
    client.send(prelude + b"\x00" * 64)
    seen = client.error_or_closed()
    assert is_error_or_drop(seen), seen
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_oversized_frame_during_handshake(runtime, node, client):
    tag, _, _ = client.read()
    assert tag == HELLO
    client.send(PRELUDE.pack(1 << 30, 0) + b"\x00" * 64)
    seen = client.error_or_closed()
    assert is_error_or_drop(seen), seen
    assert_still_serving(runtime, node)


# --- unknown message types ------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tag", [999, 0, 65535, -1])
def test_unknown_message_type(runtime, node, client, tag):
    assert client.handshake(node["token"])[0] == WELCOME
    r = rid()
    client.send(frame(tag, [r, "whatever", b"\x00"]))
    seen = client.error_or_closed()
    assert is_error_or_drop(seen), seen
    if seen[-1][0] == "frame" and seen[-1][1] == ERROR_REPLY:
        assert seen[-1][2][0] == r
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_message_the_daemon_does_not_handle_gets_an_error_reply(runtime, node, client):
    """An ACTOR_CALL is a worker's message: the daemon answers it with an error."""
    assert client.handshake(node["token"])[0] == WELCOME
    r = rid()
    owner = [client.peer_id, "127.0.0.1", 1]
    client.send(
        frame(
            ACTOR_CALL, [r, os.urandom(16), "m", os.urandom(16), b"", [], [os.urandom(16)], owner]
        )
    )
    seen = client.error_or_closed()
    assert is_error_or_drop(seen), seen
    # a stray reply to a request nobody made is ignored, and the connection goes on
    client2 = RawClient(node["address"])
    try:
        assert client2.handshake(node["token"])[0] == WELCOME
        client2.send(frame(REPLY, [424242, "unsolicited"]))
        client2.send(frame(TASK_RESULT, [424243, []]))
        tag, _, _ = client2.request(LIST_STATE, [rid(), "node"])
        assert tag == REPLY
    finally:
        client2.close()
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_wrong_field_types_get_an_error(runtime, node, client):
    assert client.handshake(node["token"])[0] == WELCOME
    for fields in ([rid(), 12345], [rid(), None], [rid(), ["node"]], [rid(), {"a": 1}]):
        client.send(frame(LIST_STATE, fields))
        seen = client.error_or_closed()
        assert is_error_or_drop(seen), seen
        if seen[-1][0] == "closed":
            break
    assert_still_serving(runtime, node)


# --- actors: methods that do not exist, arguments that cannot travel ------------------------------


def _actor_address(client, actor):
    """Ask the daemon where the actor lives: ``[worker_id, host, port]``."""
    tag, fields, _ = client.request(WAIT_ACTOR, [rid(), actor.id, 0])
    assert tag == REPLY, fields
    state, address, _epoch, _cause = fields[1]
    assert state == "ALIVE"
    return address


def _make_counter(ac):
    @ac.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    return Counter


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["no_such_method", "__init__", "__class__", "__reduce__", ""])
def test_unknown_actor_method_over_the_wire(runtime, node, client, method):
    ac = runtime
    Counter = _make_counter(ac)
    c = Counter.remote()
    assert ac.get(c.incr.remote(), timeout=30) == 1
    assert client.handshake(node["token"])[0] == WELCOME
    _wid, host, port, *_unix = _actor_address(client, c)
    w = RawClient((host, port))
    try:
        assert w.handshake(node["token"])[0] == WELCOME
        r = rid()
        owner = [w.peer_id, "127.0.0.1", 1]
        w.send(
            frame(ACTOR_CALL, [r, c.id, method, os.urandom(16), b"", [], [os.urandom(16)], owner])
        )
        while True:
            got = w.outcome()
            if got[0] == "closed" or got[1] in (TASK_RESULT, ERROR_REPLY, REJECT):
                break
        assert got[0] == "frame", got
        if got[1] == TASK_RESULT:
            assert got[2][0] == r
            [[_kind, blob, _nested]] = got[2][1]
            err = pickle.loads(blob)
            assert isinstance(err, E.ActorCoreError)
            assert isinstance(err, AttributeError), err
            assert repr(method) in str(err) or method in str(err)
        else:
            assert got[1] == ERROR_REPLY and got[2][0] == r
    finally:
        w.close()
    # the actor is unharmed, its state untouched
    assert ac.get(c.incr.remote(), timeout=30) == 2
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_unknown_actor_method_through_the_runtime(runtime):
    """Bypassing the handle's check: the worker refuses the name with a clear error."""
    from actorcore._remote import ActorMethod

    ac = runtime
    Counter = _make_counter(ac)
    c = Counter.remote()
    with pytest.raises(AttributeError) as info:
        c.no_such_method  # noqa: B018 - the handle checks first
    assert "no_such_method" in str(info.value)
    ref = ActorMethod(c, "no_such_method", 1).remote()
    with pytest.raises(AttributeError) as info:
        ac.get(ref, timeout=30)
    assert "no_such_method" in str(info.value)
    assert "Counter" in str(info.value)
    assert ac.get(c.incr.remote(), timeout=30) == 1


@pytest.mark.timeout(60)
def test_call_to_unknown_actor_on_a_worker(runtime, node, client):
    ac = runtime
    Counter = _make_counter(ac)
    c = Counter.remote()
    assert ac.get(c.incr.remote(), timeout=30) == 1
    assert client.handshake(node["token"])[0] == WELCOME
    _wid, host, port, *_unix = _actor_address(client, c)
    w = RawClient((host, port))
    try:
        assert w.handshake(node["token"])[0] == WELCOME
        r = rid()
        w.send(
            frame(
                ACTOR_CALL,
                [
                    r,
                    os.urandom(16),
                    "incr",
                    os.urandom(16),
                    b"",
                    [],
                    [os.urandom(16)],
                    [w.peer_id, "127.0.0.1", 1],
                ],
            )
        )
        seen = w.error_or_closed()
        assert seen[-1][0] == "frame" and seen[-1][1] == ERROR_REPLY, seen
        assert seen[-1][2][0] == r
        # and garbage to the worker drops that connection, not the worker
        w2 = RawClient((host, port))
        try:
            assert w2.handshake(node["token"])[0] == WELCOME
            w2.send(os.urandom(512))
            assert is_error_or_drop(w2.error_or_closed())
        finally:
            w2.close()
    finally:
        w.close()
    assert ac.get(c.incr.remote(), timeout=30) == 2
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_undecodable_task_pushed_to_a_worker(runtime, node, client):
    """A task whose function blob is garbage fails; the worker lives on."""
    ac = runtime
    Counter = _make_counter(ac)
    c = Counter.remote()
    assert ac.get(c.incr.remote(), timeout=30) == 1
    assert client.handshake(node["token"])[0] == WELCOME
    _wid, host, port, *_unix = _actor_address(client, c)
    w = RawClient((host, port))
    try:
        assert w.handshake(node["token"])[0] == WELCOME
        r = rid()
        owner = [w.peer_id, "127.0.0.1", 1]
        w.send(
            frame(
                PUSH_TASK,
                [
                    r,
                    os.urandom(16),
                    os.urandom(16),
                    b"not a pickle",
                    "bogus",
                    b"",
                    [],
                    [os.urandom(16)],
                    owner,
                    0,
                ],
            )
        )
        seen = w.error_or_closed()
        assert is_error_or_drop(seen), seen
    finally:
        w.close()
    assert ac.get(c.incr.remote(), timeout=30) == 2
    assert_still_serving(runtime, node)


@pytest.mark.timeout(60)
def test_unpicklable_argument_never_reaches_the_worker(runtime, tmp_path):
    ac = runtime
    marker = tmp_path / "ran"

    @ac.remote
    def record(path, _value):
        with open(path, "a") as f:
            f.write("ran\n")
        return True

    @ac.remote
    class Recorder:
        def __init__(self):
            self.calls = 0

        def record(self, _value):
            self.calls += 1
            return self.calls

    with pytest.raises(E.SerializationError):
        record.remote(str(marker), threading.Lock())
    with pytest.raises(E.SerializationError):
        record.remote(str(marker), _value=(x for x in range(3)))
    r = Recorder.remote()
    with pytest.raises(E.SerializationError):
        r.record.remote(threading.Lock())
    # the calls that work afterwards show that the failed ones never ran
    assert ac.get(record.remote(str(marker), 1), timeout=30) is True
    assert marker.read_text() == "ran\n"
    assert ac.get(r.record.remote(1), timeout=30) == 1
    assert_still_serving_simple(ac)


class _Unloadable:
    """Pickles fine; unpickling it raises (in the worker)."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def _refuse_to_load():
    raise RuntimeError("this argument refuses to be unpickled")


@pytest.mark.timeout(60)
def test_argument_that_fails_to_unpickle_in_the_worker(runtime, tmp_path):
    ac = runtime
    marker = tmp_path / "ran"

    @ac.remote
    def record(path, _value):
        with open(path, "a") as f:
            f.write("ran\n")
        return True

    with pytest.raises(E.ActorCoreError) as info:
        ac.get(record.remote(str(marker), _Unloadable()), timeout=30)
    assert "refuses to be unpickled" in str(info.value)
    assert "argument" in str(info.value)
    assert not marker.exists()
    assert ac.get(record.remote(str(marker), 1), timeout=30) is True


def assert_still_serving_simple(ac):
    @ac.remote
    def ping():
        return "pong"

    assert ac.get(ping.remote(), timeout=30) == "pong"
    assert list_state("node")["pid"]


# --- limits: unauthenticated sockets, frame sizes, back-pressure (issue 7, item 8) -----------


@pytest.mark.timeout(90)
def test_silent_unauthenticated_clients_are_dropped_at_the_deadline(runtime, node):
    from actorcore._handshake import SERVER_HANDSHAKE_TIMEOUT_S

    silent = [RawClient(node["address"], timeout=SERVER_HANDSHAKE_TIMEOUT_S + 40) for _ in range(8)]
    try:
        assert_still_serving(runtime, node)  # they hold nobody up
        for c in silent:
            assert c.error_or_closed()[-1] == ("closed",)  # HELLO, then dropped
    finally:
        for c in silent:
            c.close()


@pytest.mark.timeout(90)
def test_oversized_frame_gets_a_reject_naming_the_limit(runtime, node, client):
    assert client.handshake(node["token"])[0] == WELCOME
    client.send(PRELUDE.pack(9 * 1024 * 1024, 0) + b"\x00" * 64)  # over the 8 MiB default
    seen = client.error_or_closed()
    rejects = [s for s in seen if s[0] == "frame" and s[1] == REJECT]
    assert rejects and "exceeds the limit" in rejects[0][2][0], seen
    assert_still_serving(runtime, node)


class _Sink:
    """A receiver that keeps what arrives."""

    def __init__(self):
        self.frames = []
        self.buffers = []
        self.closed = None

    def on_frame(self, conn, msg, buffers):
        self.frames.append(msg)
        self.buffers.append(buffers)

    def on_protocol_error(self, conn, err):
        conn.abort(err)

    def on_close(self, conn, exc):
        self.closed = exc


def _run(coro_fn):
    import asyncio

    return asyncio.run(asyncio.wait_for(coro_fn(), 60))


def _pair(loop, **kw):
    from actorcore._transport import Connection

    a, b = socket.socketpair()
    a.setblocking(False)
    conn = Connection(
        a,
        loop,
        _Sink(),
        peer_role="test peer",
        peer_id=b"p" * 16,
        max_header_bytes=1 << 20,
        max_frame_bytes=4 << 20,
        **kw,
    )
    conn.start()
    return conn, b


def _read_frames(sock, want_bytes):
    """Read ``want_bytes`` (blocking) from the raw peer socket."""
    sock.setblocking(True)
    sock.settimeout(30)
    got = 0
    while got < want_bytes:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got


def _reply(n):
    from actorcore import _protocol as P

    return P.ReplyMsg(1, b"x" * n)


@pytest.mark.timeout(60)
def test_a_frame_over_the_limit_is_refused_at_the_sender():
    from actorcore import _protocol as P

    async def main():
        import asyncio

        conn, peer = _pair(asyncio.get_running_loop())
        try:
            with pytest.raises(E.MessageTooLargeError, match="max_header_bytes"):
                conn.send(_reply(2 << 20))
            with pytest.raises(ValueError):  # a usage error as well
                conn.send(_reply(2 << 20))
            conn.send(_reply(10))  # the connection goes on
            small = len(P.encode(_reply(10)))
            got = await asyncio.get_running_loop().run_in_executor(None, _read_frames, peer, small)
            assert got == small
            assert not conn.closed
        finally:
            conn.close()
            peer.close()

    _run(main)


@pytest.mark.timeout(60)
def test_a_loop_sender_to_a_peer_that_never_reads_is_cut_off_at_the_cap():
    async def main():
        import asyncio

        conn, peer = _pair(asyncio.get_running_loop(), high_water=1 << 20, max_queued=4 << 20)
        try:
            frame_size = 64 * 1024
            with pytest.raises(E.ConnectionBrokenError, match="not reading"):
                for _ in range(10_000):
                    conn.send(_reply(frame_size))
                    assert conn.queued_bytes <= (4 << 20) + 2 * frame_size
            await asyncio.sleep(0)  # the abort lands on the loop
            assert conn.closed
            assert isinstance(conn.receiver.closed, E.ConnectionBrokenError)
            with pytest.raises(ConnectionError):
                conn.send(_reply(10))
        finally:
            peer.close()

    _run(main)


@pytest.mark.timeout(60)
def test_a_thread_sender_waits_for_a_slow_reader_and_memory_stays_bounded():
    from actorcore import _protocol as P

    frame_size, count, high = 64 * 1024, 200, 1 << 20
    one = len(P.encode(_reply(frame_size)))

    async def main():
        import asyncio

        loop = asyncio.get_running_loop()
        conn, peer = _pair(loop, high_water=high, max_queued=4 << 20)
        sent = []
        peaks = []

        def produce():
            for _ in range(count):
                conn.send(_reply(frame_size))  # blocks this thread, never the loop
                sent.append(1)
                peaks.append(conn.queued_bytes)

        producer = loop.run_in_executor(None, produce)
        try:
            # the producer stalls while nobody reads, with bounded memory queued
            deadline = loop.time() + 30
            while not (conn.queued_bytes > high // 2 and len(sent) < count):
                assert loop.time() < deadline, "the producer never had to wait"
                await asyncio.sleep(0.01)
            stalled = len(sent)
            ticks = 0
            while ticks < 20:  # the loop runs on while the thread waits
                await asyncio.sleep(0.01)
                ticks += 1
            assert len(sent) < count and len(sent) <= stalled + 1
            got = await loop.run_in_executor(None, _read_frames, peer, one * count)
            await producer
            assert got == one * count
            assert max(peaks) <= high + 2 * one
        finally:
            conn.close()
            peer.close()

    _run(main)


@pytest.mark.timeout(60)
def test_drain_waits_for_the_peer_and_close_never_blocks():
    from actorcore import _protocol as P

    frame_size = 64 * 1024
    one = len(P.encode(_reply(frame_size)))

    async def main():
        import asyncio

        loop = asyncio.get_running_loop()
        conn, peer = _pair(loop, high_water=1 << 20, max_queued=8 << 20)
        try:
            n = 0
            while True:  # until more than the high-water mark stays queued
                conn.send(_reply(frame_size))
                n += 1
                if conn.queued_bytes > 1 << 20:
                    await asyncio.sleep(0.01)  # the socket takes what it can
                    if conn.queued_bytes > 1 << 20:
                        break
            drained = loop.create_task(conn.drain())
            await asyncio.sleep(0.05)
            assert not drained.done()  # the peer reads nothing yet
            reader = loop.run_in_executor(None, _read_frames, peer, one * n)
            await asyncio.wait_for(drained, 30)
            assert await reader == one * n

            for _ in range(40):  # 2.5 MiB queued to a peer that is not reading
                conn.send(_reply(frame_size))
            conn.close()
            # it returned with the bytes still queued: it did not wait for the peer
            assert conn.queued_bytes > 0, "close() waited for the peer to read"
            assert conn.closed
            assert isinstance(conn.receiver.closed, E.ConnectionClosedError)
            # what was queued still goes out, then the stream ends
            got = await loop.run_in_executor(None, _read_frames, peer, 10 * one * 40)
            assert got == one * 40
        finally:
            peer.close()

    _run(main)


@pytest.mark.timeout(60)
def test_the_listener_holds_few_unauthenticated_sockets_each_briefly():
    from actorcore._transport import Listener

    async def main():
        import asyncio

        loop = asyncio.get_running_loop()
        conns = []
        listener = Listener(
            loop,
            token=b"t" * 32,
            role="node",
            my_id=os.urandom(16),
            make_receiver=_Sink,
            on_connection=conns.append,
            max_header_bytes=1 << 20,
            max_frame_bytes=4 << 20,
            max_pending_handshakes=4,
            handshake_timeout_s=1.0,
        )
        listener.start()
        socks = []
        try:
            for _ in range(10):
                s = socket.create_connection(listener.address)
                s.setblocking(False)
                socks.append(s)
                await asyncio.sleep(0)
            deadline = loop.time() + 30
            while listener.evicted < 6:
                assert loop.time() < deadline, listener.evicted
                await asyncio.sleep(0.01)
            assert listener.pending_handshakes <= 4
            while listener.pending_handshakes or listener.rejected < 4:  # the deadline
                assert loop.time() < deadline, (listener.pending_handshakes, listener.rejected)
                await asyncio.sleep(0.05)
            assert not conns
        finally:
            listener.close()
            for s in socks:
                s.close()

    _run(main)


@pytest.mark.timeout(60)
def test_a_frame_with_a_large_buffer_arrives_whole_over_a_socket():
    from actorcore import _protocol as P

    big = os.urandom(3 << 20)

    async def main():
        import asyncio

        loop = asyncio.get_running_loop()
        conn, peer = _pair(loop)
        try:
            parts = P.encode(P.ReplyMsg(7, "big"), [big])
            await loop.run_in_executor(None, peer.sendall, b"".join(parts))
            deadline = loop.time() + 30
            while not conn.receiver.frames:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            (msg,) = conn.receiver.frames
            assert msg.rid == 7
            assert conn.receiver.buffers == [[big]]
        finally:
            conn.close()
            peer.close()

    _run(main)


@pytest.mark.timeout(60)
def test_closing_the_blocking_client_never_waits_for_a_call_in_progress(runtime, node, client):
    """A thread blocked in a store call (an open waits for a seal that never comes)
    does not hold up ``close()``; the call fails as closed."""
    from actorcore import _protocol as P
    from actorcore._sync_client import SyncClient
    from actorcore.testing import wait_for

    assert client.handshake(node["token"])[0] == WELCOME
    oid = os.urandom(16)
    tag, _fields, _ = client.request(60, [rid(), oid, 1000, [client.peer_id]])  # CREATE_OBJECT
    assert tag == REPLY  # created, and never sealed
    sync = SyncClient(
        tuple(node["address"]),
        token=node["token"],
        role="driver",
        my_id=os.urandom(16),
        max_header_bytes=1 << 20,
        max_frame_bytes=4 << 20,
    )
    outcome = []

    def blocked_open():
        try:
            outcome.append(sync.call(P.OpenObjectsMsg(rid(), [oid])))
        except Exception as e:
            outcome.append(e)

    t = threading.Thread(target=blocked_open, daemon=True)
    t.start()
    wait_for(lambda: sync._lock.locked(), 30, what="the call in progress")
    sync.close()  # returns at once, though the other thread holds the connection
    t.join(30)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], E.ConnectionClosedError), outcome
    assert_still_serving(runtime, node)
