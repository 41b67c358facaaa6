"""The actor lifecycle as a state machine (no daemon, no sockets)."""

import pytest

from actorcore._node import _lifecycle as L


def info(aid=b"A", **kw):
    kw.setdefault("class_name", "Counter")
    kw.setdefault("spec", {})
    kw.setdefault("owner", b"owner")
    return L.ActorInfo(actor_id=aid, **kw)


def alive(lc, aid=b"A", worker=b"w1"):
    lc.placed(aid, worker)
    return lc.constructed(aid, worker, ["127.0.0.1", 1])


def test_create_place_construct_notifies_callers():
    lc = L.ActorLifecycle()
    out = lc.created(info())
    assert L.Place(b"A", {}) in out
    assert lc.where(b"A", 0) is None  # nobody can be answered yet
    assert lc.placed(b"A", b"w1") == [L.Host(b"A", b"w1")]
    out = lc.constructed(b"A", b"w1", ["h", 1])
    assert L.Notify(b"A") in out
    assert lc.where(b"A", 0) == ["ALIVE", ["h", 1], 0, None]


def test_init_failure_makes_it_dead_with_the_cause():
    lc = L.ActorLifecycle()
    lc.created(info(name="n"))
    lc.placed(b"A", b"w1")
    out = lc.construction_failed(b"A", b"w1", "ValueError: nope")
    assert L.Removed(b"A") in out and L.ReleaseName("default", "n", b"A") in out
    state, _addr, _epoch, cause = lc.where(b"A", 0)
    assert state == "DEAD" and "ValueError: nope" in cause


def test_worker_death_restarts_within_max_restarts_then_dies():
    lc = L.ActorLifecycle()
    lc.created(info(max_restarts=1))
    alive(lc)
    out = lc.worker_died([b"A"], "worker died")
    assert L.Place(b"A", {}) in out
    assert lc.actors[b"A"].phase is L.ActorPhase.RESTARTING
    assert lc.where(b"A", 1) is None  # callers wait for the next incarnation
    alive(lc, worker=b"w2")
    assert lc.where(b"A", 1)[0] == "ALIVE" and lc.where(b"A", 1)[2] == 1
    out = lc.worker_died([b"A"], "worker died again")
    assert L.Notify(b"A") in out
    assert lc.where(b"A", 2)[0] == "DEAD"


def test_infinite_restarts():
    lc = L.ActorLifecycle()
    lc.created(info(max_restarts=-1))
    for i in range(5):
        alive(lc, worker=b"w%d" % i)
        lc.worker_died([b"A"], "x")
    assert lc.actors[b"A"].phase is L.ActorPhase.RESTARTING


def test_kill_unhosts_and_no_restart_kills_for_good():
    lc = L.ActorLifecycle()
    lc.created(info(max_restarts=5))
    alive(lc)
    out = lc.kill(b"A", no_restart=True)
    assert L.Unhost(b"A", b"w1", "killed") in out and L.Removed(b"A") in out
    assert lc.where(b"A", 0)[0] == "DEAD"
    assert lc.kill(b"A", no_restart=True) == []  # idempotent


def test_kill_with_restart_places_again():
    lc = L.ActorLifecycle()
    lc.created(info(max_restarts=1))
    alive(lc)
    out = lc.kill(b"A", no_restart=False)
    assert L.Place(b"A", {}) in out


def test_owner_gone_kills_its_actors_but_not_detached_ones():
    lc = L.ActorLifecycle()
    lc.created(info(b"A"))
    lc.created(info(b"D", detached=True))
    lc.created(info(b"O", owner=b"other"))
    for a in (b"A", b"D", b"O"):
        alive(lc, a)
    lc.owner_gone(b"owner")
    assert lc.actors[b"A"].phase is L.ActorPhase.DEAD
    assert lc.actors[b"D"].phase is L.ActorPhase.ALIVE
    assert lc.actors[b"O"].phase is L.ActorPhase.ALIVE
    assert "owner" in lc.actors[b"A"].death_cause


def test_killed_while_starting_unhosts_the_late_construction():
    lc = L.ActorLifecycle()
    lc.created(info())
    lc.placed(b"A", b"w1")
    lc.kill(b"A", no_restart=True)
    out = lc.constructed(b"A", b"w1", ["h", 1])
    assert L.Unhost(b"A", b"w1", "the actor was killed while starting") in out


def test_illegal_transitions_are_rejected():
    lc = L.ActorLifecycle()
    lc.created(info())
    alive(lc)
    lc.kill(b"A", no_restart=True)
    with pytest.raises(AssertionError):
        lc._set_phase(lc.actors[b"A"], L.ActorPhase.ALIVE)


def test_unknown_actor_is_reported_dead():
    assert L.ActorLifecycle().where(b"nope", 0)[0] == "DEAD"


def test_a_worker_dying_before_construction_places_the_actor_again_once():
    lc = L.ActorLifecycle()
    lc.created(info())
    lc.placed(b"A", b"w1")  # a worker that was dying: its death not seen yet
    assert lc.worker_died([b"A"], "worker died") == [L.Place(b"A", {})]
    assert lc.actors[b"A"].phase is L.ActorPhase.PENDING and lc.actors[b"A"].restarts == 0
    lc.placed(b"A", b"w2")
    out = lc.worker_died([b"A"], "worker died again")  # its __init__ kills workers: it ends
    assert L.Notify(b"A") in out and lc.where(b"A", 0)[0] == "DEAD"


def test_a_constructed_actor_may_again_lose_a_worker_while_restarting():
    lc = L.ActorLifecycle()
    lc.created(info(max_restarts=1))
    lc.placed(b"A", b"w0")
    lc.worker_died([b"A"], "dying worker")  # placed again
    alive(lc, worker=b"w1")
    lc.worker_died([b"A"], "crash")  # a restart
    assert lc.actors[b"A"].restarts == 1
    lc.placed(b"A", b"w2")
    assert lc.worker_died([b"A"], "dying worker") == [L.Place(b"A", {})]  # not a restart
    alive(lc, worker=b"w3")
    assert lc.where(b"A", 1)[0] == "ALIVE" and lc.actors[b"A"].restarts == 1
