"""The owner's task core without sockets: leases, pipelining, stealing, retries, cancel."""

import itertools

import pytest

from actorcore._args import FunctionDescriptor, PreparedArgs
from actorcore._owner import TaskCore, TaskSpec
from actorcore._owner import _task_events as E
from actorcore._owner._tasks import FORCE_KILL_GRACE_S, OPT_RETRY_EXCEPTIONS
from actorcore._refcount import ERROR, INLINE, STORE, ObjectTable
from actorcore.errors import ActorCoreError, TaskCancelledError, WorkerCrashedError

pytestmark = pytest.mark.timeout(10)

FN = FunctionDescriptor(b"f" * 16, b"blob", "f", False)
CPU = {"CPU": 1.0}
NODE = b"n" * 16
OTHER = b"o" * 16
OK = [[INLINE, b"x", None]]


def make_spec(retries=0, opts=0, deps=0, parent=None, shape=CPU):
    args = PreparedArgs()
    args.deps = [object() for _ in range(deps)]
    return TaskSpec(FN, "f", args, shape, retries, opts, 1, parent)


class Owner:
    """Drives a TaskCore by hand; ``now`` moves only when a test says so."""

    def __init__(self, limit=4, linger=0.2):
        self.core = TaskCore(
            max_in_flight=limit, linger_s=linger, next_rid=itertools.count(1).__next__
        )
        self.now = 100.0

    def feed(self, *events):
        out = self.core.handle(events, self.now)
        self.core.validate()
        return out

    def submit(self, *specs):
        return self.feed(*[E.SubmitTask(s) for s in specs])

    def grant(self, rid, name=b"w", node=NODE):
        peer = object()
        out = self.feed(E.LeaseGranted(rid, name * 16, peer, node))
        return peer, out


def of(out, kind):
    return [i for i in out if isinstance(i, kind)]


def lease_of(out):
    return of(out, E.PushTask)[0].lease


# --- leases and pipelining ---------------------------------------------------------------


def test_one_lease_request_per_shape_while_one_is_in_flight():
    o = Owner()
    out = o.submit(make_spec(), make_spec())
    assert len(of(out, E.RequestLease)) == 1
    assert of(out, E.PushTask) == []
    assert len(of(o.submit(make_spec()), E.RequestLease)) == 0
    other = o.submit(make_spec(shape={"CPU": 2.0}))
    assert len(of(other, E.RequestLease)) == 1  # another shape asks for its own


def test_grant_pipelines_up_to_the_limit_then_waits_for_replies():
    o = Owner(limit=2)
    specs = [make_spec() for _ in range(3)]
    rid = of(o.submit(*specs), E.RequestLease)[0].rid
    _peer, out = o.grant(rid)
    pushed = of(out, E.PushTask)
    assert [p.spec for p in pushed] == specs[:2]
    assert len(of(out, E.RequestLease)) == 1  # one still waits: ask for another worker
    lease = pushed[0].lease
    out = o.feed(E.TaskReplied(lease, specs[0].rid, OK))
    assert of(out, E.TaskDone)[0].spec is specs[0]
    assert [p.spec for p in of(out, E.PushTask)] == [specs[2]]


def test_pushes_go_to_the_least_loaded_lease():
    o = Owner(limit=4)
    a, b = make_spec(), make_spec()
    rid = of(o.submit(a), E.RequestLease)[0].rid
    _p, out = o.grant(rid, b"a")
    first = lease_of(out)
    o.core.queues[a.key].leases.append(second := type(first)(b"b" * 16, object(), NODE, o.now))
    out = o.submit(b)
    assert lease_of(out) is second


def test_idle_lease_lingers_then_goes_back():
    o = Owner(linger=0.2)
    s = make_spec()
    rid = of(o.submit(s), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    lease = lease_of(out)
    out = o.feed(E.TaskReplied(lease, s.rid, OK))
    (timer,) = of(out, E.StartTimer)
    assert timer.delay == 0.2 and isinstance(timer.event, E.LingerOver)
    assert of(out, E.ReturnLease) == []
    o.now += 0.2
    out = o.feed(timer.event)
    assert [r.worker_id for r in of(out, E.ReturnLease)] == [lease.worker_id]
    assert o.core.queues[s.key].leases == []


def test_a_lease_used_again_while_lingering_is_kept_for_a_full_linger():
    o = Owner(linger=0.2)
    s1, s2 = make_spec(), make_spec()
    rid = of(o.submit(s1), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    lease = lease_of(out)
    (timer,) = of(o.feed(E.TaskReplied(lease, s1.rid, OK)), E.StartTimer)
    o.now += 0.15
    assert lease_of(o.submit(s2)) is lease  # reused without a new request
    out = o.feed(E.TaskReplied(lease, s2.rid, OK))
    assert of(out, E.StartTimer) == []  # one timer per lease, not one per task
    o.now += 0.05
    out = o.feed(timer.event)
    assert of(out, E.ReturnLease) == []
    (again,) = of(out, E.StartTimer)  # idle for 0.05 s only: the rest of the linger
    assert again.delay == pytest.approx(0.15)
    o.now += 0.15
    assert [r.worker_id for r in of(o.feed(again.event), E.ReturnLease)] == [lease.worker_id]


def test_a_linger_timer_that_fires_while_busy_is_started_again_once_idle():
    o = Owner(linger=0.2)
    s1, s2 = make_spec(), make_spec()
    rid = of(o.submit(s1), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    lease = lease_of(out)
    (timer,) = of(o.feed(E.TaskReplied(lease, s1.rid, OK)), E.StartTimer)
    o.submit(s2)
    o.now += 0.3
    assert o.feed(timer.event) == []  # busy: kept
    (again,) = of(o.feed(E.TaskReplied(lease, s2.rid, OK)), E.StartTimer)
    assert again.delay == 0.2


def test_revoked_lease_returns_once_idle():
    o = Owner()
    s1, s2 = make_spec(), make_spec()
    rid = of(o.submit(s1), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    lease = lease_of(out)
    assert of(o.feed(E.LeaseRevoked(lease.worker_id)), E.ReturnLease) == []  # busy
    out = o.submit(s2)
    assert of(out, E.PushTask) == []  # nothing more to a revoked lease
    out = o.feed(E.TaskReplied(lease, s1.rid, OK))
    assert [r.worker_id for r in of(out, E.ReturnLease)] == [lease.worker_id]


def test_unreachable_worker_is_killed_and_another_requested():
    o = Owner()
    rid = of(o.submit(make_spec()), E.RequestLease)[0].rid
    out = o.feed(E.LeaseUnreachable(rid, b"w" * 16, NODE))
    assert of(out, E.ReturnLease) == [E.ReturnLease(b"w" * 16, True, NODE)]
    assert len(of(out, E.RequestLease)) == 1


def test_refused_lease_fails_the_waiting_tasks():
    o = Owner()
    s = make_spec()
    rid = of(o.submit(s), E.RequestLease)[0].rid
    out = o.feed(E.LeaseFailed(rid, ActorCoreError("no node has GPU")))
    (failed,) = of(out, E.TaskFailed)
    assert failed.spec is s and "GPU" in str(failed.error)


def test_close_returns_every_lease_and_any_later_grant():
    o = Owner()
    s = make_spec()
    rid = of(o.submit(s), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    lease = lease_of(out)
    o.feed(E.TaskReplied(lease, s.rid, OK))
    out = o.feed(E.Close())
    assert [r.worker_id for r in of(out, E.ReturnLease)] == [lease.worker_id]
    out = o.feed(E.LeaseGranted(999, b"z" * 16, object(), NODE))
    assert of(out, E.ReturnLease) == [E.ReturnLease(b"z" * 16, False, NODE)]


def test_peer_closed_forgets_its_lease():
    o = Owner()
    s1, s2 = make_spec(), make_spec()
    rid = of(o.submit(s1), E.RequestLease)[0].rid
    peer, out = o.grant(rid)
    o.feed(E.TaskReplied(lease_of(out), s1.rid, OK))
    o.feed(E.PeerClosed(peer))
    out = o.submit(s2)
    assert of(out, E.PushTask) == [] and len(of(out, E.RequestLease)) == 1


# --- retries ------------------------------------------------------------------------------


def test_worker_death_retries_every_task_in_flight_then_fails_when_out_of_retries():
    o = Owner()
    a, b = make_spec(retries=1), make_spec(retries=0)
    rid = of(o.submit(a, b), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    lease = lease_of(out)
    out = o.feed(E.PushFailed(lease, a.rid, ConnectionError("gone")))
    (failed,) = of(out, E.TaskFailed)
    assert failed.spec is b and isinstance(failed.error, WorkerCrashedError)
    assert len(of(out, E.RequestLease)) == 1  # the lease is lost: a new one for the retry
    assert a.retries_left == 0 and a.lease is None
    _p, out = o.grant(of(out, E.RequestLease)[0].rid, b"x")
    assert [p.spec for p in of(out, E.PushTask)] == [a]
    # the late failure of b's push changes nothing
    assert o.feed(E.PushFailed(lease, b.rid, ConnectionError("gone"))) == []


def test_retry_exceptions_discards_the_result_and_runs_again():
    o = Owner()
    s = make_spec(retries=1, opts=OPT_RETRY_EXCEPTIONS)
    rid = of(o.submit(s), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    lease = lease_of(out)
    bad = [[ERROR, b"boom", None]]
    out = o.feed(E.TaskReplied(lease, s.rid, bad))
    assert of(out, E.DiscardResults) == [E.DiscardResults(bad)]
    assert of(out, E.TaskDone) == [] and of(out, E.PushTask)[0].spec is s
    out = o.feed(E.TaskReplied(lease, s.rid, bad))
    assert of(out, E.TaskDone)[0].results == bad  # out of retries: the error is the result


def test_task_exception_is_a_result_without_retry_exceptions():
    o = Owner()
    s = make_spec(retries=3)
    rid = of(o.submit(s), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    out = o.feed(E.TaskReplied(lease_of(out), s.rid, [[ERROR, b"boom", None]]))
    assert of(out, E.TaskDone)[0].spec is s and of(out, E.PushTask) == []


def test_system_error_reply_fails_without_retry():
    o = Owner()
    s = make_spec(retries=3)
    rid = of(o.submit(s), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    out = o.feed(E.TaskRejected(lease_of(out), s.rid, ActorCoreError("cannot unpickle")))
    assert of(out, E.TaskFailed)[0].spec is s


# --- stealing and blocked workers ------------------------------------------------------------


def test_stalled_pipeline_asks_for_a_worker_and_steals_back_the_queued_tasks():
    o = Owner(limit=4)
    long, short = make_spec(), make_spec()
    rid = of(o.submit(long, short), E.RequestLease)[0].rid
    old_peer, out = o.grant(rid, b"a")
    old = lease_of(out)
    (timer,) = of(out, E.StartTimer)  # pipelined: a stall check is due
    assert isinstance(timer.event, E.StallCheck)
    o.now += 0.001
    out = o.feed(timer.event)
    assert of(out, E.RequestLease) == []  # not stalled yet
    (timer,) = of(out, E.StartTimer)
    o.now += 0.05
    out = o.feed(timer.event)
    (req,) = of(out, E.RequestLease)
    new_peer, out = o.grant(req.rid, b"b")
    assert of(out, E.StealTasks) == [E.StealTasks(old_peer)]
    out = o.feed(E.TasksReturned(old_peer, [short.rid], False))
    (push,) = of(out, E.PushTask)
    assert push.spec is short and push.lease.peer is new_peer
    assert list(old.in_flight) == [long.rid]


def test_a_stalled_lease_takes_no_more_tasks():
    o = Owner(limit=4)
    a, b = make_spec(), make_spec()
    rid = of(o.submit(a), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    o.now += 1.0  # a has run for a second
    out = o.submit(b)
    assert of(out, E.PushTask) == [] and len(of(out, E.RequestLease)) == 1


def test_blocked_worker_hands_back_tasks_and_is_paused_until_a_reply():
    o = Owner(limit=4)
    a, b, c = make_spec(), make_spec(), make_spec()
    rid = of(o.submit(a, b), E.RequestLease)[0].rid
    peer, out = o.grant(rid)
    lease = lease_of(out)
    out = o.feed(E.TasksReturned(peer, [b.rid], True))
    assert of(out, E.PushTask) == [] and len(of(out, E.RequestLease)) == 1
    assert lease.paused and b.lease is None
    assert of(o.submit(c), E.PushTask) == []
    out = o.feed(E.TaskReplied(lease, a.rid, OK))
    assert not lease.paused
    assert [p.spec for p in of(out, E.PushTask)] == [b, c]  # handed-back one first


# --- arguments -------------------------------------------------------------------------------


def test_tasks_with_ref_arguments_wait_for_them():
    o = Owner()
    s = make_spec(deps=2)
    out = o.submit(s)
    assert of(out, E.ResolveDeps) == [E.ResolveDeps(s)] and of(out, E.RequestLease) == []
    resolved = [[0, INLINE, b"a", b"1"], [1, INLINE, b"b", b"2"]]
    out = o.feed(E.DepsReady(s, resolved))
    assert len(of(out, E.RequestLease)) == 1
    _p, out = o.grant(of(out, E.RequestLease)[0].rid)
    assert lease_of(out) is not None and s.resolved == resolved


def test_a_failed_argument_fails_the_task():
    o = Owner()
    s = make_spec(deps=1)
    o.submit(s)
    err = ValueError("upstream")
    assert of(o.feed(E.DepsFailed(s, err)), E.TaskFailed) == [E.TaskFailed(s, err)]


# --- cancel --------------------------------------------------------------------------------


def test_cancel_of_a_queued_task_fails_it_here_and_of_a_running_one_tells_its_worker():
    o = Owner(limit=1)
    a, b = make_spec(), make_spec()
    rid = of(o.submit(a, b), E.RequestLease)[0].rid
    peer, _out = o.grant(rid)
    out = o.feed(E.CancelTask(b.return_ids[0], False, True))
    (failed,) = of(out, E.TaskFailed)
    assert failed.spec is b and isinstance(failed.error, TaskCancelledError)
    out = o.feed(E.CancelTask(a.return_ids[0], True, False))
    lease = a.lease
    assert out == [
        E.SendCancel(peer, a.task_id, True, False),
        E.StartTimer(FORCE_KILL_GRACE_S, E.ForceKill(a, lease)),
    ]
    out = o.feed(E.CancelTask(b"?" * 16, False, True))
    assert out == [E.NotATask(b"?" * 16, False, True)]
    # the worker did not end itself (its loop starved): its daemon kills it
    assert o.feed(E.ForceKill(a, lease)) == [E.ReturnLease(lease.worker_id, True, lease.node_id)]


def test_a_forced_cancel_kills_nothing_once_the_task_answered():
    o = Owner(limit=2)
    a, b = make_spec(), make_spec()
    rid = of(o.submit(a, b), E.RequestLease)[0].rid
    o.grant(rid)
    lease = a.lease
    (timer,) = of(o.feed(E.CancelTask(a.return_ids[0], True, True)), E.StartTimer)
    o.feed(E.TaskReplied(lease, a.rid, OK))  # it ended (or answered) within the grace
    assert of(o.feed(timer.event), E.ReturnLease) == []  # b runs on there, untouched
    # a plain cancel starts no timer
    assert of(o.feed(E.CancelTask(b.return_ids[0], False, True)), E.StartTimer) == []


def test_a_forced_cancel_of_a_task_queued_behind_another_kills_nothing():
    o = Owner(limit=2)
    a, b = make_spec(), make_spec()
    rid = of(o.submit(a, b), E.RequestLease)[0].rid
    o.grant(rid)
    (timer,) = of(o.feed(E.CancelTask(b.return_ids[0], True, True)), E.StartTimer)
    assert of(o.feed(timer.event), E.ReturnLease) == []  # a, running first, is not killed


def test_cancel_while_waiting_for_arguments():
    o = Owner()
    s = make_spec(deps=1)
    o.submit(s)
    assert of(o.feed(E.CancelTask(s.return_ids[0], False, True)), E.TaskFailed)
    assert o.feed(E.DepsReady(s, [[0, INLINE, b"", b"1"]])) == []  # nothing runs


def test_cancel_children_cancels_what_the_parent_submitted():
    o = Owner(limit=1)
    parent = b"p" * 16
    a, b, other = make_spec(parent=parent), make_spec(parent=parent), make_spec()
    rid = of(o.submit(a, b, other), E.RequestLease)[0].rid
    peer, _out = o.grant(rid)
    out = o.feed(E.CancelChildren(parent, False))
    assert of(out, E.SendCancel) == [E.SendCancel(peer, a.task_id, False, True)]
    assert [f.spec for f in of(out, E.TaskFailed)] == [b]
    assert not other.cancelled
    # the worker's answer to a cancelled task in flight fails it, even with retries left
    a.retries_left = 3
    out = o.feed(E.PushFailed(a.lease, a.rid, ConnectionError("killed")))
    assert isinstance(of(out, E.TaskFailed)[0].error, TaskCancelledError)


# --- other nodes -----------------------------------------------------------------------------


def test_a_lease_on_another_node_reports_where_results_are():
    o = Owner()
    s = make_spec()
    rid = of(o.submit(s), E.RequestLease)[0].rid
    _p, out = o.grant(rid, node=OTHER)
    out = o.feed(E.TaskReplied(lease_of(out), s.rid, [[STORE, 10, None]]))
    assert of(out, E.TaskDone)[0].node_id == OTHER


def test_redirect_asks_the_other_daemon():
    o = Owner()
    rid = of(o.submit(make_spec()), E.RequestLease)[0].rid
    out = o.feed(E.LeaseRedirected(rid, OTHER, ("d", "10.0.0.2", 7000)))
    (req,) = of(out, E.RequestLease)
    assert req.node_id == OTHER and req.daemon == ("d", "10.0.0.2", 7000) and req.rid != rid
    assert o.feed(E.LeaseGranted(rid, b"w" * 16, object(), OTHER)) == [
        E.ReturnLease(b"w" * 16, False, OTHER)
    ]  # a stale grant for the old request goes back


def test_node_death_retries_its_tasks_and_asks_again_for_a_request_sent_there():
    o = Owner(limit=1)
    a, b = make_spec(retries=1), make_spec(retries=0)
    rid = of(o.submit(a, b), E.RequestLease)[0].rid
    _p, out = o.grant(rid, node=OTHER)
    (req,) = of(out, E.RequestLease)  # b waits for a second worker
    out = o.feed(E.LeaseRedirected(req.rid, OTHER, ("d", "h", 1)))
    out = o.feed(E.NodeDied(OTHER))
    assert a.retries_left == 0 and a.lease is None
    (again,) = of(out, E.RequestLease)
    assert again.node_id is None  # asked again, locally
    _p, out = o.grant(again.rid, b"x", node=NODE)
    assert [p.spec for p in of(out, E.PushTask)] == [a]
    assert o.core.queues[a.key].leases[0].node_id == NODE


def test_an_unreachable_redirect_is_asked_again_locally_after_a_pause_then_fails():
    from actorcore._owner._tasks import UNREACHABLE_RETRY_S, UNREACHABLE_TRIES
    from actorcore.errors import ConnectionBrokenError

    o = Owner()
    s = make_spec()
    rid = of(o.submit(s), E.RequestLease)[0].rid
    for _ in range(UNREACHABLE_TRIES):
        (req,) = of(o.feed(E.LeaseRedirected(rid, OTHER, ("d", "h", 1))), E.RequestLease)
        out = o.feed(E.LeaseFailed(req.rid, ConnectionBrokenError("node gone")))
        assert not of(out, E.TaskFailed) and not of(out, E.RequestLease)  # no busy loop
        (timer,) = of(out, E.StartTimer)
        assert timer.delay == UNREACHABLE_RETRY_S
        (again,) = of(o.feed(timer.event), E.RequestLease)
        assert again.node_id is None  # the local daemon, who learns of the death
        rid = again.rid
    (req,) = of(o.feed(E.LeaseRedirected(rid, OTHER, ("d", "h", 1))), E.RequestLease)
    out = o.feed(E.LeaseFailed(req.rid, ConnectionBrokenError("node gone")))
    assert of(out, E.TaskFailed)  # far past any TTL: the task fails with the error
    # a refusal (not a connection error) fails at once, as before
    s2 = make_spec(shape={"CPU": 2.0})
    rid = of(o.submit(s2), E.RequestLease)[0].rid
    (req,) = of(o.feed(E.LeaseRedirected(rid, OTHER, ("d", "h", 1))), E.RequestLease)
    assert of(o.feed(E.LeaseFailed(req.rid, ValueError("no"))), E.TaskFailed)


def test_a_task_whose_worker_could_not_get_its_arguments_resolves_them_again():
    from actorcore._owner._tasks import ARGS_LOST_RETRY_S, ARGS_LOST_TRIES
    from actorcore.errors import ObjectLostError

    o = Owner()
    s = make_spec(retries=0)
    rid = of(o.submit(s), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    for _ in range(ARGS_LOST_TRIES):
        out = o.feed(E.ArgsLost(lease_of(out), s.rid, ObjectLostError("gone with a node")))
        assert not of(out, E.TaskFailed) and s.retries_left == 0  # no retry used
        (timer,) = [t for t in of(out, E.StartTimer) if isinstance(t.event, E.ResolveAgain)]
        assert timer.delay == ARGS_LOST_RETRY_S
        (again,) = of(o.feed(timer.event), E.ResolveDeps)
        assert again.spec is s
        out = o.feed(E.DepsReady(s, []))
        assert of(out, E.PushTask)[0].spec is s
    (failed,) = of(o.feed(E.ArgsLost(lease_of(out), s.rid, ObjectLostError("x"))), E.TaskFailed)
    assert isinstance(failed.error, ObjectLostError)


def test_node_death_leaves_other_nodes_alone():
    o = Owner()
    s = make_spec(retries=0)
    rid = of(o.submit(s), E.RequestLease)[0].rid
    _p, _out = o.grant(rid, node=NODE)
    assert o.feed(E.NodeDied(OTHER)) == []
    assert s.lease is not None


# --- object locations ---------------------------------------------------------------------------


def test_object_table_records_locations_and_reports_objects_lost_with_a_node():
    me = (b"m" * 16, "", 0)
    t = ObjectTable(me[0])
    t.create_owned(b"1" * 16, me)
    t.create_owned(b"2" * 16, me)
    t.add_location(b"1" * 16, NODE)
    t.add_location(b"2" * 16, NODE)
    t.add_location(b"2" * 16, OTHER)
    assert t.locations_of(b"2" * 16) == {NODE, OTHER}
    assert t.node_gone(NODE) == [b"1" * 16]
    assert t.locations_of(b"2" * 16) == {OTHER}
    assert t.locations_of(b"?" * 16) == frozenset()


def test_a_worker_gone_idle_steals_what_waits_behind_a_long_task():
    o = Owner(limit=4)
    long, queued, c = make_spec(), make_spec(), make_spec()
    rid = of(o.submit(long, queued), E.RequestLease)[0].rid
    old_peer, out = o.grant(rid, b"a")
    assert len(of(out, E.PushTask)) == 2  # pipelined behind the long one
    o.now += 0.05  # the old lease finished nothing since: stalled
    (req,) = of(o.submit(c), E.RequestLease)
    _new_peer, out = o.grant(req.rid, b"b")
    (push,) = of(out, E.PushTask)
    assert push.spec is c
    out = o.feed(E.TaskReplied(push.lease, c.rid, OK))  # the new worker is idle now
    assert of(out, E.StealTasks) == [E.StealTasks(old_peer)]


def test_a_lease_request_carries_where_the_first_tasks_store_arguments_live():
    o = Owner()
    s = make_spec()
    s.resolved = [[0, STORE, 100 << 20, b"oid", [NODE, OTHER], None], [1, INLINE, b"x", b"o2"]]
    (req,) = of(o.submit(s), E.RequestLease)
    assert req.args == {NODE: 100 << 20, OTHER: 100 << 20}
    (req2,) = of(o.submit(make_spec(shape={"CPU": 2.0})), E.RequestLease)
    assert req2.args is None  # no store arguments


def test_spread_tasks_are_not_pipelined():
    from actorcore.scheduler._resources import SPREAD_KEY

    o = Owner(limit=4)
    shape = {"CPU": 1.0, SPREAD_KEY: 0.001}
    a, b = make_spec(shape=shape), make_spec(shape=shape)
    rid = of(o.submit(a, b), E.RequestLease)[0].rid
    _p, out = o.grant(rid)
    assert [p.spec for p in of(out, E.PushTask)] == [a]  # b waits for a lease of its own
    assert len(of(out, E.RequestLease)) == 1
