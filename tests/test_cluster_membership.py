"""Cluster membership on one machine: nodes join through a real etcd, watch each
other, and drivers attach to them (issue 8 items 1-3)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import msgpack
import pytest
from actorcore.gcs import EtcdControlStore, EtcdProcess

import actorcore as ac
from actorcore import _protocol as P
from actorcore._driver import local_nodes
from actorcore._rpc import next_rid
from actorcore.testing import Cluster, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def etcd():
    with EtcdProcess(namespace="unused") as server:
        yield server


@pytest.fixture(scope="module")
def cluster(etcd):
    """Two nodes (1 CPU each, one with a custom resource) shared by the module."""
    c = Cluster(num_nodes=0, etcd=etcd, ttl_s=3.0)
    c.start()
    try:
        c.add_node(num_cpus=1, wait=False)
        c.add_node(num_cpus=1, resources={"disk": 2}, wait=False)
        c.wait_registered()
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def driver(cluster):
    ac.init(address=cluster.address)
    try:
        yield ac
    finally:
        ac.shutdown()


def _run_driver(code: str, timeout: float = 90.0, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def test_nodes_and_resources_from_a_driver(cluster, driver):
    rows = ac.nodes()
    ids = {n.node_id for n in cluster.nodes}
    assert {r["NodeID"] for r in rows} == ids
    for r in rows:
        assert r["Alive"] is True
        assert r["NodeManagerAddress"] == "127.0.0.1"
        assert r["NodeManagerPort"] > 0 and r["Pid"] > 0
    assert {r["Pid"] for r in rows} == {n.pid for n in cluster.nodes}
    total = ac.cluster_resources()
    assert total["CPU"] == 2.0 and total["disk"] == 2.0
    wait_for(lambda: ac.available_resources().get("CPU") == 2.0, 20, what="both CPUs free")
    assert ac.available_resources()["disk"] == 2.0

    @ac.remote(num_cpus=1)
    def where() -> str:
        return ac.get_runtime_context().get_node_id()

    # the driver attached to the newest node of the cluster on this machine
    assert ac.get(where.remote(), timeout=60) == cluster.nodes[-1].node_id

    # a peer learns of this node's load from its load reports (node to node)
    @ac.remote(num_cpus=1)
    class Busy:
        def ping(self) -> int:
            return 1

    busy = Busy.remote()
    assert ac.get(busy.ping.remote(), timeout=60) == 1
    other = cluster.nodes[0]

    def cpus_seen_by_other() -> float:
        return float(other.ask(P.ClusterInfoMsg(next_rid(), "available"))["CPU"])

    wait_for(lambda: cpus_seen_by_other() == 1.0, 20, what="the busy CPU reported")
    ac.kill(busy)
    wait_for(lambda: cpus_seen_by_other() == 2.0, 20, what="the freed CPU reported")


def test_a_node_joining_and_leaving_is_seen_by_watch(etcd):
    with Cluster(num_nodes=1, etcd=etcd, ttl_s=2.0) as c:
        first = c.nodes[0]
        second = c.add_node(num_cpus=1)  # add_node waits until every node lists it
        third = c.add_node(num_cpus=1)
        c.stop_node(second)  # a clean leave: its key is gone before its process ends
        assert asyncio.run(_registry(c.address))[1] == {first.node_id, third.node_id}

        def status(node_id: str) -> bool | None:
            return {r["NodeID"]: r["Alive"] for r in first.nodes()}.get(node_id)

        wait_for(lambda: status(second.node_id) is False, 10, what="clean leave seen")
        c.stop_node(third, kill=True)  # no goodbye: its lease expires after the TTL
        wait_for(lambda: status(third.node_id) is False, 2.0 + 8.0, what="lease expiry seen")
        rows = {r["NodeID"]: r for r in first.nodes()}
        assert rows[first.node_id]["Alive"] is True
        assert len(rows) == 3  # dead nodes stay listed


def test_cli_start_prints_the_node_and_stop_stops_only_that_cluster(etcd, cluster):
    address = etcd.address_for("cli-test")
    env = {**os.environ, "ACTORCORE_NODE_TTL_S": "3"}
    cmd = [sys.executable, "-m", "actorcore._cli"]
    out = subprocess.run(
        [*cmd, "start", "--address", address, "--num-cpus", "1", "--resources", '{"x": 1}'],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert f"joining cluster {address} ..." in out.stderr and ": done" in out.stderr  # progress
    first = out.stdout.splitlines()[0]
    node_id = first.split()[1]
    pid = int(first.split("pid ")[1].split(",")[0])
    try:
        mine = local_nodes(cluster=address)
        assert [n["node_id"] for n in mine] == [node_id]
        assert mine[0]["pid"] == pid and mine[0]["started_by"] == "cli"
        others = {n["node_id"] for n in local_nodes(cluster=cluster.address)}
        stop = subprocess.run(
            [*cmd, "stop", "--address", address], capture_output=True, text=True, timeout=60
        )
        assert stop.returncode == 0 and "stopped 1 node(s)" in stop.stdout, stop.stderr
        assert f"stopping node {node_id[:12]} (1/1) ..." in stop.stderr  # progress
        assert local_nodes(cluster=address) == []
        # the module's cluster is untouched
        assert {n["node_id"] for n in local_nodes(cluster=cluster.address)} == others
    finally:
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
        wait_for(lambda: not _alive(pid), 20, what="CLI node gone")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_two_drivers_share_the_cluster(cluster):
    code = """
        import json, actorcore as ac
        ac.init(address=ADDRESS)
        @ac.remote(num_cpus=0)
        def f(x):
            return x * 2
        print(json.dumps([ac.get(f.remote(21), timeout=60), len(ac.nodes())]))
        ac.shutdown()
    """.replace("ADDRESS", repr(cluster.address))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == [42, 2]
    # the drivers' exits stopped no node
    assert all(_alive(n.pid) for n in cluster.nodes)
    cluster.wait_registered(10)


async def _registry(address: str) -> tuple[dict[str, dict], set[str]]:
    async with EtcdControlStore(address) as store:
        members, _ = await store.get_prefix(b"/members/")
        live, _ = await store.get_prefix(b"/nodes/")
    decode = {kv.key.split(b"/")[-1].decode(): msgpack.unpackb(kv.value) for kv in members}
    return decode, {kv.key.split(b"/")[-1].decode() for kv in live}


def test_a_driver_without_a_local_node_starts_one_that_leaves_with_it(etcd):
    address = etcd.address_for("driver-node")
    code = """
        import sys, actorcore as ac
        info = ac.init(address=ADDRESS, num_cpus=1)
        print(info.node_id, flush=True)
        sys.stdin.readline()
        ac.shutdown()
    """.replace("ADDRESS", repr(address))
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ACTORCORE_NODE_TTL_S": "30"},
    )
    try:
        assert p.stdout is not None and p.stdin is not None
        node_id = p.stdout.readline().strip()
        assert node_id, p.stderr.read() if p.stderr else ""
        members, live = asyncio.run(_registry(address))
        assert node_id in live
        assert members[node_id]["started_by"] == "driver"
        assert members[node_id]["resources"]["CPU"] == 1.0
        assert local_nodes(cluster=address) == []  # never offered to other drivers
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(60) == 0
        # it left at once (revoked its lease), long before its 30 s TTL
        _, live = asyncio.run(_registry(address))
        assert node_id not in live
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_address_auto_and_local_nodes_ignore_embedded_nodes(cluster):
    code = """
        import sys, actorcore as ac
        info = ac.init(num_cpus=1)
        print(info.node_id, flush=True)
        sys.stdin.readline()
        ac.shutdown()
    """
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None and p.stdin is not None
        embedded = p.stdout.readline().strip()
        assert embedded
        listed = local_nodes()
        assert embedded not in {n["node_id"] for n in listed}
        assert all(n["started_by"] == "cli" for n in listed)
        # address="auto" attaches to an `actorcore start` node, never the embedded one
        ac.init(address="auto")
        try:
            assert ac.get_runtime_context().get_node_id() != embedded
        finally:
            ac.shutdown()
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_wrong_token_is_refused_and_a_given_token_must_match(cluster):
    from actorcore._config import Config
    from actorcore._driver import resolve_token
    from actorcore._ids import new_id
    from actorcore._sync_client import SyncClient
    from actorcore.errors import AuthenticationError

    node = cluster.nodes[0]
    with pytest.raises(AuthenticationError, match="wrong cluster token"):
        SyncClient(
            tuple(node.ready["address"]),
            token=os.urandom(32),
            role="driver",
            my_id=new_id(),
            max_header_bytes=1 << 20,
            max_frame_bytes=1 << 20,
            timeout=10.0,
        )
    assert len(node.nodes()) >= 2  # the node is unharmed
    # the cluster's token is in etcd: later nodes read it; a different one is an error
    assert resolve_token(Config(), cluster.address) == node.token
    with pytest.raises(ValueError, match="does not match"):
        resolve_token(Config(cluster_token="not-the-token"), cluster.address)


def test_cluster_token_is_created_once(etcd):
    from actorcore.gcs import EtcdOptions

    from actorcore._peers import cluster_token

    address = etcd.address_for("token-race")

    async def race() -> set[bytes]:
        got = await asyncio.gather(*(cluster_token(address, EtcdOptions(), None) for _ in range(4)))
        return set(got)

    tokens = asyncio.run(race())
    assert len(tokens) == 1 and len(next(iter(tokens))) == 32


def test_membership_watch_resumes_after_an_etcd_restart():
    with EtcdProcess(namespace="unused") as server:
        with Cluster(num_nodes=1, etcd=server, ttl_s=3.0) as c:
            first = c.nodes[0]
            server.stop()
            server.start()  # same data and port: the node's watch resumes where it was
            second = c.add_node(num_cpus=1)  # waits until the first node lists it
            c.stop_node(second)
            wait_for(
                lambda: [r["Alive"] for r in first.nodes()] == [True, False],
                15,
                what="the leave after the restart seen",
            )


def test_a_given_token_becomes_the_clusters(etcd):
    from actorcore._config import Config
    from actorcore._driver import resolve_token

    address = etcd.address_for("given-token")
    assert resolve_token(Config(cluster_token="s3cret"), address) == b"s3cret"
    assert resolve_token(Config(), address) == b"s3cret"  # later nodes read it from etcd


async def _enable_etcd_auth(url: str, password: str) -> None:
    import grpc
    from aetcd import rpc

    async with grpc.aio.insecure_channel(url) as channel:
        auth = rpc.AuthStub(channel)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password))
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        await auth.AuthEnable(rpc.AuthEnableRequest())


def test_nodes_log_in_to_an_etcd_with_auth():
    from actorcore.gcs import ControlStoreError

    from actorcore._config import Config
    from actorcore._driver import resolve_token

    with EtcdProcess(namespace="unused") as server:
        asyncio.run(_enable_etcd_auth(server.client_url.removeprefix("http://"), "pw"))
        c = Cluster(num_nodes=0, etcd=server, ttl_s=3.0)
        c.start()
        try:
            with pytest.raises(ControlStoreError, match="needs a user and password"):
                resolve_token(Config(), c.address)
            with pytest.raises(ControlStoreError, match="refused user"):
                resolve_token(Config(etcd_user="root", etcd_password="wrong"), c.address)
            node = c.add_node(num_cpus=1, etcd_user="root", etcd_password="pw")
            assert [r["NodeID"] for r in node.nodes()] == [node.node_id]
        finally:
            c.shutdown()


def test_several_etcd_endpoints_fail_over(etcd):
    from actorcore.gcs._etcd_process import _free_port

    from actorcore._config import Config
    from actorcore._driver import resolve_token

    dead = _free_port()
    address = f"etcd://127.0.0.1:{dead},127.0.0.1:{etcd.port}/failover"
    assert len(resolve_token(Config(), address)) == 32


def test_a_node_whose_registration_is_lost_fences_and_rejoins_as_a_new_node(etcd):
    with Cluster(num_nodes=1, etcd=etcd, ttl_s=3.0) as c:
        key = b"/nodes/" + c.nodes[0].node_id.encode()

        async def lease() -> int:
            async with EtcdControlStore(c.address) as store:
                kv = await store.get(key)
                return 0 if kv is None else kv.lease

        async def revoke(lease_id: int) -> None:
            async with EtcdControlStore(c.address) as store:
                await store.revoke_lease(lease_id)

        old = asyncio.run(lease())
        assert old
        asyncio.run(revoke(old))  # as if etcd had expired it
        old_id = c.wait_reborn(c.nodes[0], 30)  # same process, a new node id
        assert old_id != c.nodes[0].node_id
        rows = {r["NodeID"]: r["Alive"] for r in c.nodes[0].nodes()}
        assert rows == {old_id: False, c.nodes[0].node_id: True}
