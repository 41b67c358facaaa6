"""Mutual TLS between the nodes of a cluster (issue 8, item 7).

Certificates are made for the module by the ``openssl`` command: one cluster CA
and a certificate it signed, and a second CA (a stranger) with its own. Every
process of the TLS cluster talks TCP (``ACTORCORE_UNIX_SOCKETS=0``), as
between machines, so every link here is a TLS one.
"""

from __future__ import annotations

import asyncio
import pickle
import shutil
import socket
import ssl
from pathlib import Path

import numpy as np
import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore._tls import TlsContexts, TlsOptions, TlsSocket
from actorcore._transfer_link import connect_data
from actorcore._transport import Receiver, open_connection
from actorcore.errors import AuthenticationError, ConnectionBrokenError
from actorcore.testing import Cluster, make_tls_certificates

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

MiB = 1 << 20


def _options(settings: dict[str, str]) -> TlsOptions:
    return TlsOptions(settings["tls_cert"], settings["tls_key"], settings["tls_ca"])


def _settings(t: TlsOptions) -> dict[str, str]:
    assert t.cert and t.key and t.ca
    return {"tls_cert": t.cert, "tls_key": t.key, "tls_ca": t.ca}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    ours = make_tls_certificates(d, ("node", "driver"))  # one CA: the cluster's
    theirs = make_tls_certificates(d, ("stranger",))  # another CA
    return {name: _options(s) for name, s in {**ours, **theirs}.items()}


@pytest.fixture(scope="module")
def tls_cluster(certs):
    mp = pytest.MonkeyPatch()
    mp.setenv("ACTORCORE_UNIX_SOCKETS", "0")  # every link is TCP, as between machines
    try:
        with Cluster(num_nodes=0, ttl_s=3.0) as c:
            c.add_node(num_cpus=1, **_settings(certs["node"]))
            c.add_node(num_cpus=1, resources={"onb": 4}, **_settings(certs["node"]))
            yield c
    finally:
        mp.undo()


@ac.remote(resources={"onb": 1})
def make(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8)


@ac.remote(resources={"onb": 1})
def checksum(a: np.ndarray) -> tuple[int, int, str]:
    return a.nbytes, int(a[::997].sum()), ac.get_runtime_context().get_node_id()


@ac.remote(resources={"onb": 1})
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> tuple[int, str]:
        self.n += k
        return self.n, ac.get_runtime_context().get_node_id()


def test_tls_cluster_runs_tasks_actors_and_objects_across_nodes(tls_cluster, monkeypatch):
    from actorcore import _global as G

    a, b = tls_cluster.nodes
    monkeypatch.setenv("ACTORCORE_UNIX_SOCKETS", "0")
    ac.init(address=tls_cluster.address, attach_node=a.node_id)
    try:
        big = ac.get(make.remote(3 * MiB), timeout=60)  # made on B, pulled to A over TLS
        assert big.nbytes == 3 * MiB and int(big[:256].sum()) == sum(range(256))
        arg = np.arange(2 * MiB, dtype=np.uint8)
        ref = ac.put(arg)  # on A, pulled to B for the task
        n, s, node = ac.get(checksum.remote(ref), timeout=60)
        assert (n, s, node) == (arg.nbytes, int(arg[::997].sum()), b.node_id)
        c = Counter.remote()
        assert ac.get([c.add.remote(1) for _ in range(20)], timeout=60)[-1] == (20, b.node_id)
        rt = G.runtime
        with rt.lock:
            peers = [p.conn for p in rt.peers.values() if p.conn is not None]
        assert peers and all(isinstance(conn.sock, TlsSocket) for conn in peers)
        stats = [n.ask(P.TransferStatsMsg(next_rid())) for n in (a, b)]
        assert all(s["bytes_received"] > 0 for s in stats), stats
    finally:
        ac.shutdown()


class _Nothing(Receiver):
    def on_frame(self, conn, msg, buffers):
        raise AssertionError("nothing may be delivered")


async def _dial(address, token, tls):
    conn = await open_connection(
        asyncio.get_running_loop(), address, _Nothing(), token=token, role="daemon",
        my_id=b"x" * 16, max_header_bytes=1 << 20, max_frame_bytes=1 << 20, tls=tls,
    )  # fmt: skip
    conn.close()


def test_a_peer_with_a_certificate_of_another_ca_is_refused(tls_cluster, certs):
    a = tls_cluster.nodes[0]
    address = tuple(a.ready["address"][:2])
    stranger = TlsContexts.load(certs["stranger"])
    with pytest.raises((ssl.SSLError, AuthenticationError, ConnectionBrokenError, OSError)):
        asyncio.run(_dial(address, a.token, stranger))  # even with the right token
    # with the cluster's CA (the driver's certificate) and the token, it gets in
    asyncio.run(_dial(address, a.token, TlsContexts.load(certs["driver"])))

    async def pull_link(tls):
        sock, _peer = await connect_data(
            asyncio.get_running_loop(), _data_address(tls_cluster, a), a.token, b"y" * 16, tls
        )
        sock.close()

    with pytest.raises((ssl.SSLError, AuthenticationError, ConnectionBrokenError, OSError)):
        asyncio.run(pull_link(stranger))
    asyncio.run(pull_link(TlsContexts.load(certs["driver"])))


def _data_address(c: Cluster, node) -> tuple[str, int]:
    """A node's transfer listener (where peers pull objects from)."""
    return tuple(node.ask(P.TransferStatsMsg(next_rid()))["address"])  # type: ignore[return-value]


def _frames(data: bytes) -> list:
    from actorcore._handshake import handshake_decoder

    try:
        return handshake_decoder().feed(data, 1)
    except Exception:
        return []


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_plain_tcp_to_a_tls_node_is_refused_and_nothing_is_unpickled(tls_cluster, tmp_path):
    a = tls_cluster.nodes[0]
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(str(marker)))
    auth = P.encode_bytes(P.AuthMsg(P.PROTOCOL_VERSION, "daemon", b"z" * 16, b"n" * 16, b"p" * 32))
    for address in (tuple(a.ready["address"][:2]), _data_address(tls_cluster, a)):
        with socket.create_connection(address, timeout=10) as s:
            s.sendall(auth + P.encode_bytes(P.ErrorReplyMsg(1, "x", "y", payload)))
            s.settimeout(10)
            got = b""
            try:
                while chunk := s.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
        assert not _frames(got)  # no HELLO: the node spoke TLS (an alert) and hung up
    # the node still serves, and nothing it was sent was ever unpickled
    assert a.ask(P.ClusterInfoMsg(next_rid(), "nodes"))
    assert not marker.exists()


def test_a_node_with_a_certificate_of_another_ca_gets_no_link(tls_cluster, certs):
    """It may register in etcd (etcd has its own login), but no node of the cluster
    talks to it: its resources count in the total, never as available."""
    a = tls_cluster.nodes[0]
    node = tls_cluster.add_node(
        num_cpus=1, resources={"stranger": 1}, **_settings(certs["stranger"])
    )
    try:
        assert a.ask(P.ClusterInfoMsg(next_rid(), "total")).get("stranger") == 1
        available = a.ask(P.ClusterInfoMsg(next_rid(), "available"))  # asks each node
        assert "stranger" not in available and available.get("onb") == 4
    finally:
        tls_cluster.stop_node(node)
