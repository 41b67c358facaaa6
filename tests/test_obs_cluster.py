"""Observability across a cluster (issue 11): one cluster of two nodes for the module.

Node A (index 0, the first: it serves the dashboard) and node B (index 1,
resource ``onb``). The driver attaches to A; work is pinned to B so that
what B knows must travel: state queries fan out, metrics are B's own, B's
worker output streams to the driver, the timeline has B's workers.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
import warnings

import pytest

import actorcore as ac
from actorcore.testing import Cluster, wait_for
from actorcore.util import state
from actorcore.util.metrics import Counter

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster():
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        c.add_node(num_cpus=1)
        c.add_node(num_cpus=1, resources={"onb": 4})
        info = ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        c.info = info
        try:
            yield c
        finally:
            ac.shutdown()


@ac.remote(resources={"onb": 1})
def on_b(x):
    print(f"b-says-{x}", flush=True)
    Counter("obs_cluster_b_calls", description="calls on B").inc()
    return ac.get_runtime_context().get_node_id()


@ac.remote(resources={"onb": 1})
def fails_on_b():
    raise ValueError("broken on purpose on B")


@ac.remote(resources={"onb": 1})
class OnB:
    def hello(self):
        print("actor-on-b-hello", flush=True)
        return os.getpid()


def _http(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _b(c):
    return c.nodes[1].node_id


def test_state_api_and_cli_fan_out_to_every_node(cluster, capsys):
    b = _b(cluster)
    assert ac.get(on_b.remote(1)) == b
    with pytest.raises(ValueError):
        ac.get(fails_on_b.remote())
    actor = OnB.options(name="obs-on-b").remote()
    ac.get(actor.hello.remote())

    nodes = state.list_nodes()
    assert {n["node_id"] for n in nodes} == {n.node_id for n in cluster.nodes}
    assert all(n["state"] == "ALIVE" and n["metrics_export_port"] for n in nodes)

    [row] = [a for a in state.list_actors() if a["name"] == "obs-on-b"]
    assert row["node_id"] == b and row["state"] == "ALIVE" and row["class_name"] == "OnB"
    assert state.get_actor(actor.id.hex())["node_id"] == b

    def b_tasks():
        rows = state.list_tasks(filters={"node_id": b}, limit=0)
        names = {(r["name"].rsplit(".", 1)[-1], r["state"]) for r in rows}
        return rows if {("on_b", "FINISHED"), ("fails_on_b", "FAILED")} <= names else None

    rows = wait_for(b_tasks, 20, interval=0.1, what="B's tasks in the cluster's history")
    failed = next(r for r in rows if r["state"] == "FAILED")
    assert "broken on purpose on B" in failed["error_message"]
    assert state.get_task(failed["task_id"])["node_id"] == b
    s = state.summarize_tasks()
    assert any(n.endswith("fails_on_b") and c.get("FAILED") for n, c in s["by_name"].items())

    # the CLI, given the cluster's address (a node found through etcd)
    from actorcore._cli import main

    capsys.readouterr()  # (worker output so far)
    assert main(["list", "actors", "--address", cluster.address, "--format", "json"]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("[") :])
    assert any(a["actor_id"] == actor.id.hex() and a["node_id"] == b for a in listed)
    assert main(["list", "tasks", "--address", cluster.address, "--filter", "state=FAILED"]) == 0
    assert "fails_on_b" in capsys.readouterr().out
    assert main(["get", "node", b[:10], "--address", cluster.address]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["node_id"] == b
    assert main(["summary", "actors", "--address", cluster.address]) == 0
    assert "OnB" in capsys.readouterr().out


def test_metrics_on_every_node_with_user_metrics_where_they_ran(cluster):
    ac.get([on_b.remote(i) for i in range(3)])
    remote_actor = OnB.remote()
    ac.get([remote_actor.hello.remote() for _ in range(3)])
    entries = {n["NodeID"]: n for n in ac.nodes()}
    for node in cluster.nodes:
        assert entries[node.node_id]["MetricsExportPort"] > 0
    b = entries[_b(cluster)]
    url = f"http://{b['NodeManagerAddress']}:{b['MetricsExportPort']}/metrics"

    def scraped():
        status, text = _http(url)
        return text if status == 200 and "obs_cluster_b_calls_total" in text else None

    text = wait_for(scraped, 20, interval=0.2, what="B's /metrics with the user counter")
    for family in (
        "actorcore_object_bytes_pulled_total",
        "actorcore_object_bytes_pushed_total",
        "actorcore_object_store_spills_total",
        "actorcore_scheduler_queue_length",
        "actorcore_tasks_finished_total",
    ):
        assert family in text, family
    assert f'node_id="{_b(cluster)}"' in text
    a = entries[cluster.nodes[0].node_id]
    _, text_a = _http(f"http://{a['NodeManagerAddress']}:{a['MetricsExportPort']}/metrics")
    assert "obs_cluster_b_calls_total" not in text_a  # exported by the node it ran on

    def a_pending():  # the owner's node does not count B's finished tasks/calls as pending
        _, text = _http(f"http://{a['NodeManagerAddress']}:{a['MetricsExportPort']}/metrics")
        return [
            ln
            for ln in text.splitlines()
            if ln.startswith("actorcore_tasks{")
            and ("PENDING_NODE_ASSIGNMENT" in ln or "SUBMITTED_TO_WORKER" in ln)
            and not ln.endswith(" 0.0")
        ]

    wait_for(lambda: not a_pending(), 20, interval=0.2, what="no phantom pending tasks on A")


def test_remote_worker_output_streams_to_the_driver_and_to_logs(cluster, capfd):
    marker = f"{os.getpid()}-{time.time_ns()}"
    ac.get(on_b.remote(marker))
    b = _b(cluster)
    seen = ""

    def printed():
        nonlocal seen
        seen += capfd.readouterr().out
        return f"b-says-{marker}" in seen

    wait_for(printed, 20, interval=0.1, what="B's worker output at the driver")
    line = next(ln for ln in seen.splitlines() if f"b-says-{marker}" in ln)
    assert line.startswith("(") and "on_b pid=" in line and f"node={b[:8]}" in line

    from actorcore._cli import main

    def logged():
        main(["logs", "--node", b[:8], "--address", cluster.address, "--tail", "1000"])
        return f"b-says-{marker}" in capfd.readouterr().out

    wait_for(logged, 20, interval=0.2, what="actorcore logs --node B")
    actor = OnB.options(name="obs-logs-b").remote()
    ac.get(actor.hello.remote())

    def actor_logged():
        main(["logs", "--actor", "obs-logs-b", "--address", cluster.address])
        return "actor-on-b-hello" in capfd.readouterr().out

    wait_for(actor_logged, 20, interval=0.2, what="actorcore logs --actor on B")
    ac.kill(actor)


def _forwarded(node_entry):
    """A node's ``actorcore_log_batches_forwarded_total`` (its /metrics)."""
    url = f"http://{node_entry['NodeManagerAddress']}:{node_entry['MetricsExportPort']}/metrics"
    status, text = _http(url)
    assert status == 200
    for ln in text.splitlines():
        if ln.startswith("actorcore_log_batches_forwarded_total"):
            return float(ln.split()[-1])
    raise AssertionError("no actorcore_log_batches_forwarded_total in /metrics")


_B_DRIVER = """
import sys, actorcore as ac
ac.init(address=sys.argv[1], attach_node=sys.argv[2])
print("b-driver-ready", flush=True)
sys.stdin.readline()  # until the test is done with it
ac.shutdown()
"""


def test_output_goes_only_to_nodes_with_drivers(cluster, capfd):
    """A's workers' output is not sent to B while B has no driver; a driver
    attached to B gets it; once it leaves, A stops sending again."""
    import subprocess
    import sys

    from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    a_id = cluster.nodes[0].node_id
    entries = {n["NodeID"]: n for n in ac.nodes()}
    a = entries[a_id]

    @ac.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(a_id, soft=False))
    def on_a(x):
        print(f"a-says-{x}", flush=True)
        return ac.get_runtime_context().get_node_id()

    seen = ""

    def printed_here(marker):
        nonlocal seen
        seen += capfd.readouterr().out
        return f"a-says-{marker}" in seen

    def quiet_round(tag):  # a line printed on A reaches this driver; A sent nothing to B
        before = _forwarded(a)
        marker = f"{tag}-{time.time_ns()}"
        assert ac.get(on_a.remote(marker)) == a_id
        wait_for(lambda: printed_here(marker), 20, interval=0.05, what="A's output here")
        return _forwarded(a) == before

    wait_for(lambda: quiet_round("alone"), 30, interval=0.1, what="A sends B nothing")

    proc = subprocess.Popen(
        [sys.executable, "-c", _B_DRIVER, cluster.address, _b(cluster)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "b-driver-ready"
        marker = f"to-b-{time.time_ns()}"
        ac.get(on_a.remote(marker))
        for line in proc.stdout:  # bounded by the test's timeout
            if f"a-says-{marker}" in line:
                assert f"node={a_id[:8]}" in line
                break
        assert _forwarded(a) >= 1
    finally:
        proc.stdin.close()
        proc.wait(30)
    wait_for(lambda: quiet_round("left"), 30, interval=0.1, what="A stops sending to B")


def test_timeline_has_workers_of_every_node(cluster, tmp_path):
    ac.get(on_b.remote("t"))

    @ac.remote(num_cpus=1)
    def on_any():
        return ac.get_runtime_context().get_node_id()

    ac.get([on_any.remote() for _ in range(4)])
    a = cluster.nodes[0].node_id
    path = tmp_path / "trace.json"

    def both():
        ac.timeline(str(path))
        events = json.loads(path.read_text())
        rows = {e["pid"] for e in events if e["ph"] == "X"}
        return events if {f"node {a[:8]}", f"node {_b(cluster)[:8]}"} <= rows else None

    events = wait_for(both, 20, interval=0.2, what="tasks of both nodes in the timeline")
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert all(n.startswith("worker ") for n in names)


def test_dashboard_served_once_for_the_cluster_and_published(cluster, capsys):
    info = cluster.info
    assert info.dashboard_url and info.dashboard_token
    serving = [n for n in state.list_nodes() if n.get("dashboard_url")]
    assert [n["dashboard_url"] for n in serving] == [info.dashboard_url]  # one node serves it
    status, _ = _http(info.dashboard_url + "/api/nodes")
    assert status == 401
    status, body = _http(
        info.dashboard_url + "/api/actors",
        {"Authorization": f"Bearer {info.dashboard_token}"},
    )
    assert status == 200
    assert any(r["node_id"] == _b(cluster) for r in json.loads(body))

    from actorcore._cli import main

    assert main(["status", "--address", cluster.address]) == 0
    out = capsys.readouterr().out
    assert info.dashboard_url in out and _b(cluster)[:12] in out


def test_a_stuck_node_is_reported_not_waited_for(cluster, capsys):
    ttl, cluster.ttl_s = cluster.ttl_s, 60.0  # its lease outlives the test: live but silent
    try:
        c = cluster.add_node(num_cpus=1)
    finally:
        cluster.ttl_s = ttl
    os.kill(c.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nodes = {n["node_id"]: n for n in state.list_nodes()}
        took = time.monotonic() - t0
        assert took < 15, took
        assert nodes[c.node_id]["state"] == "UNREACHABLE"
        assert "TimeoutError" in nodes[c.node_id]["error"]
        assert all(nodes[n.node_id]["state"] == "ALIVE" for n in cluster.nodes[:2])
        assert any(c.node_id[:12] in str(w.message) for w in caught)  # named as silent

        from actorcore._cli import main

        capsys.readouterr()
        t0 = time.monotonic()
        args = ["list", "nodes", "--address", cluster.address, "--timeout", "1", "--format", "json"]
        assert main(args) == 0
        assert time.monotonic() - t0 < 4.5  # 1 s for the silent node, not the default 5 s
        out, err = capsys.readouterr()
        rows = {r["node_id"]: r for r in json.loads(out[out.index("[") :])}
        assert rows[c.node_id]["state"] == "UNREACHABLE"
        assert f"actorcore: warning: list nodes: 1 node(s) did not answer: {c.node_id[:12]}" in err
    finally:
        os.kill(c.pid, signal.SIGCONT)
        cluster.stop_node(c)


def test_dashboard_moves_when_its_node_leaves():
    from actorcore import _protocol as P
    from actorcore._rpc import next_rid

    def where(node):
        [d] = node.ask(P.StateQueryMsg(next_rid(), "dashboard", [], 0, {}))
        return d if d.get("dashboard_url") else None

    def placer(node):
        """The node holding the global placer (None: this cluster elects none)."""
        try:
            return node.ask(P.ClusterInfoMsg(next_rid(), "placer"))["node_id"] or ""
        except ValueError:  # "unknown cluster information": no placer election here
            return None

    with Cluster(num_nodes=2, ttl_s=3.0) as c:
        first = wait_for(lambda: where(c.nodes[1]), 20, what="a dashboard published")
        [holder_id] = wait_for(lambda: (p := placer(c.nodes[1])) != "" and [p], 20)
        if holder_id is not None:  # the placer's node serves it
            assert first["node_id"] == holder_id
        holder = next(n for n in c.nodes if n.node_id == first["node_id"])
        other = next(n for n in c.nodes if n is not holder)
        status, _ = _http(first["dashboard_url"] + "/api/nodes")
        assert status == 401
        c.stop_node(holder)  # a clean leave: its key goes with its lease at once

        def moved():
            d = where(other)
            return d if d and d["node_id"] == other.node_id else None

        d = wait_for(moved, 30, interval=0.2, what="the dashboard served by the other node")
        status, body = _http(
            d["dashboard_url"] + "/api/nodes", {"Authorization": f"Bearer {d['dashboard_token']}"}
        )
        assert status == 200 and other.node_id in body


def test_cli_dashboard_for_a_cluster_address_serves_every_node(cluster):
    import subprocess
    import sys

    actor = OnB.options(name="seen-by-cli-dashboard").remote()
    ac.get(actor.hello.remote())
    cmd = [sys.executable, "-m", "actorcore._cli", "dashboard", "--address", cluster.address]
    proc = subprocess.Popen(
        [*cmd, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "dashboard: URL (log in with TOKEN)"
        assert line.startswith("dashboard: http://"), line + proc.stderr.read()
        url, token = line.split()[1], line.rsplit(" ", 1)[1].rstrip(")\n")
        assert _http(url + "/api/actors")[0] == 401

        def listed():
            status, body = _http(url + "/api/actors", {"Authorization": f"Bearer {token}"})
            return status == 200 and "seen-by-cli-dashboard" in body and _b(cluster) in body

        wait_for(listed, 30, interval=0.2, what="the CLI's dashboard lists B's actor")
    finally:
        proc.terminate()
        proc.wait(15)
        ac.kill(actor)


def test_cli_logs_follow_streams_lines_from_another_node(cluster):
    import subprocess
    import sys

    marker = f"follow-{time.time_ns()}"
    ac.get(on_b.remote(marker + "-before"))
    wait_for(
        lambda: any(f"{marker}-before" in r["line"] for r in state.list_logs()),
        20,
        interval=0.1,
        what="the first line logged on B",
    )
    cmd = [sys.executable, "-m", "actorcore._cli", "logs", "--follow", "--address"]
    proc = subprocess.Popen(
        [*cmd, cluster.address, "--node", _b(cluster)[:8], "--tail", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:  # the tail: the last lines printed (B's last among them)
            if f"b-says-{marker}-before" in line:
                break
        ac.get(on_b.remote(marker))  # printed after the follower's first read: followed
        for line in proc.stdout:  # bounded by the test's timeout
            if f"b-says-{marker}" in line:
                assert "on_b pid=" in line and "-before" not in line
                break
    finally:
        proc.terminate()
        proc.wait(15)


def test_actors_of_a_dead_node_are_listed_dead(cluster):
    c = cluster.add_node(num_cpus=1, resources={"onc": 1})

    @ac.remote(resources={"onc": 1})
    class OnC:
        def pid(self):
            return os.getpid()

    actor = OnC.options(name="lost-with-c").remote()
    ac.get(actor.pid.remote())
    assert state.get_actor(actor.id.hex())["node_id"] == c.node_id
    cluster.stop_node(c, kill=True)  # no goodbye: seen dead after the TTL

    def listed_dead():
        rows = [a for a in state.list_actors(filters={"name": "lost-with-c"})]
        return rows if rows and rows[0]["state"] == "DEAD" else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (C is silent until its lease expires)
        [row] = wait_for(listed_dead, 30, interval=0.2, what="C's actor listed DEAD")
    assert row["node_id"] == c.node_id and c.node_id in row["death_cause"]
    assert state.get_actor(actor.id.hex())["state"] == "DEAD"
