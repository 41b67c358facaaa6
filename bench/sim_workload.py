"""The simulated cluster and workload of ``bench/sim_scheduler.py``: node sizes,
task shapes, durations and arrivals (bursts, skew), drawn once from a seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from actorcore.scheduler._spill import SpillConfig

__all__ = ["SHAPES", "SHAPE_P", "SimConfig", "Workload"]

# task shapes and their shares; the last one fits no node until the TPU node joins
SHAPES: list[dict[str, float]] = [
    {"CPU": 1.0},
    {"CPU": 2.0},
    {"CPU": 4.0},
    {"CPU": 8.0},
    {"CPU": 1.0, "GPU": 1.0},
    {"CPU": 1.0, "accel": 1.0},
    {"CPU": 1.0, "TPU": 1.0},
]
SHAPE_P = [0.7795, 0.10, 0.05, 0.03, 0.03, 0.01, 0.0005]
_SPILL = SpillConfig()


@dataclass(frozen=True, slots=True)
class SimConfig:
    nodes: int = 1000
    tasks: int = 1_000_000
    load: float = 0.7  # offered CPU load / cluster CPUs over the arrival span
    burst_share: float = 0.3  # tasks submitted in bursts on one node
    burst_per_node: int = 20  # a burst is this many tasks per node of the cluster
    hot_nodes: float = 0.02  # share of nodes where most submissions happen
    hot_share: float = 0.8
    by_capacity: bool = False  # other submissions: per node uniform, or by its CPUs
    report_s: float = 0.1
    report_latency_s: float = 0.001
    hop_s: float = 0.0005  # one way, node <-> placer
    arg_share: float = 0.1  # tasks with a large argument somewhere
    queue_per_cpu: float = _SPILL.queue_per_cpu
    max_wait_s: float = _SPILL.max_wait_s
    min_queue: int = _SPILL.min_queue
    seed: int = 1
    # the local queue lets smaller work start ahead of older work that does not fit
    # yet (backfill, as LocalScheduler does), until the oldest has waited this long:
    # then it gets the resources first (inf: never; 0.1 was tried, see RESULTS.md)
    starve_s: float = float("inf")


class Workload:
    """Nodes and tasks, drawn once from a seeded generator (plain lists: fast to index)."""

    def __init__(self, c: SimConfig) -> None:
        rng = np.random.default_rng(c.seed)
        cpus = rng.choice([4.0, 8.0, 16.0, 64.0], size=c.nodes, p=[0.4, 0.3, 0.2, 0.1])
        gpu = (cpus >= 16) & (rng.random(c.nodes) < 0.3)
        accel = rng.random(c.nodes) < 0.05
        gpu[0] = accel[-1] = True  # every shape but TPU fits some node, at any size
        self.totals: list[dict[str, float]] = []
        for i in range(c.nodes):
            t = {"CPU": float(cpus[i])}
            if gpu[i]:
                t["GPU"] = 4.0
            if accel[i]:
                t["accel"] = 4.0
            self.totals.append(t)
        n = c.tasks
        self.shape = rng.choice(len(SHAPES), size=n, p=SHAPE_P).tolist()
        kind = rng.random(n)
        dur = np.where(kind < 0.85, rng.exponential(0.05, n), rng.exponential(0.5, n))
        tail = kind >= 0.99
        dur[tail] = np.minimum(60.0, 1.0 * (1.0 + rng.pareto(1.5, int(tail.sum()))))
        self.duration = dur.tolist()
        cpu_of = np.array([s["CPU"] for s in SHAPES])[np.array(self.shape)]
        rate = c.load * float(cpus.sum()) / float((cpu_of * dur).mean())
        span = n / rate
        self.arrival, self.origin = self._arrivals(c, rng, n, span, cpus / cpus.sum())
        has_arg = rng.random(n) < c.arg_share
        self.arg_node = np.where(has_arg, rng.integers(0, c.nodes, n), -1).tolist()
        self.arg_bytes = rng.integers(1 << 20, 100 << 20, n).tolist()
        self.span = span

    @staticmethod
    def _arrivals(
        c: SimConfig, rng: Any, n: int, span: float, share: Any
    ) -> tuple[list[float], list[int]]:
        n_hot = max(1, int(c.nodes * c.hot_nodes))
        hot = rng.choice(c.nodes, size=n_hot, replace=False)
        n_burst = int(n * c.burst_share)
        n_base = n - n_burst
        t = rng.random(n_base) * span
        origin = np.where(
            rng.random(n_base) < c.hot_share,
            hot[rng.integers(0, n_hot, n_base)],
            rng.choice(c.nodes, size=n_base, p=share)
            if c.by_capacity
            else rng.integers(0, c.nodes, n_base),
        )
        bursts = max(1, n_burst // max(1, c.burst_per_node * c.nodes)) if n_burst else 0
        if bursts:
            which = rng.integers(0, bursts, n_burst)
            b_start = rng.random(bursts) * span * 0.9
            b_node = hot[rng.integers(0, n_hot, bursts)]
            t = np.concatenate([t, b_start[which] + rng.random(n_burst) * 0.01])
            origin = np.concatenate([origin, b_node[which]])
        order = np.argsort(t, kind="stable")
        return t[order].tolist(), origin[order].tolist()
