"""The sans-IO parts of cluster membership: the peer table and addresses (no sockets)."""

from __future__ import annotations

import msgpack
import pytest
from actorcore.gcs import EtcdAddress, EtcdOptions, EventType, KeyValue, WatchEvent

from actorcore._peers import MEMBERS, NODES, ClusterSpec, Joined, Left, PeerTable

pytestmark = pytest.mark.timeout(10)


def _record(n: int, cpus: float = 1.0) -> dict:
    return {
        "node_id": bytes([n]).hex(),
        "address": f"10.0.0.{n}",
        "port": 1000 + n,
        "pid": 100 + n,
        "resources": {"CPU": cpus},
        "start_time": float(n),
    }


def _kv(prefix: bytes, n: int, rev: int, cpus: float = 1.0) -> KeyValue:
    value = msgpack.packb(_record(n, cpus))
    return KeyValue(prefix + bytes([n]).hex().encode(), value, rev, rev, 1)


def _put(n: int, rev: int, cpus: float = 1.0) -> WatchEvent:
    kv = _kv(NODES, n, rev, cpus)
    return WatchEvent(EventType.PUT, kv.key, rev, kv, None)


def _delete(n: int, rev: int) -> WatchEvent:
    return WatchEvent(EventType.DELETE, NODES + bytes([n]).hex().encode(), rev, None, None)


def test_joins_and_leaves_from_watch_events():
    t = PeerTable()
    assert t.load([_kv(MEMBERS, 1, 2), _kv(MEMBERS, 9, 1)], [_kv(NODES, 1, 2)]) == [
        Joined(bytes([1]), _record(1))
    ]
    assert t.handle(_put(2, 3, cpus=4)) == [Joined(bytes([2]), _record(2, 4))]
    assert t.handle(_put(2, 4, cpus=4)) == []  # a refresh of a known node
    assert t.total() == {"CPU": 5.0}
    assert t.handle(_delete(1, 5)) == [Left(bytes([1]))]
    assert t.handle(_delete(1, 6)) == []
    rows = {r["NodeID"]: r for r in t.nodes()}
    assert rows["01"]["Alive"] is False and rows["02"]["Alive"] is True
    assert rows["09"]["Alive"] is False  # known only from /members/: died before we came
    assert rows["02"]["NodeManagerAddress"] == "10.0.0.2" and rows["02"]["NodeManagerPort"] == 1002
    assert rows["02"]["Pid"] == 102 and rows["02"]["Resources"] == {"CPU": 4}
    assert t.total() == {"CPU": 4.0}  # only live nodes count


def test_a_reload_reports_what_changed_while_away():
    t = PeerTable()
    t.load([], [_kv(NODES, 1, 1), _kv(NODES, 2, 2)])
    changes = t.load([], [_kv(NODES, 2, 2), _kv(NODES, 3, 7)])
    assert sorted(changes, key=repr) == sorted(
        [Left(bytes([1])), Joined(bytes([3]), _record(3))], key=repr
    )
    assert [r["Alive"] for r in t.nodes()] == [False, True, True]


def test_a_node_that_comes_back_is_alive_again():
    t = PeerTable()
    t.handle(_put(1, 1))
    t.handle(_delete(1, 2))
    assert t.handle(_put(1, 3)) == [Joined(bytes([1]), _record(1))]
    assert t.nodes()[0]["Alive"] is True


def test_several_endpoints_and_options():
    a = EtcdAddress.parse("etcd://10.0.0.1:2379,10.0.0.2,10.0.0.3:7/prod")
    assert a.endpoints == [("10.0.0.1", 2379), ("10.0.0.2", 2379), ("10.0.0.3", 7)]
    assert a.namespace == "prod"
    assert a.grpc_target() == "ipv4:10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:7"
    assert str(a) == "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:7/prod"
    assert EtcdAddress.parse("etcd://h:1/x").grpc_target() == "h:1"
    with pytest.raises(ValueError):
        EtcdAddress.parse("etcd://h:1,:2/x")
    spec = ClusterSpec("etcd://h:1/x", "10.1.1.1", 2.0, EtcdOptions(user="u", ca="/ca.pem"))
    assert ClusterSpec.from_dict(spec.to_dict()) == spec


def test_a_node_of_the_same_cluster_is_recognised_by_any_spelling():
    from actorcore._driver import _same_cluster

    assert _same_cluster("etcd://127.0.0.1:5/x", "etcd://localhost:5/x")
    assert _same_cluster("etcd://127.0.0.1:5,10.0.0.1:7/x", "etcd://10.0.0.1:7/x")
    assert not _same_cluster("etcd://127.0.0.1:5/x", "etcd://127.0.0.1:5/y")
    assert not _same_cluster("etcd://127.0.0.1:5/x", "etcd://127.0.0.1:6/x")
    assert not _same_cluster(None, "etcd://127.0.0.1:5/x")
