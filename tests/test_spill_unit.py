"""The local spill decision: run here or hand to the placer. No I/O."""

import pytest
from actorcore.scheduler import _placer_msgs as M
from actorcore.scheduler._spill import Decision, LocalView, SpillConfig, SpillPolicy

pytestmark = pytest.mark.timeout(30)

LOCAL, SPILL = Decision.LOCAL, Decision.SPILL


def node(cpus=4.0, **kw):
    return LocalView("me", {"CPU": cpus, "mem": 8.0}, **kw)


def test_runs_locally_when_it_fits_now():
    pol = SpillPolicy(SpillConfig(queue_per_cpu=0, min_queue=0, max_wait_s=0))
    assert pol.decide({"CPU": 1}, node(), 0.0) is LOCAL


def test_never_fits_here_always_spills():
    pol = SpillPolicy(SpillConfig(queue_per_cpu=100, max_wait_s=100))
    assert pol.decide({"GPU": 1}, node(), 0.0) is SPILL
    assert pol.decide({"CPU": 5}, node(), 0.0) is SPILL


def test_short_young_queue_stays_local():
    pol = SpillPolicy(SpillConfig(queue_per_cpu=1.0, max_wait_s=0.1))
    v = node(available={"CPU": 0, "mem": 8}, queue_len=2, oldest_enqueued_at=10.0)
    assert pol.decide({"CPU": 1}, v, 10.05) is LOCAL


def test_queue_length_threshold_scales_with_cpus():
    pol = SpillPolicy(SpillConfig(queue_per_cpu=1.0, max_wait_s=10))
    v = node(cpus=4, available={"CPU": 0}, queue_len=4, oldest_enqueued_at=0.0)
    assert pol.decide({"CPU": 1}, v, 0.0) is SPILL
    v = node(cpus=16, available={"CPU": 0}, queue_len=4, oldest_enqueued_at=0.0)
    assert pol.decide({"CPU": 1}, v, 0.0) is LOCAL


def test_old_queue_spills():
    pol = SpillPolicy(SpillConfig(queue_per_cpu=100, max_wait_s=0.1))
    v = node(available={"CPU": 0}, queue_len=1, oldest_enqueued_at=1.0)
    assert pol.decide({"CPU": 1}, v, 1.05) is LOCAL
    assert pol.decide({"CPU": 1}, v, 1.1) is SPILL


def test_free_resources_but_a_queue_keeps_fifo_order():
    # work queued ahead waits for a bigger shape; a new small one queues behind it
    pol = SpillPolicy(SpillConfig(queue_per_cpu=1.0, max_wait_s=1.0))
    v = node(available={"CPU": 2, "mem": 8}, queue_len=1, oldest_enqueued_at=0.0)
    assert pol.decide({"CPU": 1}, v, 0.0) is LOCAL
    v.queue_len = 4
    assert pol.decide({"CPU": 1}, v, 0.0) is SPILL


def test_zero_thresholds_spill_whenever_it_cannot_start_now():
    pol = SpillPolicy(SpillConfig(queue_per_cpu=0, min_queue=0, max_wait_s=0))
    assert pol.decide({"CPU": 1}, node(available={"CPU": 0}), 0.0) is SPILL


def test_strategies():
    pol = SpillPolicy()
    v = node()
    assert pol.decide({"CPU": 1}, v, 0.0, M.SPREAD) is SPILL
    assert pol.decide({"CPU": 1}, v, 0.0, M.NodeAffinity("other")) is SPILL
    assert pol.decide({"CPU": 1}, v, 0.0, M.PlacementGroupTarget(b"g", 0)) is SPILL
    busy = node(available={"CPU": 0}, queue_len=100, oldest_enqueued_at=0.0)
    assert pol.decide({"CPU": 1}, busy, 9.0, M.NodeAffinity("me")) is LOCAL
    assert pol.decide({"CPU": 1}, busy, 9.0, M.NodeAffinity("me", soft=True)) is SPILL
    assert pol.decide({"GPU": 1}, v, 0.0, M.NodeAffinity("me")) is SPILL


def test_config_rejects_negative_thresholds():
    with pytest.raises(ValueError):
        SpillConfig(queue_per_cpu=-1)
