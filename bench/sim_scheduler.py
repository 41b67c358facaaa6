"""Discrete-event simulation of two-level scheduling at cluster scale (issue 9).

Drives the real sans-IO pieces, ``SpillPolicy`` on every simulated node and one
``Placer``, over a simulated cluster: mixed node sizes (4/8/16/64 CPUs, some
with GPUs or a custom resource), tasks of mixed shapes with exponential and
long-tail durations, arrivals in bursts and skewed onto a few submitting
nodes, load reports every ``--report-ms`` with latency, and a node offering a
resource nobody had joining half way (the infeasible work then runs).

    python -m bench.sim_scheduler                          # 1,000 nodes, 1,000,000 tasks
    python -m bench.sim_scheduler --nodes 200 --tasks 100000 --sweep

Prints the share of tasks placed locally vs spilled, the placer's decisions
per second (wall-clock time spent in ``Placer.handle``), queue-wait
percentiles, CPU-utilization spread across nodes and infeasible counts.
"""

from __future__ import annotations

import argparse
import heapq
import json
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from actorcore.scheduler import _placer_msgs as M
from actorcore.scheduler._placer import Placer, PlacerConfig
from actorcore.scheduler._spill import Decision, LocalView, SpillConfig, SpillPolicy

from .sim_workload import SHAPES, SimConfig, Workload

__all__ = ["SHAPES", "Sim", "SimConfig", "SimResult", "Workload", "main", "simulate"]

FINISH, DELIVER, REPORT, REPORT_IN, TICK, JOIN = range(6)
_EPS = 1e-9


@dataclass(slots=True)
class SimResult:
    config: dict[str, Any]
    completed: int
    local: int
    spilled: int
    spilled_infeasible_locally: int
    placer_decisions: int
    placer_decide_s: float
    decisions_per_s: float
    decisions_per_cpu_s: float
    reports: int
    report_handle_us: float
    wait_p50_ms: float
    wait_p95_ms: float
    wait_p99_ms: float
    wait_max_ms: float
    wait_p99_ms_by_shape: dict[str, float]
    util_mean: float
    util_max: float
    util_max_over_mean: float
    util_p5: float
    util_p95: float
    infeasible_warnings: int
    infeasible_tasks: int
    sim_span_s: float
    wall_s: float
    events: int
    overcommits: int
    double_runs: int


class Sim:
    """One run: event loop over node-local queues, the spill policy and the placer."""

    def __init__(self, c: SimConfig, w: Workload) -> None:
        self.c, self.w = c, w
        self.policy = SpillPolicy(SpillConfig(c.queue_per_cpu, c.max_wait_s, c.min_queue))
        self.placer = Placer(PlacerConfig(warmup_s=2 * c.report_s))
        self.views = [LocalView(i, t) for i, t in enumerate(w.totals)]
        self.queues = [[deque[int]() for _ in SHAPES] for _ in w.totals]
        self.busy_cpu_s = [0.0] * len(w.totals)
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.seq = 0
        n = c.tasks
        self.enq_t = [0.0] * n
        self.start_t = [-1.0] * n
        self.runs = bytearray(n)
        self.local = self.spilled = self.spilled_infeasible = 0
        self.decide_s = 0.0
        self.decide_cpu_s = 0.0
        self.reports = 0
        self.report_s = 0.0
        self.warnings = 0
        self.overcommits = 0
        self.report_seq = [0] * len(w.totals)
        self.dirty = bytearray(len(w.totals))
        self.join_node = -1

    def push(self, t: float, kind: int, a: int, b: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    # --- node side -----------------------------------------------------------------

    def enqueue(self, node: int, task: int, now: float) -> None:
        qs = self.queues[node]
        v = self.views[node]
        if not v.queue_len:
            v.oldest_enqueued_at = now
        qs[self.w.shape[task]].append(task)
        if not self.dirty[node]:
            self.mark_dirty(node, now)
        self.enq_t[task] = now
        v.queue_len += 1
        self.start_ready(node, now)

    def start_ready(self, node: int, now: float) -> None:
        """Start queued work that fits, oldest first, one FIFO per shape: small
        work may pass older big work that does not fit yet, until that has
        waited ``starve_s``."""
        qs = self.queues[node]
        v = self.views[node]
        avail = v.available
        enq_t = self.enq_t
        starve = now - self.c.starve_s
        while v.queue_len:
            best = -1
            best_t = oldest_t = now + 1.0
            for si, q in enumerate(qs):
                if not q:
                    continue
                t = enq_t[q[0]]
                oldest_t = min(oldest_t, t)
                if t < best_t:
                    for k, x in SHAPES[si].items():
                        if avail.get(k, 0.0) + _EPS < x:
                            break
                    else:
                        best, best_t = si, t
            if best < 0 or (best_t > oldest_t and oldest_t < starve):
                break
            self._start(node, qs[best].popleft(), now)
            v.queue_len -= 1
        if v.queue_len:
            v.oldest_enqueued_at = min(enq_t[q[0]] for q in qs if q)

    def _start(self, node: int, task: int, now: float) -> None:
        w = self.w
        shape = SHAPES[w.shape[task]]
        avail = self.views[node].available
        for k, x in shape.items():
            avail[k] -= x
            if avail[k] < -_EPS:
                self.overcommits += 1
        dur = w.duration[task]
        self.start_t[task] = now
        self.runs[task] += 1
        self.busy_cpu_s[node] += shape["CPU"] * max(0.0, min(now + dur, w.span) - now)
        self.push(now + dur, FINISH, node, task)

    def finish(self, node: int, task: int, now: float) -> None:
        avail = self.views[node].available
        for k, x in SHAPES[self.w.shape[task]].items():
            avail[k] += x
        if not self.dirty[node]:
            self.mark_dirty(node, now)
        self.start_ready(node, now)

    def arrive(self, task: int, now: float) -> None:
        w = self.w
        node = w.origin[task]
        v = self.views[node]
        shape = SHAPES[w.shape[task]]
        if self.policy.decide(shape, v, now) is Decision.LOCAL:
            self.local += 1
            self.enqueue(node, task, now)
            return
        self.spilled += 1
        for k, x in shape.items():
            if v.total.get(k, 0.0) < x:
                self.spilled_infeasible += 1
                break
        args: dict[Any, int] = {}
        if w.arg_node[task] >= 0:
            args = {w.arg_node[task]: w.arg_bytes[task]}
        req = M.SpillRequest(task, shape, M.DEFAULT, args, node)
        self.to_placer(now + self.c.hop_s, req)

    # --- placer side ---------------------------------------------------------------

    def to_placer(self, now: float, ev: M.SpillRequest) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self.placer.handle(ev)
        self.decide_cpu_s += time.thread_time() - c0
        self.decide_s += time.perf_counter() - t0
        self.carry_out(now, out)

    def carry_out(self, now: float, out: list[Any]) -> None:
        for ins in out:
            if type(ins) is M.PlaceOn:
                self.push(now + self.c.hop_s, DELIVER, ins.node_id, ins.work_id)
            elif type(ins) is M.Infeasible:
                self.warnings += 1

    def mark_dirty(self, node: int, now: float) -> None:
        """The node's load changed: it reports at its next period boundary (an
        idle, unchanged node sends nothing)."""
        self.dirty[node] = 1
        period = self.c.report_s
        phase = period * (node % 997) / 997
        k = (now - phase) // period + 1
        self.push(phase + k * period, REPORT, node)

    def report(self, node: int, now: float) -> None:
        self.dirty[node] = 0
        v = self.views[node]
        self.report_seq[node] += 1
        wait = now - v.oldest_enqueued_at if v.queue_len else 0.0
        rep = M.LoadReport(node, dict(v.available), v.queue_len, wait, self.report_seq[node])
        self.push(now + self.c.report_latency_s, REPORT_IN, node, rep)

    def report_in(self, rep: M.LoadReport, now: float) -> None:
        t0 = time.perf_counter()
        out = self.placer.handle(rep)
        self.report_s += time.perf_counter() - t0
        self.reports += 1
        self.carry_out(now, out)

    # --- the loop ------------------------------------------------------------------

    def run(self) -> SimResult:
        c, w = self.c, self.w
        t_wall = time.perf_counter()
        for i, t in enumerate(w.totals):
            self.placer.handle(M.NodeJoined(i, t))
        self.push(c.report_s, TICK, 0)
        self.push(w.span * 0.5, JOIN, 0)
        events = self._loop()
        return self._result(events, time.perf_counter() - t_wall)

    def _loop(self) -> int:
        w, heap, pop = self.w, self.heap, heapq.heappop
        arrival, n = w.arrival, len(w.arrival)
        ai = events = 0
        remaining = n
        runs = self.runs
        while remaining:
            events += 1
            if not heap and ai >= n:
                break
            if ai < n and (not heap or arrival[ai] <= heap[0][0]):
                self.arrive(ai, arrival[ai])
                ai += 1
                continue
            now, _, kind, a, b = pop(heap)
            if kind == FINISH:
                remaining -= 1
                if runs[b] != 1:
                    raise AssertionError(f"task {b} ran {runs[b]} times")
                self.finish(a, b, now)
            elif kind == DELIVER:
                self.placer.handle(M.WorkAccepted(b))
                self.enqueue(a, b, now)
            elif kind == REPORT:
                self.report(a, now)
            elif kind == REPORT_IN:
                self.report_in(b, now)
            elif kind == TICK:
                self.carry_out(now, self.placer.handle(M.Tick(now)))
                if heap or ai < n:  # else only never-runnable work is left: stop
                    self.push(now + self.c.report_s, TICK, 0)
            else:
                self._join(now)
        return events

    def _join(self, now: float) -> None:
        """A node offering TPUs joins: the infeasible work waiting for it runs."""
        totals = {"CPU": 64.0, "TPU": 8.0}
        node = len(self.views)
        self.views.append(LocalView(node, totals))
        self.queues.append([deque() for _ in SHAPES])
        self.busy_cpu_s.append(0.0)
        self.report_seq.append(0)
        self.dirty.append(0)
        self.join_node = node
        self.carry_out(now, self.placer.handle(M.NodeJoined(node, totals)))

    def _result(self, events: int, wall: float) -> SimResult:
        w = self.w
        starts = np.array(self.start_t)
        waits = (starts - np.array(w.arrival)) * 1000.0
        caps = np.array([t["CPU"] for t in w.totals])
        util = np.array(self.busy_cpu_s[: len(caps)]) / (caps * w.span)
        infeasible = sum(1 for s in w.shape if s == len(SHAPES) - 1)
        decisions = self.placer.decisions
        return SimResult(
            config=asdict(self.c),
            completed=int(sum(1 for r in self.runs if r == 1)),
            local=self.local,
            spilled=self.spilled,
            spilled_infeasible_locally=self.spilled_infeasible,
            placer_decisions=decisions,
            placer_decide_s=round(self.decide_s, 3),
            decisions_per_s=round(self.spilled / self.decide_s) if self.decide_s else 0.0,
            decisions_per_cpu_s=round(self.spilled / self.decide_cpu_s) if self.decide_cpu_s else 0,
            reports=self.reports,
            report_handle_us=round(1e6 * self.report_s / max(1, self.reports), 2),
            wait_p50_ms=round(float(np.percentile(waits, 50)), 3),
            wait_p95_ms=round(float(np.percentile(waits, 95)), 3),
            wait_p99_ms=round(float(np.percentile(waits, 99)), 3),
            wait_max_ms=round(float(waits.max()), 1),
            wait_p99_ms_by_shape=_by_shape(waits, w.shape),
            util_mean=round(float(util.mean()), 3),
            util_max=round(float(util.max()), 3),
            util_max_over_mean=round(float(util.max() / util.mean()), 2),
            util_p5=round(float(np.percentile(util, 5)), 3),
            util_p95=round(float(np.percentile(util, 95)), 3),
            infeasible_warnings=self.warnings,
            infeasible_tasks=infeasible,
            sim_span_s=round(w.span, 2),
            wall_s=round(wall, 1),
            events=events,
            overcommits=self.overcommits,
            double_runs=int(sum(1 for r in self.runs if r > 1)),
        )


def _by_shape(waits: Any, shape: list[int]) -> dict[str, float]:
    idx = np.array(shape)
    out: dict[str, float] = {}
    for i, sh in enumerate(SHAPES):
        sel = waits[idx == i]
        if len(sel):
            name = ",".join(f"{k}:{v:g}" for k, v in sh.items())
            out[name] = round(float(np.percentile(sel, 99)), 1)
    return out


def simulate(c: SimConfig) -> SimResult:
    return Sim(c, Workload(c)).run()


SWEEP = [
    # (queue_per_cpu, max_wait_s, min_queue): spill whenever it cannot start now,
    # never spill (but what never fits here), then a grid
    (0.0, 0.0, 0),
    (1e9, 1e9, 1 << 30),
    (0.25, 0.01, 1),
    (0.5, 0.02, 1),
    (0.5, 0.05, 1),
    (1.0, 0.05, 1),
    (1.0, 0.2, 1),
    (2.0, 0.5, 1),
]


def _row(r: SimResult) -> str:
    c = r.config
    return (
        f"| {c['queue_per_cpu']:g} | {c['max_wait_s']:g} | {100 * r.local / c['tasks']:.1f}% "
        f"| {r.wait_p50_ms:.1f} | {r.wait_p95_ms:.1f} | {r.wait_p99_ms:.1f} "
        f"| {r.util_p5:.2f}-{r.util_p95:.2f} | {r.util_max_over_mean:.2f} "
        f"| {r.placer_decisions:,} | {r.decisions_per_cpu_s:,.0f} | {r.wall_s:.0f} |"
    )


def main(argv: list[str] | None = None) -> None:
    d = SimConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--tasks", type=int, default=d.tasks)
    ap.add_argument("--report-ms", type=float, default=d.report_s * 1000)
    ap.add_argument("--queue-per-cpu", type=float, default=d.queue_per_cpu)
    ap.add_argument("--max-wait-ms", type=float, default=d.max_wait_s * 1000)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--hot-share", type=float, default=d.hot_share, help="submissions on hot nodes")
    ap.add_argument("--burst-share", type=float, default=d.burst_share)
    ap.add_argument("--load", type=float, default=d.load, help="offered CPU load")
    ap.add_argument(
        "--by-capacity", action="store_true", help="non-hot submissions in proportion to CPUs"
    )
    ap.add_argument("--sweep", action="store_true", help="run the threshold grid")
    ap.add_argument("--json", action="store_true", help="print the result(s) as JSON")
    a = ap.parse_args(argv)
    base = SimConfig(
        nodes=a.nodes,
        tasks=a.tasks,
        report_s=a.report_ms / 1000,
        queue_per_cpu=a.queue_per_cpu,
        max_wait_s=a.max_wait_ms / 1000,
        seed=a.seed,
        hot_share=a.hot_share,
        burst_share=a.burst_share,
        load=a.load,
        by_capacity=a.by_capacity,
    )
    grid = SWEEP if a.sweep else [(base.queue_per_cpu, base.max_wait_s, base.min_queue)]
    w = Workload(base)
    results = []
    if a.sweep and not a.json:
        print(
            "| queue/CPU | max wait s | local | wait p50 ms | p95 ms | p99 ms | util p5-p95 "
            "| util max/mean | placer decisions | decisions/CPU-s | wall s |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
    for q, mw, mq in grid:
        c = SimConfig(**{**asdict(base), "queue_per_cpu": q, "max_wait_s": mw, "min_queue": mq})
        r = Sim(c, w).run()
        results.append(r)
        if a.json:
            continue
        if a.sweep:
            print(_row(r), flush=True)
        else:
            for k, v in asdict(r).items():
                if k != "config":
                    print(f"{k:28} {v}")
    if a.json:
        print(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
