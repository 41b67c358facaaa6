"""Set-up and small checks shared by the cluster tests (not a test module).

``attached_cluster`` starts the nodes and attaches this process's driver to the
first one; ``netns_cluster`` puts each node on a network namespace host of its
own; ``run_driver`` runs a driver script in a subprocess on a chosen node.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psutil
import pytest
from actorcore.gcs import EtcdProcess

import actorcore as ac
from actorcore.testing import Cluster, NetnsHosts, netns_unavailable

# A (the driver's node, no `w`), B and C (`w: 2` each): the node death tests' cluster
ABC = ({}, {"w": 2}, {"w": 2})
ABC_TTL = 2.0

# the longest tests, close to others (a netns partition, a three-member etcd): they
# run with ACTORCORE_TEST_LONG=1
long_test = pytest.mark.skipif(
    os.environ.get("ACTORCORE_TEST_LONG") != "1", reason="long probe: ACTORCORE_TEST_LONG=1"
)


@contextmanager
def attached_cluster(
    *resources: Mapping[str, float], ttl_s: float, num_cpus: int = 2, **cluster: Any
) -> Iterator[Cluster]:
    """A cluster of one node per ``resources`` (``num_cpus`` each; ``cluster``: more
    arguments of :class:`Cluster`), this process's driver attached to the first;
    shut down and stopped whatever happens."""
    with Cluster(num_nodes=0, ttl_s=ttl_s, **cluster) as c:
        for res in resources:
            c.add_node(num_cpus=num_cpus, resources=dict(res), wait=False)
        c.wait_registered()
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            yield c
        finally:
            ac.shutdown()


@contextmanager
def netns_cluster(
    *resources: Mapping[str, float], ttl_s: float, num_cpus: int = 1
) -> Iterator[tuple[Cluster, NetnsHosts]]:
    """One node per ``resources`` on a netns host of its own, etcd on the test
    bridge (skipped where netns is unavailable: it needs root and ``ip``). On exit
    every host's link is up again (so the nodes can be stopped), and all stops."""
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    with NetnsHosts(count=len(resources)) as hosts:
        with EtcdProcess(namespace="unused", extra_hosts=(hosts.bridge_ip,)) as etcd:
            c = Cluster(num_nodes=0, etcd=etcd, etcd_host=hosts.bridge_ip, ttl_s=ttl_s)
            c.start()
            try:
                for i, res in enumerate(resources):
                    c.add_node(
                        num_cpus=num_cpus,
                        resources=dict(res),
                        node_ip=hosts.ip_of(i),
                        wrap=hosts.wrap(i),
                        wait=False,
                    )
                c.wait_registered(60)
                yield c, hosts
            finally:
                try:
                    for i in range(len(resources)):
                        hosts.set_link(i, True)
                finally:
                    c.shutdown()


def run_driver(code: str, node_id: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) as a driver attached to node ``node_id``."""
    env = {**os.environ, "ACTORCORE_ATTACH_NODE": node_id}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def here() -> str:
    """The id of the node this code runs on."""
    return ac.get_runtime_context().get_node_id()


def node_of(c: Cluster, node_id: str):
    return next(n for n in c.nodes if n.node_id == node_id)


def alive_in(rows, node_id: str) -> bool | None:
    """Whether ``rows`` (``ac.nodes()``) say ``node_id`` is alive (None: not listed)."""
    for r in rows:
        if r["NodeID"] == node_id:
            return bool(r["Alive"])
    return None


def dead_everywhere(c: Cluster, node_id: str) -> bool:
    """The driver and every live node list ``node_id`` as dead."""
    if alive_in(ac.nodes(), node_id) is not False:
        return False
    return all(alive_in(n.nodes(), node_id) is False for n in c.live())


def gone(pid: int) -> bool:
    """The process ``pid`` has ended (a zombie counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
