"""Named and detached actors across the nodes of a cluster (issue 8 item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import actorcore as ac
from actorcore.testing import Cluster, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(150)]


@pytest.fixture(scope="module")
def cluster():
    with Cluster(num_nodes=2, ttl_s=3.0) as c:
        yield c


def _on_node(cluster: Cluster, i: int, code: str) -> subprocess.CompletedProcess[str]:
    """Run a driver attached to node ``i`` of ``cluster``."""
    env = {**os.environ, "ACTORCORE_ATTACH_NODE": cluster.nodes[i].node_id}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


CREATE = """
    import actorcore as ac
    ac.init(address=ADDRESS)

    @ac.remote
    class Where:
        def __init__(self):
            self.calls = 0
        def node(self):
            self.calls += 1
            return ac.get_runtime_context().get_node_id()
        def count(self):
            return self.calls

    h = Where.options(name="shared", namespace="x", lifetime="detached").remote()
    print(ac.get(h.node.remote(), timeout=60))
    ac.shutdown()
"""


def test_named_detached_actor_is_found_and_called_from_another_node(cluster):
    out = _on_node(cluster, 0, CREATE.replace("ADDRESS", repr(cluster.address)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == cluster.nodes[0].node_id
    # its creator exited: the detached actor lives on; a driver on node 1 finds it
    ac.init(address=cluster.address, attach_node=cluster.nodes[1].node_id)
    try:
        assert ac.get_runtime_context().get_node_id() == cluster.nodes[1].node_id
        h = ac.get_actor("shared", namespace="x")
        assert ac.get(h.node.remote(), timeout=60) == cluster.nodes[0].node_id
        assert ac.get(h.count.remote(), timeout=60) == 2

        # the name is taken once across the cluster
        @ac.remote
        class Other:
            def ping(self) -> int:
                return 1

        with pytest.raises(ValueError, match="already taken"):
            Other.options(name="shared", namespace="x").remote()
        # kill from node 1 reaches node 0
        ac.kill(h)

        def gone() -> bool:
            try:
                ac.get_actor("shared", namespace="x")
            except ValueError:
                return True
            return False

        wait_for(gone, 30, what="the killed actor's name released")
    finally:
        ac.shutdown()


def test_name_claimed_at_once_on_two_nodes_goes_to_one(cluster):
    code = """
        import actorcore as ac
        ac.init(address=ADDRESS)

        @ac.remote
        class A:
            def node(self):
                return ac.get_runtime_context().get_node_id()

        try:
            h = A.options(name="race", lifetime="detached").remote()
            print("won", ac.get(h.node.remote(), timeout=60))
        except ValueError as e:
            print("lost", e)
        ac.shutdown()
    """.replace("ADDRESS", repr(cluster.address))
    procs = []
    for i in (0, 1):
        env = {**os.environ, "ACTORCORE_ATTACH_NODE": cluster.nodes[i].node_id}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(code)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        results.append(out.strip().splitlines()[-1])
    assert sorted(r.split()[0] for r in results) == ["lost", "won"], results
    ac.init(address=cluster.address)
    try:
        ac.kill(ac.get_actor("race"))
    finally:
        ac.shutdown()


def test_an_actor_whose_node_died_is_reported_dead(cluster):
    extra = cluster.add_node(num_cpus=1)
    code = CREATE.replace("ADDRESS", repr(cluster.address)).replace('"shared"', '"doomed"')
    out = _on_node(cluster, cluster.nodes.index(extra), code)
    assert out.returncode == 0, out.stderr
    ac.init(address=cluster.address, attach_node=cluster.nodes[1].node_id)
    try:
        h = ac.get_actor("doomed", namespace="x")
        assert ac.get(h.node.remote(), timeout=60) == extra.node_id
        cluster.stop_node(extra, kill=True)

        def dead() -> bool:
            return any(r["NodeID"] == extra.node_id and not r["Alive"] for r in ac.nodes())

        wait_for(dead, 3.0 + 10.0, what="the killed node seen dead")
        with pytest.raises(ValueError):
            ac.get_actor("doomed", namespace="x")
        with pytest.raises(ac.errors.ActorDiedError):
            ac.get(h.node.remote(), timeout=60)
    finally:
        ac.shutdown()
