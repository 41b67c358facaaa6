"""Placement groups on a real node."""

import os

import pytest

from actorcore.testing import list_state, wait_for


@pytest.mark.timeout(90)
def test_group_reserves_resources_and_runs_work_inside(fresh_runtime):
    import actorcore as ac
    from actorcore.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    fresh_runtime(num_cpus=2, resources={"custom": 2})
    pg = ac.util.placement_group([{"CPU": 1}, {"custom": 1}], strategy="PACK")
    assert pg.wait(timeout_seconds=20)
    assert ac.get(pg.ready(), timeout=10) is True
    avail = ac.available_resources()
    assert avail["CPU"] <= 1.0 and avail["custom"] == 1.0

    @ac.remote
    def where():
        return os.getpid()

    inside = where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0))
    assert isinstance(ac.get(inside.remote(), timeout=30), int)

    @ac.remote(num_cpus=1)
    class InBundle:
        def ping(self):
            return "pong"

    a = InBundle.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    assert ac.get(a.ping.remote(), timeout=30) == "pong"
    # the bundle's one CPU is held by the actor: another task for that bundle waits
    with pytest.raises(ac.errors.GetTimeoutError):
        ac.get(inside.remote(), timeout=1.0)

    ac.util.remove_placement_group(pg)
    aid = a.id.hex()
    wait_for(
        lambda: any(x["actor_id"] == aid and x["state"] == "DEAD" for x in list_state("actors")),
        30,
        what="the actor in the removed group is dead",
    )
    with pytest.raises(ac.errors.ActorDiedError):
        ac.get(a.ping.remote(), timeout=30)
    table = {g["placement_group_id"]: g for g in ac.util.placement_group_table()}
    assert pg.id.hex() not in table


@pytest.mark.timeout(60)
def test_infeasible_group_never_becomes_ready_and_bad_bundles_fail_at_once(fresh_runtime):
    import actorcore as ac

    fresh_runtime(num_cpus=1)
    pg = ac.util.placement_group([{"CPU": 4}])
    assert not pg.wait(timeout_seconds=0.5)
    ac.util.remove_placement_group(pg)
    with pytest.raises(ValueError):
        ac.util.placement_group([])
    with pytest.raises(ValueError):
        ac.util.placement_group([{"CPU": 1}], strategy="NEAR")
    named = ac.util.placement_group([{"CPU": 0.5}], name="mine")
    assert ac.util.get_placement_group("mine") == named
    with pytest.raises(ValueError, match="exists"):
        ac.util.placement_group([{"CPU": 0.1}], name="mine")
