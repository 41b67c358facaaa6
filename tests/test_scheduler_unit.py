"""The local scheduler as a state machine: events in, instructions out, no I/O."""

import pytest

from actorcore import scheduler as S


def sched(cpus=2.0, **kw):
    return S.LocalScheduler({"CPU": cpus, "GPU": 1.0, "disk": 2.0}, **kw)


def of(instrs, kind):
    return [i for i in instrs if isinstance(i, kind)]


def start(s, *ids):
    out = []
    for wid in ids:
        out += s.worker_started(wid)
    return out


def test_lease_waits_for_a_worker_then_is_granted():
    s = sched()
    out = s.request_lease("r1", {"CPU": 1}, "owner")
    assert of(out, S.StartWorker) == [S.StartWorker(1)]
    assert not of(out, S.GrantLease)
    out = start(s, b"w1")
    assert of(out, S.GrantLease) == [S.GrantLease("r1", b"w1")]
    assert s.available["CPU"] == 1.0
    s.validate()


def test_lease_waits_for_resources_and_revokes_other_owners():
    s = sched(cpus=1)
    start(s, b"w1", b"w2")
    assert of(s.request_lease("a", {"CPU": 1}, "alice"), S.GrantLease)
    out = s.request_lease("b", {"CPU": 1}, "bob")
    assert not of(out, S.GrantLease)
    assert of(out, S.RevokeLease) == [S.RevokeLease(b"w1", "alice")]
    # asking again does not revoke twice
    assert not of(s.request_lease("c", {"CPU": 1}, "bob"), S.RevokeLease)
    out = s.return_lease(b"w1")
    assert of(out, S.GrantLease) == [S.GrantLease("b", b"w1")]
    s.validate()


def test_the_same_owner_is_not_asked_to_give_back_its_own_lease():
    s = sched(cpus=1)
    start(s, b"w1", b"w2")
    s.request_lease("a", {"CPU": 1}, "alice")
    assert not of(s.request_lease("a2", {"CPU": 1}, "alice"), S.RevokeLease)


def test_infeasible_request_warns_once_and_keeps_waiting():
    s = sched()
    start(s, b"w1")
    out = s.request_lease("r", {"CPU": 1, "tpu": 1}, "o")
    assert of(out, S.Infeasible) == [S.Infeasible("r", {"tpu": 1.0})]
    assert not of(s.request_lease("r2", {"CPU": 1}, "o"), S.Infeasible)
    assert [r.key for r in s.leases] == ["r"]


def test_blocked_worker_gives_its_cpu_back_until_it_unblocks():
    s = sched(cpus=1)
    start(s, b"w1", b"w2")
    s.request_lease("a", {"CPU": 1}, "o")
    assert not of(s.request_lease("b", {"CPU": 1}, "o"), S.GrantLease)
    out = s.worker_blocked(b"w1", True)
    assert of(out, S.GrantLease) == [S.GrantLease("b", b"w2")]
    s.worker_blocked(b"w1", False)
    assert s.available["CPU"] == -1.0  # oversubscribed until someone returns
    s.return_lease(b"w2")
    assert s.available["CPU"] == 0.0
    s.validate()


def test_actor_with_resources_gets_a_dedicated_worker_and_frees_it():
    s = sched()
    start(s, b"w1")
    out = s.place_actor(b"A", {"CPU": 1, "GPU": 1})
    assert of(out, S.HostActor) == [S.HostActor(b"A", b"w1")]
    assert s.workers[b"w1"].role is S.WorkerRole.DEDICATED
    assert s.available["GPU"] == 0.0
    out = s.actor_removed(b"A")
    assert of(out, S.StopWorker) == [S.StopWorker(b"w1")]
    assert s.available["GPU"] == 1.0 and s.available["CPU"] == 2.0
    s.validate()


def test_light_actors_are_packed_into_shared_workers():
    s = sched(cpus=2, max_shared_workers=2, actors_per_shared_worker=3)
    start(s, b"w1", b"w2", b"w3")
    hosts = []
    for i in range(6):
        hosts += [h.worker_id for h in of(s.place_actor(b"a%d" % i, {}), S.HostActor)]
    assert len(hosts) == 6
    assert set(hosts) == {b"w1", b"w2"}  # spread over two hosts, then packed
    assert s.available == {"CPU": 2.0, "GPU": 1.0, "disk": 2.0}  # light actors hold nothing
    # both hosts full: the next light actor takes another worker
    out = s.place_actor(b"a6", {})
    assert of(out, S.HostActor) == [S.HostActor(b"a6", b"w3")]
    s.validate()


def test_worker_death_releases_resources_and_reports_its_actors():
    s = sched()
    start(s, b"w1", b"w2")
    s.place_actor(b"A", {"CPU": 1})
    s.place_actor(b"L", {})
    dedicated = next(w for w, i in s.workers.items() if i.role is S.WorkerRole.DEDICATED)
    actors, _ = s.worker_died(dedicated)
    assert actors == [b"A"]
    assert s.available["CPU"] == 2.0
    s.validate()


def test_owner_gone_stops_its_leased_workers_and_drops_its_requests():
    s = sched(cpus=1)
    start(s, b"w1")
    s.request_lease("a", {"CPU": 1}, "alice")
    s.request_lease("a2", {"CPU": 1}, "alice")
    out = s.owner_gone("alice")
    assert of(out, S.StopWorker) == [S.StopWorker(b"w1")]
    assert not s.leases
    assert s.available["CPU"] == 1.0
    s.validate()


def test_idle_workers_are_reaped_down_to_the_pool_size():
    s = sched()
    for i, t in enumerate([0.0, 1.0, 2.0, 50.0]):
        s.worker_started(b"w%d" % i, now=t)
    out = s.reap_idle(now=100.0, idle_timeout=60.0, keep=2)
    assert of(out, S.StopWorker) == [S.StopWorker(b"w0"), S.StopWorker(b"w1")]


def test_a_shared_host_left_without_actors_is_reaped_like_an_idle_worker():
    s = sched()
    s.worker_started(b"w0", now=0.0)
    assert of(s.place_actor(b"a", {}), S.HostActor) == [S.HostActor(b"a", b"w0")]
    assert s.reap_idle(now=500.0, idle_timeout=60.0, keep=0) == []  # hosting: kept
    s.actor_removed(b"a")
    assert s.reap_idle(now=510.0, idle_timeout=60.0, keep=0) == []  # empty from now on
    assert s.reap_idle(now=560.0, idle_timeout=60.0, keep=0) == []
    assert of(s.place_actor(b"b", {}), S.HostActor) == [S.HostActor(b"b", b"w0")]
    s.actor_removed(b"b")  # a new actor meanwhile: its empty time starts again
    assert s.reap_idle(now=580.0, idle_timeout=60.0, keep=0) == []
    assert s.reap_idle(now=641.0, idle_timeout=60.0, keep=0) == [S.StopWorker(b"w0")]
    assert not s.workers
    s.validate()


def test_worker_starts_are_bounded():
    s = S.LocalScheduler({"CPU": 1000.0}, max_workers=4)
    out = []
    for i in range(10):
        out += s.request_lease(i, {"CPU": 1}, "o")
    assert sum(x.count for x in of(out, S.StartWorker)) == 4


@pytest.mark.parametrize("shape", [{"CPU": -1}, {"CPU": "x"}])
def test_bad_shapes_are_refused(shape):
    with pytest.raises((ValueError, TypeError)):
        sched().request_lease("r", shape, "o")


def test_keep_warm_replaces_dead_workers():
    s = sched()
    assert of(s.keep_warm(2), S.StartWorker) == [S.StartWorker(2)]
    assert s.keep_warm(2) == []  # already starting
    start(s, b"w1", b"w2")
    s.worker_died(b"w1")
    assert of(s.keep_warm(2), S.StartWorker) == [S.StartWorker(1)]


def test_placement_group_reserves_bundles_and_work_runs_inside_it():
    from actorcore.scheduler import PlacementGroupReady, bundle_shape

    s = sched(cpus=2)
    start(s, b"w1", b"w2", b"w3")
    out = s.create_placement_group(b"\x01", [{"CPU": 1}, {"disk": 1}])
    assert of(out, PlacementGroupReady) == [PlacementGroupReady(b"\x01")]
    assert s.available["CPU"] == 1.0 and s.available["disk"] == 1.0
    inside = bundle_shape({"CPU": 1}, "01", 0)
    assert of(s.request_lease("in", inside, "o"), S.GrantLease)
    # the bundle is used up: a second task for it waits, an outside one still runs
    assert not of(s.request_lease("in2", inside, "o"), S.GrantLease)
    assert of(s.request_lease("out", {"CPU": 1}, "o"), S.GrantLease)
    s.validate()


def test_removing_a_group_stops_its_work_and_returns_resources():
    from actorcore.scheduler import bundle_shape

    s = sched(cpus=2)
    start(s, b"w1", b"w2")
    s.create_placement_group(b"\x02", [{"CPU": 2}])
    grant = of(s.request_lease("in", bundle_shape({"CPU": 1}, "02", -1), "o"), S.GrantLease)[0]
    out = s.remove_placement_group(b"\x02")
    assert S.StopWorker(grant.worker_id) in out
    assert s.available["CPU"] == 2.0
    assert not any("group" in k for k in s.total)
    s.validate()


def test_group_that_does_not_fit_now_waits_and_one_that_never_fits_warns():
    from actorcore.scheduler import PlacementGroupReady

    s = sched(cpus=2)
    start(s, b"w1")
    s.request_lease("busy", {"CPU": 2}, "o")
    assert not of(s.create_placement_group(b"\x03", [{"CPU": 1}]), PlacementGroupReady)
    out = s.create_placement_group(b"\x04", [{"CPU": 8}])
    assert of(out, S.Infeasible)
    out = s.return_lease(b"w1")
    assert of(out, PlacementGroupReady) == [PlacementGroupReady(b"\x03")]


def test_light_actors_waiting_for_a_host_start_one_worker_not_one_each():
    s = S.LocalScheduler({"CPU": 2.0}, max_shared_workers=1, actors_per_shared_worker=2)
    out = []
    for i in range(50):
        out += s.place_actor(b"a%d" % i, {})
    assert sum(x.count for x in of(out, S.StartWorker)) == 1
    out = start(s, b"w1")
    assert len(of(out, S.HostActor)) == 2  # the host is full; one more worker for the rest
    assert sum(x.count for x in of(out, S.StartWorker)) == 1
