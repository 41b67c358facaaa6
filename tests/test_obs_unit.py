"""Observability cores without sockets: task history, filters, merge, metrics, timeline."""

import pytest

from actorcore import _task_events as TE
from actorcore._obs._history import LogRing, TaskHistory
from actorcore._obs._metrics import UserMetrics, render
from actorcore._obs._query import apply_filters, merge_rows, parse_filters, summarize
from actorcore._obs._timeline import chrome_trace

W = b"w" * 16


def _ev(tid, state, t, name="f", actor=None, info=None):
    return (tid, state, t, name, actor, info)


def test_history_folds_events_from_owner_and_worker_in_any_order():
    h = TaskHistory("n1")
    # the worker's batch arrives before the owner's pending event
    h.ingest([_ev(b"t1", TE.RUNNING, 2.0, info=10), _ev(b"t1", TE.FINISHED, 3.0)], W, 42)
    h.ingest([_ev(b"t1", TE.PENDING_NODE_ASSIGNMENT, 1.0, info=TE.NORMAL_TASK)], None, None)
    row = h.get(b"t1").row(detail=True)
    assert row["state"] == "FINISHED"
    assert row["worker_pid"] == 42 and row["node_id"] == "n1" and row["args_bytes"] == 10
    assert row["creation_time_ms"] == 1000 and row["start_time_ms"] == 2000
    assert [e["state"] for e in row["events"]] == [
        "PENDING_NODE_ASSIGNMENT",
        "RUNNING",
        "FINISHED",
    ]
    assert h.finished_total == 1
    assert h.latency_seconds.count == 1 and h.run_seconds.count == 1


def test_history_failure_keeps_error_text_and_retries_move_on():
    h = TaskHistory("n1")
    h.ingest([_ev(b"t", TE.RUNNING, 1.0), _ev(b"t", TE.FAILED, 2.0, info="ValueError: x")], W, 1)
    assert h.get(b"t").row()["error_message"] == "ValueError: x"
    assert h.get(b"t").row()["error_type"] == "ValueError"
    h.ingest([_ev(b"t", TE.RUNNING, 3.0), _ev(b"t", TE.FINISHED, 4.0)], W, 1)  # a retry
    assert h.get(b"t").row()["state"] == "FINISHED"


def test_listings_cut_long_tracebacks_and_get_task_keeps_them():
    h = TaskHistory("n1")
    long = "Traceback:\n" + "x" * 20_000 + "\nValueError: the end"
    h.ingest([_ev(b"t", TE.RUNNING, 1.0), _ev(b"t", TE.FAILED, 2.0, info=long)], W, 1)
    listed = h.get(b"t").row()["error_message"]
    assert len(listed) < 5000 and listed.startswith("Traceback:") and "the end" in listed
    assert h.get(b"t").row(detail=True)["error_message"] == long


def test_an_owners_record_of_a_task_run_elsewhere_is_not_counted_pending():
    h = TaskHistory("owner-node")
    h.ingest([_ev(b"t", TE.PENDING_NODE_ASSIGNMENT, 1.0, info="NORMAL_TASK")], None, None)
    h.ingest([_ev(b"q", TE.PENDING_NODE_ASSIGNMENT, 1.0, info="NORMAL_TASK")], None, None)
    assert h.counts_by_state() == {"PENDING_NODE_ASSIGNMENT": 2}
    h.ingest([(b"t", TE.RAN_ELSEWHERE, 2.0, "", None, "bb")], None, None)
    assert h.counts_by_state() == {"PENDING_NODE_ASSIGNMENT": 1}  # q still waits here
    assert h.get(b"t").row()["state"] == "PENDING_NODE_ASSIGNMENT"  # merged with B's


def test_history_is_bounded_and_newest_first():
    h = TaskHistory("n1", max_tasks=5)
    for i in range(12):
        h.ingest([_ev(bytes([i]), TE.RUNNING, float(i))], W, 1)
    assert [r.task_id for r in h.newest()] == [bytes([i]) for i in range(11, 6, -1)]
    assert len(h.records) == 5
    assert h.counts_by_state() == {"RUNNING": 5}


def test_history_under_a_flood_counts_everything_and_folds_only_what_it_can_show():
    h = TaskHistory("n1", max_tasks=10)  # keeps at most 40 raw events
    for i in range(100):
        tid = i.to_bytes(2, "big")
        h.ingest([_ev(tid, TE.RUNNING, float(i)), _ev(tid, TE.FINISHED, i + 0.5)], W, 1)
    assert h.finished_total == 100 and h.events_total == 200
    assert h.dropped_events == 200 - 40
    newest = h.newest()
    assert len(newest) == 10 and newest[0].task_id == (99).to_bytes(2, "big")
    assert all(r.row()["state"] == "FINISHED" for r in newest)


def test_log_ring_numbers_lines_and_keeps_the_last():
    ring = LogRing(maxlen=3)
    ring.add([["out", "f pid=1", f"line {i}"] for i in range(5)], 1)
    rows = ring.rows()
    assert [r["line"] for r in rows] == ["line 2", "line 3", "line 4"]
    assert [r["line"] for r in ring.rows(after=rows[1]["seq"])] == ["line 4"]


def test_filters_in_every_form():
    rows = [{"state": "ALIVE", "name": "a"}, {"state": "DEAD", "name": "b"}]
    assert apply_filters(rows, [("state", "=", "alive")], 0) == rows[:1]
    assert apply_filters(rows, {"name": "b"}, 0) == rows[1:]
    assert apply_filters(rows, ["state!=ALIVE"], 0) == rows[1:]
    assert apply_filters(rows, None, 1) == rows[:1]
    with pytest.raises(ValueError):
        parse_filters(["nonsense"])
    with pytest.raises(ValueError):
        parse_filters([("a", "<", "b")])


def test_merge_rows_joins_one_task_seen_by_two_nodes():
    owner_node = [{"task_id": "t", "state": "PENDING_NODE_ASSIGNMENT", "creation_time_ms": 1}]
    run_node = [{"task_id": "t", "state": "FINISHED", "creation_time_ms": 5, "node_id": "n2"}]
    merged = merge_rows("tasks", [owner_node, run_node])
    assert merged == [{"task_id": "t", "state": "FINISHED", "creation_time_ms": 1, "node_id": "n2"}]
    assert len(merge_rows("actors", [[{"a": 1}], [{"a": 2}]])) == 2


def test_summarize_counts_by_name_and_state():
    rows = [{"name": "f", "state": "FINISHED"}] * 3 + [{"name": "g", "state": "FAILED"}]
    s = summarize("tasks", rows)
    assert s["total"] == 4
    assert s["by_name"] == {"f": {"FINISHED": 3}, "g": {"FAILED": 1}}


def test_user_metrics_render_as_prometheus_text():
    um = UserMetrics()
    um.ingest(
        [
            ("def", "app_hits", "counter", "hits", ["route"], []),
            ("counter", "app_hits", ["/a"], 2.0),
            ("counter", "app_hits", ["/a"], 3.0),
            ("def", "app_depth", "gauge", "depth", [], []),
            ("gauge", "app_depth", [], 7.0),
            ("def", "app_lat", "histogram", "lat", [], [0.1, 1.0]),
            ("histogram", "app_lat", [], 0.5),
            ("counter", "undefined_metric", [], 1.0),  # its definition was lost: skipped
        ]
    )
    h = TaskHistory("n1")
    snap = {
        "node_id": "n1",
        "tasks_by_state": {"FINISHED": 1},
        "finished": 0,
        "failed": 0,
        "actors_by_state": {},
        "workers_by_role": {},
        "worker_count": 0,
        "procs": {},
        "cpu_percent": 0.0,
        "mem_used": 0,
        "store": {},
        "counters": {},
        "queues": {},
        "events_total": 0,
        "latency": h.latency_seconds,
        "run": h.run_seconds,
    }
    text = render(snap, um).decode()
    assert 'app_hits_total{node_id="n1",route="/a"} 5.0' in text
    assert 'app_depth{node_id="n1"} 7.0' in text
    assert 'app_lat_bucket{le="1.0",node_id="n1"} 1.0' in text
    assert 'actorcore_tasks{node_id="n1",state="FINISHED"} 1.0' in text
    assert "undefined_metric" not in text


def test_chrome_trace_has_one_row_per_worker():
    tasks = [
        {
            "task_id": "a",
            "name": "f",
            "state": "FINISHED",
            "type": "NORMAL_TASK",
            "start_time_ms": 1000,
            "end_time_ms": 1005,
            "worker_pid": 7,
            "node_id": "n1" * 16,
            "worker_id": "w",
            "args_bytes": 3,
        },
        {
            "task_id": "b",
            "name": "C.m",
            "state": "FINISHED",
            "type": "ACTOR_TASK",
            "start_time_ms": 1001,
            "end_time_ms": 1002,
            "worker_pid": 8,
            "node_id": "n1" * 16,
        },
        {"task_id": "c", "name": "g", "state": "PENDING_NODE_ASSIGNMENT", "start_time_ms": None},
    ]
    trace = chrome_trace(tasks)
    xs = [e for e in trace if e["ph"] == "X"]
    assert [(e["name"], e["tid"], e["dur"]) for e in xs] == [("f", 7, 5000), ("C.m", 8, 1000)]
    assert xs[0]["args"]["args_bytes"] == 3
    assert {e["tid"] for e in trace if e["ph"] == "M"} == {7, 8}


def test_a_workers_single_end_event_carries_its_start():
    h = TaskHistory("n1")
    end = (b"t", TE.FINISHED, 3.0, "C.m", b"a" * 16, None, 2.0, 99)  # started at 2.0, 99 bytes
    h.ingest([end], W, 7)
    row = h.get(b"t").row(detail=True)
    assert (row["state"], row["start_time_ms"], row["end_time_ms"]) == ("FINISHED", 2000, 3000)
    assert row["worker_pid"] == 7 and row["args_bytes"] == 99 and row["type"] == "ACTOR_TASK"
    assert [e["state"] for e in row["events"]] == ["RUNNING", "FINISHED"]
    assert h.run_seconds.count == 1


def test_flush_reports_running_calls_once_and_ends_as_one_event():
    class Call:
        def __init__(self, tid):
            self.task_id, self.payload, self.name = tid, b"xy", "C.m"

    sent = []

    class Rt:
        class daemon:
            @staticmethod
            def send(msg):
                sent.append(msg)

    import msgpack

    TE.reset_after_fork()
    TE._off, TE._armed = False, True  # no runtime here: flush by hand
    slow, fast = Call(b"s"), Call(b"f")
    TE.call_running(slow, None)
    TE.call_running(fast, None)
    TE.call_done(fast, [[0, b"", None]])
    TE.flush(Rt)
    TE.flush(Rt)  # the slow call is not reported twice
    TE.call_done(slow, [[0, b"", None]])
    TE.flush(Rt)
    batches = [msgpack.unpackb(m.events) for m in sent]
    states = [[(bytes(e[0]), e[1], len(e)) for e in b] for b in batches]
    assert states == [
        [(b"f", TE.FINISHED, 8), (b"s", TE.RUNNING, 6)],
        [(b"s", TE.FINISHED, 8)],
    ]
    assert [m.counts for m in sent] == [[2, 1, 0], [1, 1, 0]]
    TE.reset_after_fork()


def test_merge_cluster_objects_logs_ids_and_absent_nodes():
    from actorcore._obs._cluster import merge_cluster

    a = [{"object_id": "o1", "locations": ["A"], "spilled": False, "pins": 1}]
    b = [
        {"object_id": "o1", "locations": ["B"], "spilled": True, "pins": 0},
        {"object_id": "o2", "locations": ["B"], "spilled": False, "pins": 0},
    ]
    rows = {r["object_id"]: r for r in merge_cluster("objects", [a, b], 0, {})}
    assert rows["o1"]["locations"] == ["A", "B"] and rows["o1"]["spilled"] is False
    assert rows["o2"]["locations"] == ["B"]
    assert a[0]["locations"] == ["A"]  # the answers are not changed

    logs = merge_cluster(
        "logs",
        [[{"time": 3, "seq": 1}, {"time": 5, "seq": 2}], [{"time": 4, "seq": 9}]],
        0,
        {"tail": 2},
    )
    assert [r["time"] for r in logs] == [4, 5]

    t1 = {"task_id": "aa1", "state": "PENDING_NODE_ASSIGNMENT", "creation_time_ms": 1}
    t2 = {"task_id": "aa1", "state": "FINISHED", "creation_time_ms": 2, "node_id": "B"}
    [one] = merge_cluster("task", [[t1], [t2]], 1, {"id": "aa"})
    assert one["state"] == "FINISHED" and one["node_id"] == "B" and one["creation_time_ms"] == 1
    with pytest.raises(ValueError, match="give more"):
        merge_cluster("actor", [[{"actor_id": "ab1"}], [{"actor_id": "ab2"}]], 1, {"id": "ab"})

    dead = [{"node_id": "cc", "state": "DEAD"}]
    assert merge_cluster("node", [[], []], 1, {"id": "c"}, dead) == dead
    alive = [{"node_id": "aa", "state": "ALIVE"}]
    assert merge_cluster("nodes", [alive], 0, {}, dead) == [*alive, *dead]
