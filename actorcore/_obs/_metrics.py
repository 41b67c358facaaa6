"""Prometheus metrics of a node: the runtime's own and the users' (text exposition).

:class:`UserMetrics` folds the samples that processes ship with their task
events (sans-IO). :func:`render` turns a node's numbers into the Prometheus
text format through ``prometheus_client`` (imported only when someone scrapes).
"""

from __future__ import annotations

from typing import Any

from ._history import Histogram

__all__ = ["UserMetrics", "render"]


class _Metric:
    __slots__ = ("boundaries", "description", "kind", "tag_keys", "values")

    def __init__(self, kind: str, description: str, tag_keys: list[str], boundaries: Any) -> None:
        self.kind = kind
        self.description = description
        self.tag_keys = list(tag_keys)
        self.boundaries = tuple(float(b) for b in boundaries or ()) or (0.01, 0.1, 1.0, 10.0)
        self.values: dict[tuple[str, ...], Any] = {}


class UserMetrics:
    """User-defined counters, gauges and histograms of one node.

    Samples are ``("def", name, kind, description, tag_keys, boundaries)`` and
    ``(kind, name, tag_values, value)`` with kind ``"counter"``, ``"gauge"`` or
    ``"histogram"``.
    """

    def __init__(self, max_series: int = 10_000) -> None:
        self.metrics: dict[str, _Metric] = {}
        self.max_series = max_series
        self.series = 0

    def ingest(self, samples: list[Any]) -> None:
        for s in samples:
            if s[0] == "def":
                _, name, kind, desc, keys, bounds = s
                if name not in self.metrics:
                    self.metrics[name] = _Metric(kind, desc, keys, bounds)
                continue
            kind, name, tags, value = s
            m = self.metrics.get(name)
            if m is None or m.kind != kind:
                continue  # its definition was lost (a full buffer): skip
            self._apply(m, tuple(str(t) for t in tags), float(value))

    def _apply(self, m: _Metric, tags: tuple[str, ...], value: float) -> None:
        if tags not in m.values:
            if self.series >= self.max_series:
                return
            self.series += 1
            m.values[tags] = Histogram(m.boundaries) if m.kind == "histogram" else 0.0
        if m.kind == "counter":
            m.values[tags] += value
        elif m.kind == "gauge":
            m.values[tags] = value
        else:
            m.values[tags].observe(value)


def _label_names(extra: list[str]) -> list[str]:
    return ["node_id", *extra]


def _families(snap: dict[str, Any], users: UserMetrics) -> list[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    node = snap["node_id"]
    out: list[Any] = []

    def gauge(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]) -> None:
        g = GaugeMetricFamily(name, doc, labels=_label_names(labels))
        for lv, v in rows:
            g.add_metric([node, *lv], v)
        out.append(g)

    def counter(
        name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]
    ) -> None:
        c = CounterMetricFamily(name, doc, labels=_label_names(labels))
        for lv, v in rows:
            c.add_metric([node, *lv], v)
        out.append(c)

    def hist(name: str, doc: str, h: Histogram) -> None:
        f = HistogramMetricFamily(name, doc, labels=["node_id"])
        f.add_metric([node], h.cumulative(), h.total)
        out.append(f)

    gauge(
        "actorcore_tasks",
        "Tasks in this node's history by state",
        ["state"],
        [([s], n) for s, n in snap["tasks_by_state"].items()],
    )
    counter(
        "actorcore_tasks_finished",
        "Tasks and actor calls that finished",
        [],
        [([], snap["finished"])],
    )
    counter(
        "actorcore_tasks_failed",
        "Tasks and actor calls that failed",
        [],
        [([], snap["failed"])],
    )
    gauge(
        "actorcore_actors",
        "Actors by state",
        ["state"],
        [([s], n) for s, n in snap["actors_by_state"].items()],
    )
    gauge(
        "actorcore_workers",
        "Worker processes by role",
        ["role"],
        [([r], n) for r, n in snap["workers_by_role"].items()],
    )
    gauge("actorcore_worker_count", "Worker processes", [], [([], snap["worker_count"])])
    gauge(
        "actorcore_worker_cpu_percent",
        "CPU use of each worker",
        ["pid"],
        [([str(p)], w.get("cpu_percent") or 0.0) for p, w in snap["procs"].items()],
    )
    gauge(
        "actorcore_worker_rss_bytes",
        "Resident memory of each worker",
        ["pid"],
        [([str(p)], w.get("rss") or 0) for p, w in snap["procs"].items()],
    )
    gauge("actorcore_node_cpu_percent", "CPU use of the machine", [], [([], snap["cpu_percent"])])
    gauge(
        "actorcore_node_mem_used_bytes",
        "Memory in use on the machine",
        [],
        [([], snap["mem_used"])],
    )
    for key, doc in (
        ("used", "Object store bytes in use"),
        ("capacity", "Object store capacity in bytes"),
        ("objects", "Objects in the store"),
        ("spilled_bytes", "Bytes of spilled objects on disk"),
    ):
        gauge(f"actorcore_object_store_{key}", doc, [], [([], snap["store"].get(key, 0))])
    counter(
        "actorcore_object_store_spills",
        "Objects spilled to disk",
        [],
        [([], snap["store"].get("spill_count", 0))],
    )
    counter(
        "actorcore_object_store_restores",
        "Spilled objects read back",
        [],
        [([], snap["store"].get("restore_count", 0))],
    )
    for key, doc in (
        ("bytes_pulled", "Object bytes pulled from other nodes"),
        ("bytes_pushed", "Object bytes pushed to other nodes"),
        ("pulls_done", "Objects pulled from other nodes"),
        ("pulls_failed", "Pulls from other nodes that failed"),
    ):
        counter(f"actorcore_object_{key}", doc, [], [([], snap["counters"].get(key, 0))])
    for key, doc in (
        ("owner_gone_sent", "Process-ended notices (OWNER_GONE) sent to peer node daemons"),
        ("owner_gone_received", "Process-ended notices (OWNER_GONE) from peer node daemons"),
    ):
        counter(f"actorcore_{key}", doc, [], [([], snap["counters"].get(key, 0))])
    counter(
        "actorcore_log_batches_forwarded",
        "Batches of worker output sent to drivers on other nodes",
        [],
        [([], snap["counters"].get("log_batches_forwarded", 0))],
    )
    gauge(
        "actorcore_scheduler_queue_length",
        "Requests waiting in the local scheduler",
        ["queue"],
        [([q], n) for q, n in snap["queues"].items()],
    )
    counter("actorcore_task_events", "Task events received", [], [([], snap["events_total"])])
    hist(
        "actorcore_rpc_latency_seconds",
        "Submission to result of tasks and actor calls (seconds)",
        snap["latency"],
    )
    hist("actorcore_task_run_seconds", "Time in user code of tasks and actor calls", snap["run"])
    out.extend(
        _user_families(node, users, GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily)
    )
    return out


def _user_families(node: str, users: UserMetrics, G: Any, C: Any, H: Any) -> list[Any]:
    out = []
    for name, m in users.metrics.items():
        labels = ["node_id", *m.tag_keys]
        fam = {"counter": C, "gauge": G, "histogram": H}[m.kind](name, m.description, labels=labels)
        for tags, v in m.values.items():
            if m.kind == "histogram":
                fam.add_metric([node, *tags], v.cumulative(), v.total)
            else:
                fam.add_metric([node, *tags], v)
        out.append(fam)
    return out


def render(snap: dict[str, Any], users: UserMetrics) -> bytes:
    """The Prometheus text exposition of a node snapshot (see ``NodeObserver.snapshot``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    families = _families(snap, users)

    class _Snapshot:
        def collect(self) -> Any:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())  # type: ignore[arg-type]
    return bytes(generate_latest(registry))
