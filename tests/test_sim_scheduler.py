"""The scheduling simulator at small size: every task runs once, no node over-committed."""

import importlib
import os

import pytest

pytestmark = pytest.mark.timeout(60)

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


@pytest.fixture
def sim(monkeypatch):
    monkeypatch.syspath_prepend(_ROOT)  # bench/ lives next to tests/, not installed
    return importlib.import_module("bench.sim_scheduler")


def test_small_simulation_invariants(sim):
    c = sim.SimConfig(nodes=30, tasks=10_000, seed=3)
    w = sim.Workload(c)
    s = sim.Sim(c, w)
    r = s.run()
    s.placer.validate()
    assert r.completed == c.tasks  # every task ran (including the infeasible ones, late)
    assert r.double_runs == 0
    assert r.overcommits == 0
    assert r.local + r.spilled == c.tasks
    assert 0 < r.spilled < c.tasks
    assert r.infeasible_tasks > 0 and r.infeasible_warnings == 1  # one shape, one warning
    assert r.spilled_infeasible_locally >= r.infeasible_tasks
    assert s.placer.held() == [] and s.placer.inflight() == {}
    # the TPU tasks ran on the node that joined for them, and only there
    tpu = len(sim.SHAPES) - 1
    for node, qs in enumerate(s.queues):
        assert not any(qs), f"node {node} still has queued work"
    assert all(s.start_t[i] >= w.span * 0.5 for i in range(c.tasks) if w.shape[i] == tpu)
    for v, totals in zip(s.views, [*w.totals, {"CPU": 64.0, "TPU": 8.0}], strict=True):
        for k, x in totals.items():
            assert abs(v.available[k] - x) < 1e-6, "resources not all given back"
    assert 0 < r.util_mean <= 1.0 and r.wait_p50_ms >= 0


def test_spill_thresholds_change_the_local_share(sim):
    base = sim.SimConfig(nodes=20, tasks=5_000, seed=5)
    w = sim.Workload(base)
    never = sim.SimConfig(nodes=20, tasks=5_000, seed=5, queue_per_cpu=1e9, max_wait_s=1e9)
    always = sim.SimConfig(
        nodes=20, tasks=5_000, seed=5, queue_per_cpu=0, max_wait_s=0, min_queue=0
    )
    r_never = sim.Sim(never, w).run()
    r_always = sim.Sim(always, w).run()
    # never spilling keeps everything but the locally infeasible work at home
    assert r_never.spilled == r_never.spilled_infeasible_locally
    assert r_always.local < r_never.local
    # and spreading skewed submissions over the cluster cuts the tail of queue waits
    assert r_always.wait_p95_ms < r_never.wait_p95_ms
