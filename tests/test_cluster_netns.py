"""Three nodes on three network "hosts" (namespaces on a test bridge), etcd in the
root namespace: nothing may assume loopback or one address per machine (issue 8
item 8). Needs root and ``ip``; CI has both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from actorcore.gcs import EtcdProcess

from actorcore.testing import Cluster, NetnsHosts, netns_unavailable

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]


def test_three_nodes_in_three_namespaces_see_each_other():
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    with NetnsHosts(count=3) as hosts:
        with EtcdProcess(namespace="unused", extra_hosts=(hosts.bridge_ip,)) as etcd:
            cluster = Cluster(num_nodes=0, etcd=etcd, etcd_host=hosts.bridge_ip, ttl_s=3.0)
            cluster.start()
            try:
                for i in range(3):
                    cluster.add_node(
                        num_cpus=1, node_ip=hosts.ip_of(i), wrap=hosts.wrap(i), wait=False
                    )
                cluster.wait_registered(60)
                rows = _nodes_seen_from(hosts, 0, cluster.address)
            finally:
                cluster.shutdown()
    assert sorted(r["NodeManagerAddress"] for r in rows) == [hosts.ip_of(i) for i in range(3)]
    assert all(r["Alive"] for r in rows)
    assert {r["NodeID"] for r in rows} == {n.node_id for n in cluster.nodes}


def _nodes_seen_from(hosts: NetnsHosts, i: int, address: str) -> list[dict]:
    """``ac.nodes()`` of a driver running in host ``i`` (it attaches to that host's node)."""
    code = textwrap.dedent(
        """
        import json, actorcore as ac
        ac.init(address=ADDRESS)
        print(json.dumps([ac.get_runtime_context().get_node_id(), ac.nodes()]))
        ac.shutdown()
        """.replace("ADDRESS", repr(address))
    )
    out = subprocess.run(
        [*hosts.wrap(i), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    attached, rows = json.loads(out.stdout.strip().splitlines()[-1])
    mine = [r for r in rows if r["NodeID"] == attached]
    assert mine and mine[0]["NodeManagerAddress"] == hosts.ip_of(i)
    return rows
