"""actorcore.serve's state machines and batching, without processes or sockets."""

from __future__ import annotations

import asyncio
import random

import pytest

from actorcore.serve import AutoscalingConfig, DeploymentConfig, batch
from actorcore.serve._autoscale import AutoscalingPolicy
from actorcore.serve._router_core import RouterCore
from actorcore.serve._state import (
    DeploymentState,
    DeploymentStatusKind,
    DrainReplica,
    Publish,
    StartReplica,
    StopReplica,
)

pytestmark = pytest.mark.timeout(30)


def test_router_balances_and_never_exceeds_the_bound():
    core = RouterCore(3, random.Random(1))
    core.set_replicas(["a", "b", "c"])
    got = [core.try_acquire() for _ in range(9)]
    assert sorted(got) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert core.try_acquire() is None
    core.validate()
    # a waiter is granted the slot a finished request frees, in FIFO order
    assert core.enqueue("w1") == []
    assert core.enqueue("w2") == []
    grants = core.release("b")
    assert [(g.waiter, g.replica) for g in grants] == [("w1", "b")]
    assert core.cancel("w2") is True
    assert core.cancel("w1") is False
    core.validate()


def test_router_power_of_two_prefers_the_less_loaded():
    core = RouterCore(100, random.Random(2))
    core.set_replicas(["a", "b"])
    for _ in range(50):
        core.try_acquire()
    assert abs(core.in_flight["a"] - core.in_flight["b"]) <= 1
    for _ in range(20):
        core.release("a")
    picks = [core.try_acquire() for _ in range(20)]
    assert picks.count("a") == 20  # two choices out of two: always the emptier one


def test_router_replica_changes_grant_waiters():
    core = RouterCore(1)
    core.set_replicas(["a"])
    assert core.try_acquire() == "a"
    core.enqueue("w")
    grants = core.set_replicas(["a", "b"])
    assert [(g.waiter, g.replica) for g in grants] == [("w", "b")]
    assert core.remove("a") == []
    assert core.release("a") == []  # a release for a removed replica is ignored
    core.validate()


def test_autoscaling_policy_waits_for_the_delays():
    p = AutoscalingPolicy(
        AutoscalingConfig(
            min_replicas=1,
            max_replicas=4,
            target_ongoing_requests=2,
            upscale_delay_s=1.0,
            downscale_delay_s=5.0,
        )
    )
    assert p.decide(0.0, 1, 7) == 1
    assert p.decide(0.5, 1, 7) == 1
    assert p.decide(1.0, 1, 7) == 4
    assert p.decide(2.0, 4, 100) == 4  # capped
    assert p.decide(3.0, 4, 0) == 4
    assert p.decide(7.9, 4, 0) == 4
    assert p.decide(8.0, 4, 0) == 1
    assert p.decide(8.5, 1, 3) == 1  # a short burst changes nothing
    assert p.decide(9.0, 1, 0) == 1


def _kinds(instrs):
    return [type(i).__name__ for i in instrs]


def test_deployment_state_rolls_over_one_replica_at_a_time():
    st = DeploymentState("D", "v1", DeploymentConfig(num_replicas=2), 0.0)
    starts = st.reconcile()
    assert _kinds(starts) == ["StartReplica", "StartReplica"]
    for s in starts:
        st.started(s.rid, {})
    assert st.status() is DeploymentStatusKind.HEALTHY
    old = set(st.routable())
    out = st.set_target("v2", DeploymentConfig(num_replicas=2))
    assert _kinds(out) == ["StartReplica"]
    seen_running = []
    for _ in range(2):
        new = [i for i in out if isinstance(i, StartReplica)]
        assert len(new) == 1
        out = st.started(new[0].rid, {})
        seen_running.append(len(st.routable()))
        drains = [i for i in out if isinstance(i, DrainReplica)]
        assert len(drains) == 1 and drains[0].rid in old
        assert any(isinstance(i, Publish) for i in out)
        out = st.drained(drains[0].rid)
        st.validate()
    assert seen_running == [2, 2]  # never fewer than the target take requests
    assert not (set(st.routable()) & old)
    assert st.status() is DeploymentStatusKind.HEALTHY


def test_deployment_state_replaces_dead_and_gives_up_on_failing_starts():
    st = DeploymentState("D", "v1", DeploymentConfig(num_replicas=1), 0.0)
    (s,) = st.reconcile()
    st.started(s.rid, {})
    out = st.died(s.rid, "killed")
    assert _kinds(out) == ["StopReplica", "Publish", "StartReplica"]
    for _ in range(3):
        new = [i for i in out if isinstance(i, StartReplica)]
        out = st.start_failed(new[0].rid, "boom")
        assert isinstance(out[0], StopReplica)
    assert st.status() is DeploymentStatusKind.DEPLOY_FAILED
    assert st.reconcile() == []


def test_deployment_state_autoscales_and_drains_the_idle():
    cfg = DeploymentConfig(
        autoscaling_config=AutoscalingConfig(
            min_replicas=1,
            max_replicas=3,
            target_ongoing_requests=1,
            upscale_delay_s=0,
            downscale_delay_s=0,
        )
    )
    st = DeploymentState("D", "v1", cfg, 0.0)
    (s,) = st.reconcile()
    st.started(s.rid, {})
    out = st.tick(1.0, {s.rid: 3})
    assert _kinds(out) == ["StartReplica", "StartReplica"]
    for i in out:
        st.started(i.rid, {})
    out = st.tick(2.0, dict.fromkeys(st.routable(), 0) | {s.rid: 1})
    drains = [i for i in out if isinstance(i, DrainReplica)]
    assert len(drains) == 2 and s.rid not in {d.rid for d in drains}  # the busy one stays


def test_config_validation():
    with pytest.raises(ValueError):
        DeploymentConfig(max_ongoing_requests=0)
    with pytest.raises(ValueError):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(TypeError):
        AutoscalingConfig.of({"nope": 1})
    with pytest.raises(ValueError):
        DeploymentConfig(actor_options={"name": "x"})


class _Batcher:
    def __init__(self):
        self.sizes = []

    @batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def double(self, xs):
        self.sizes.append(len(xs))
        return [ValueError(f"bad {x}") if x < 0 else 2 * x for x in xs]

    @batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def broken(self, xs):
        raise RuntimeError("whole batch")


async def test_batch_groups_calls_and_routes_results_and_errors():
    b = _Batcher()
    xs = [1, 2, -3, 4, 5, 6, -7, 8, 9]
    results = await asyncio.gather(*[b.double(x) for x in xs], return_exceptions=True)
    for x, r in zip(xs, results, strict=True):
        if x < 0:
            assert isinstance(r, ValueError) and str(r) == f"bad {x}"
        else:
            assert r == 2 * x
    assert max(b.sizes) == 4 and sum(b.sizes) == len(xs) and len(b.sizes) == 3
    errs = await asyncio.gather(b.broken(1), b.broken(2), return_exceptions=True)
    assert all(isinstance(e, RuntimeError) for e in errs)
    for q in [b.__dict__[k] for k in list(b.__dict__) if k.startswith("__serve_batch_")]:
        q.task.cancel()


def test_batch_needs_async():
    with pytest.raises(TypeError):
        batch(lambda xs: xs)
