"""The global placer across real nodes (issue 9): infeasible work waits for a node
that fits; the placer's node dies (SIGKILL) while work is being spilled, another
node takes the placer over, nothing is lost and each task runs once."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import Cluster, wait_for
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]


def _placer(node) -> dict:
    return node.ask(P.ClusterInfoMsg(next_rid(), "placer"))


@ac.remote
def where() -> str:
    return ac.get_runtime_context().get_node_id()


def test_infeasible_work_warns_once_and_runs_when_a_fitting_node_joins(capfd):
    with Cluster(num_nodes=1, ttl_s=3.0) as c:
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            refs = [where.options(resources={"tpu": 1}).remote() for _ in range(3)]
            wait_for(lambda: "tpu" in capfd.readouterr().err, 30, what="the warning")
            ready, _ = ac.wait(refs, timeout=0.5)
            assert ready == []
            tpu = c.add_node(num_cpus=1, resources={"tpu": 1})
            assert set(ac.get(refs, timeout=60)) == {tpu.node_id}
            err = capfd.readouterr().err
            assert "cannot run on any node" not in err  # one warning for the shape
        finally:
            ac.shutdown()


@ac.remote(max_retries=0)
def record(i: int, path: str) -> str:
    time.sleep(0.2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    return ac.get_runtime_context().get_node_id()


def test_placer_failover_loses_nothing_and_runs_each_task_once(tmp_path):
    with Cluster(num_nodes=0, ttl_s=2.0) as c:
        p = c.add_node(num_cpus=1)  # first: it holds the placer; runs none of the work
        a = c.add_node(num_cpus=1, resources={"work": 1})
        b = c.add_node(num_cpus=2, resources={"work": 2})
        wait_for(lambda: _placer(a)["node_id"] == p.node_id, 30, what="P holds the placer")
        ac.init(address=c.address, attach_node=a.node_id)
        try:
            for n in (a, b):  # workers up on both (a node just started may still fork them)
                pin = NodeAffinitySchedulingStrategy(n.node_id)
                assert ac.get(where.options(scheduling_strategy=pin).remote(), timeout=60)
            path = str(tmp_path / "ran.txt")
            refs = [record.options(resources={"work": 1}).remote(i, path) for i in range(30)]
            done, _ = ac.wait(refs, num_returns=4, timeout=60)
            assert b.node_id in ac.get(done)  # work is flowing, spilled through P to B
            c.stop_node(p, kill=True)
            nodes = ac.get(refs, timeout=120)
            assert set(nodes) <= {a.node_id, b.node_id}
            ran = Counter(open(path).read().split())
            assert ran == Counter(str(i) for i in range(30))  # each exactly once
            wait_for(lambda: _placer(a)["node_id"] in (a.node_id, b.node_id), 30)
            late = record.options(resources={"work": 1}).remote(99, path)  # placed anew
            assert ac.get(late, timeout=60) in (a.node_id, b.node_id)
        finally:
            ac.shutdown()
