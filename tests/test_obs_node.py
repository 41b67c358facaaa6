"""Observability on one real node: state API, /metrics, dashboard auth, CLI, titles."""

import io
import json
import os
import urllib.error
import urllib.request

import psutil
import pytest

from actorcore import _global as G
from actorcore.testing import wait_for


def _node_file() -> dict:
    rt = G.require()
    return {**rt.node.raw, "node_id": rt.node.node_id.hex(), "token": rt.token.hex()}


def _http(url, headers=None, data=None):
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _tasks_named(state, name, n):
    rows = [r for r in state.list_tasks(limit=0) if r["name"].split(".<locals>.")[-1] == name]
    done = [r for r in rows if r["state"] in ("FINISHED", "FAILED")]
    return rows if len(done) >= n else None


@pytest.mark.timeout(90)
def test_state_api_shows_tasks_actors_failures_and_nodes(fresh_runtime):
    info = fresh_runtime()
    import actorcore as ac
    from actorcore.util import state

    @ac.remote
    def square(x):
        return x * x

    @ac.remote
    def explode():
        raise ValueError("boom in explode")

    @ac.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return os.getpid()

    assert ac.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
    c = Counter.options(name="obs-counter").remote()
    pid = ac.get(c.incr.remote())
    with pytest.raises(ValueError):
        ac.get(explode.remote())

    rows = wait_for(lambda: _tasks_named(state, "square", 3), 20, what="square tasks")
    assert {r["state"] for r in rows} == {"FINISHED"}
    assert all(r["node_id"] == info.node_id and r["worker_pid"] for r in rows)
    failed = wait_for(lambda: _tasks_named(state, "explode", 1), 20)[0]
    assert failed["state"] == "FAILED" and "boom in explode" in failed["error_message"]
    call = wait_for(lambda: _tasks_named(state, "Counter.incr", 1), 20)[0]
    assert call["type"] == "ACTOR_TASK" and call["actor_id"] == c.id.hex()

    def owner_event_in():  # the owner's batch may come after the worker's
        detail = state.get_task(rows[0]["task_id"])
        states = [e["state"] for e in detail["events"]]
        return states if states[0].startswith("PENDING") else None

    states = wait_for(owner_event_in, 20, what="the owner's pending event")
    assert states[-2:] == ["RUNNING", "FINISHED"]

    actors = state.list_actors(filters={"class_name": "Counter"})
    assert len(actors) == 1
    a = actors[0]
    assert (a["actor_id"], a["name"], a["state"], a["pid"]) == (
        c.id.hex(),
        "obs-counter",
        "ALIVE",
        pid,
    )
    assert state.get_actor(c.id.hex())["actor_id"] == c.id.hex()
    assert state.get_actor("ffffffff") is None
    assert state.summarize_actors()["by_name"] == {"Counter": {"ALIVE": 1}}
    summary = {k.split(".")[-1]: v for k, v in state.summarize_tasks()["by_name"].items()}
    assert summary["square"] == {"FINISHED": 3}
    assert summary["explode"] == {"FAILED": 1}

    nodes = state.list_nodes()
    assert [n["node_id"] for n in nodes] == [info.node_id]
    assert state.get_node(info.node_id)["state"] == "ALIVE"
    assert any(w["pid"] == pid for w in state.list_workers())
    assert state.list_placement_groups() == []
    not_finished = state.list_tasks(filters=[("state", "!=", "FINISHED")], limit=0)
    assert [r["task_id"] for r in not_finished] == [failed["task_id"]]
    assert len(state.list_tasks(limit=2)) == 2
    import numpy as np

    big = ac.put(np.zeros(200_000))
    (obj,) = state.list_objects(filters={"object_id": big.id.hex()})
    assert obj["object_size"] >= 1_600_000 and list(obj["locations"]) == [info.node_id]


@pytest.mark.timeout(90)
def test_metrics_endpoint_with_runtime_and_user_metrics(fresh_runtime):
    fresh_runtime()
    import actorcore as ac
    from actorcore.util.metrics import Counter, Gauge, Histogram

    hits = Counter("obs_test_hits", "hits", tag_keys=("kind",))

    @ac.remote
    def work(i):
        hits.inc(2, tags={"kind": "task"})
        Histogram("obs_test_seconds", boundaries=[0.5, 5]).observe(0.1)
        return i

    assert ac.get([work.remote(i) for i in range(4)]) == list(range(4))
    Gauge("obs_test_depth").set(3)
    node = ac.nodes()[0]
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"

    def scraped():
        status, text, _ = _http(url)
        return (
            text
            if status == 200
            and 'obs_test_hits_total{kind="task"'
            in text.replace('node_id="' + node["NodeID"] + '",', "")
            and "obs_test_depth" in text
            else None
        )

    text = wait_for(scraped, 20, interval=0.1, what="user metrics at /metrics")
    nid = node["NodeID"]
    assert f'obs_test_hits_total{{kind="task",node_id="{nid}"}} 8.0' in text
    assert f'obs_test_seconds_bucket{{le="0.5",node_id="{nid}"}} 4.0' in text
    assert f'obs_test_depth{{node_id="{nid}"}} 3.0' in text
    for name in (
        "actorcore_tasks{",
        "actorcore_actors",
        "actorcore_worker_count",
        "actorcore_worker_rss_bytes",
        "actorcore_object_store_used",
        "actorcore_rpc_latency_seconds_bucket",
        "actorcore_scheduler_queue_length",
        "actorcore_object_bytes_pulled_total",
        "actorcore_object_store_spills_total",
    ):
        assert name in text, name


@pytest.mark.timeout(60)
def test_metrics_bearer_token_when_set(fresh_runtime):
    info = fresh_runtime(metrics_token="s3cret")
    url = f"http://{info.address[0]}:{info.metrics_export_port}/metrics"
    assert _http(url)[0] == 401
    status, text, _ = _http(url, {"Authorization": "Bearer s3cret"})
    assert status == 200 and "actorcore_worker_count" in text


@pytest.mark.timeout(60)
def test_dashboard_refuses_everything_without_the_token(fresh_runtime):
    info = fresh_runtime()
    import actorcore as ac

    @ac.remote
    class Secret:
        def ping(self):
            return 1

    s = Secret.remote()
    ac.get(s.ping.remote())
    base = info.dashboard_url
    assert base.startswith("http://127.0.0.1:")
    for path in ("/", "/api/actors", "/api/stream?view=actors", "/static/app.js", "/api/timeline"):
        status, body, _ = _http(base + path)
        assert status == 401, path
        assert s.id.hex() not in body and "Secret" not in body
    assert _http(base + "/?token=wrong")[0] == 401
    assert _http(base + "/login", data=b"token=wrong")[0] == 401
    status, _, headers = _http(base + "/login", data=b"token=" + info.dashboard_token.encode())
    assert status == 302 and "ac_dash=" in headers.get("Set-Cookie", "")
    cookie = headers["Set-Cookie"].split(";")[0]
    status, body, _ = _http(base + "/api/actors", {"Cookie": cookie})
    assert status == 200 and json.loads(body)[0]["class_name"] == "Secret"
    status, body, _ = _http(
        base + "/api/tasks", {"Authorization": "Bearer " + info.dashboard_token}
    )
    assert status == 200
    status, _, headers = _http(base + "/?token=" + info.dashboard_token)
    assert status == 302 and headers["Location"] == "/"


@pytest.mark.timeout(60)
def test_task_history_off_records_no_tasks(fresh_runtime):
    fresh_runtime(task_events=False)
    import actorcore as ac
    from actorcore.util import state
    from actorcore.util.metrics import Counter

    @ac.remote
    def f():
        Counter("obs_off_marker").inc()  # rides on the same batches as task events
        return 1

    assert ac.get(f.remote()) == 1
    node = ac.nodes()[0]
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    wait_for(lambda: "obs_off_marker_total" in _http(url)[1], 20, interval=0.1)
    assert state.list_tasks() == []


@pytest.mark.timeout(60)
def test_process_titles(fresh_runtime):
    fresh_runtime()
    import actorcore as ac

    @ac.remote
    class Sleeper:
        def nap(self, s):
            import time

            time.sleep(s)
            return os.getpid()

    def title(pid):
        return " ".join(psutil.Process(pid).cmdline())

    daemon_pid = state_node_pid()
    assert title(daemon_pid).startswith("actorcore::daemon")

    def forkserver_titled():  # it names itself once its imports are done
        kids = psutil.Process(daemon_pid).children()
        return any(title(k.pid).startswith("actorcore::forkserver") for k in kids)

    wait_for(forkserver_titled, 20, what="the fork server's title")
    s = Sleeper.remote()
    pid = ac.get(s.nap.remote(0))
    ref = s.nap.remote(3)
    wait_for(lambda: title(pid).startswith("actorcore::Sleeper.nap"), 10)
    ac.get(ref)
    wait_for(lambda: title(pid).startswith("actorcore::idle"), 10)


def state_node_pid():
    from actorcore.util import state

    return state.list_nodes()[0]["pid"]


@pytest.mark.timeout(60)
def test_timeline_and_progress(fresh_runtime, tmp_path):
    fresh_runtime()
    import actorcore as ac
    from actorcore.util import state

    @ac.remote
    def step(i):
        return i

    refs = [step.remote(i) for i in range(5)]
    out = io.StringIO()
    assert ac.util.progress(refs, desc="steps", file=out).get() == list(range(5))
    assert "100.0%" in out.getvalue() and "5/5" in out.getvalue() and "steps" in out.getvalue()
    wait_for(lambda: _tasks_named(state, "step", 5), 20)
    path = tmp_path / "trace.json"
    trace = ac.timeline(str(path))
    events = json.loads(path.read_text())
    assert events == trace
    xs = [e for e in events if e["ph"] == "X" and e["name"].endswith("step")]
    assert len(xs) == 5 and all(e["dur"] > 0 and isinstance(e["tid"], int) for e in xs)


@pytest.mark.timeout(90)
def test_cli_list_get_summary_timeline_logs_status(fresh_runtime, monkeypatch, capsys, tmp_path):
    info = fresh_runtime()
    import actorcore as ac
    from actorcore import _cli
    from actorcore._obs import _cli as obs_cli
    from actorcore.util import state

    monkeypatch.setattr(obs_cli, "_node", _node_file)
    monkeypatch.setattr(_cli, "_node", _node_file)

    @ac.remote
    class Greeter:
        def hi(self, who):
            print(f"hello {who}")
            return who

    g = Greeter.options(name="greeter").remote()
    ac.get(g.hi.remote("cli"))
    wait_for(lambda: _tasks_named(state, "Greeter.hi", 1), 20)
    wait_for(lambda: any("hello cli" in r["line"] for r in state.list_logs()), 20)
    capsys.readouterr()

    assert _cli.main(["list", "actors", "--format", "json", "--filter", "name=greeter"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["actor_id"] for r in rows] == [g.id.hex()]
    assert _cli.main(["list", "tasks", "--limit", "5"]) == 0
    assert "Greeter.hi" in capsys.readouterr().out
    for what in ("nodes", "workers", "objects", "placement-groups"):
        assert _cli.main(["list", what]) == 0
    capsys.readouterr()
    assert _cli.main(["get", "actor", g.id.hex()]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "greeter"
    assert _cli.main(["get", "node", info.node_id]) == 0
    capsys.readouterr()
    assert _cli.main(["get", "task", "ffffffffffff"]) == 1
    assert _cli.main(["summary", "tasks"]) == 0
    assert "Greeter.hi" in capsys.readouterr().out
    assert _cli.main(["summary", "actors", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["by_name"] == {"Greeter": {"ALIVE": 1}}
    out = tmp_path / "t.json"
    assert _cli.main(["timeline", "-o", str(out)]) == 0
    assert any(e.get("name") == "Greeter.hi" for e in json.loads(out.read_text()))
    capsys.readouterr()
    assert _cli.main(["logs", "--actor", "greeter"]) == 0
    assert "hello cli" in capsys.readouterr().out
    task_id = _tasks_named(state, "Greeter.hi", 1)[0]["task_id"]
    assert _cli.main(["logs", "--task", task_id]) == 0
    assert "hello cli" in capsys.readouterr().out
    assert _cli.main(["status"]) == 0
    assert info.dashboard_url in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_standalone_dashboard_reads_the_node_through_the_state_api(fresh_runtime):
    import asyncio
    import threading

    from aiohttp import web

    import actorcore as ac
    from actorcore._obs._dashboard import dashboard_app
    from actorcore._obs._standalone import RemoteObserver

    info = fresh_runtime()

    @ac.remote
    class Far:
        def ping(self):
            return 1

    far = Far.remote()
    ac.get(far.ping.remote())
    obs = RemoteObserver(_node_file())
    assert obs.token == info.dashboard_token
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box = {}

    async def start():
        runner = web.AppRunner(dashboard_app(obs), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"], box["port"] = runner, site._server.sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        base = f"http://127.0.0.1:{box['port']}"
        assert _http(base + "/api/actors")[0] == 401
        auth = {"Authorization": "Bearer " + info.dashboard_token}
        status, body, _ = _http(base + "/api/actors", auth)
        assert status == 200 and [a["actor_id"] for a in json.loads(body)] == [far.id.hex()]
    finally:
        if "runner" in box:
            asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.timeout(60)
def test_a_new_runtime_ships_events_even_if_the_last_one_stopped_with_a_flush_due(fresh_runtime):
    from actorcore import _task_events as TE

    TE._armed = True  # as left by a runtime shut down before its flush ran
    fresh_runtime()
    import actorcore as ac
    from actorcore.util import state

    @ac.remote
    def g():
        return 1

    ref = g.remote()
    assert ac.get(ref) == 1

    def pending_seen():
        rows = state.list_tasks(limit=0, detail=True)
        return rows and rows[0]["events"][0]["state"].startswith("PENDING")

    wait_for(pending_seen, 20, what="the driver's pending event")
