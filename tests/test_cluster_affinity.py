"""Hard node affinity in a cluster: the node state learns the other nodes from the
cluster registry, so affinity to another live node is accepted (the work goes to
that node: issue 8's cross-node work) while a node id that no node has is refused
at once."""

from __future__ import annotations

import pytest
from cluster_helpers import run_driver

from actorcore.testing import Cluster

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(150)]

CODE = """
    import actorcore as ac
    from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy as A
    from actorcore.testing import wait_for
    ac.init(address=ADDRESS)
    wait_for(lambda: sum(n["Alive"] for n in ac.nodes()) == 2, timeout=60)

    @ac.remote
    def f():
        return 1

    print("here", ac.get(f.options(scheduling_strategy=A(HERE)).remote(), timeout=60))
    @ac.remote
    def where():
        return ac.get_runtime_context().get_node_id()

    there = ac.get(where.options(scheduling_strategy=A(OTHER)).remote(), timeout=60)
    print("other", "ran there" if there == OTHER else "ran at " + there)
    try:
        ac.get(f.options(scheduling_strategy=A("ff" * 16)).remote(), timeout=30)
        print("nowhere ran")
    except Exception as e:
        print("nowhere", "refused" if "not a node of this cluster" in str(e) else repr(e))
    ac.shutdown()
"""


def test_hard_affinity_knows_the_clusters_nodes():
    with Cluster(num_nodes=2, ttl_s=3.0) as cluster:
        here, other = (n.node_id for n in cluster.nodes)
        code = (
            CODE.replace("ADDRESS", repr(cluster.address))
            .replace("HERE", repr(here))
            .replace("OTHER", repr(other))
        )
        out = run_driver(code, here)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[-3:] == ["here 1", "other ran there", "nowhere refused"], out.stdout
