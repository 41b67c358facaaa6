"""Failures on one node (issue 2, item 8): killed workers, retried tasks,
restarted actors, and drivers that exit without cleaning up after themselves.

Workers are killed with SIGKILL, either by the task itself (the first time
only, through a marker file) or from the driver once the task said it started.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from actorcore import errors as E
from actorcore.testing import actor_pid, kill_pid, list_state, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _attempts(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def _record(path) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


# --- shutdown ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_shutdown_leaves_no_child_processes(fresh_runtime):
    """First in the module: the shared ``runtime`` fixture is not started yet."""
    import actorcore as ac

    fresh_runtime(num_cpus=2)

    @ac.remote
    def where():
        return os.getpid()

    @ac.remote
    class Holder:
        def where(self):
            return os.getpid()

    h = Holder.remote()
    ac.get([where.remote(), h.where.remote()], timeout=30)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    assert len(before) >= 3  # daemon, fork server, workers
    ac.shutdown()
    assert not [p for p in me.children(recursive=False) if p.status() != psutil.STATUS_ZOMBIE]
    wait_for(lambda: all(_gone(pid) for pid in before), 10, what="the node's processes exit")
    assert not ac.is_initialized()


# --- a driver whose node daemon died ----------------------------------------------------


@pytest.mark.timeout(90)
def test_a_driver_whose_daemon_died_gets_a_clear_connection_error_naming_the_node(
    fresh_runtime,
):
    import actorcore as ac
    from actorcore import _global as G

    info = fresh_runtime(num_cpus=1)
    rt = G.require()
    procs = _tree(list_state("node")["pid"])
    try:
        for p in reversed(procs):  # its workers first, then the daemon itself
            kill_pid(p.pid)
        wait_for(lambda: rt.broken is not None, 30, what="the driver noticing")
        for call in (ac.nodes, ac.cluster_resources):
            with pytest.raises(ConnectionError) as got:
                call()
            text = str(got.value)
            assert rt.node.node_id.hex() in text and "daemon" in text, text
    finally:
        for p in procs:
            kill_pid(p.pid)
        for d in _paths(info.session):
            if os.path.isdir(d):
                shutil.rmtree(d, ignore_errors=True)
            elif os.path.exists(d):
                os.unlink(d)


# --- tasks whose worker dies ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_task_killing_its_worker_once_is_retried(runtime, tmp_path):
    ac = runtime
    marker = tmp_path / "first-run"

    @ac.remote
    def dies_once(path):
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    pid = ac.get(dies_once.remote(str(marker)), timeout=45)
    killed = int(marker.read_text())
    assert pid != killed
    assert _gone(killed)


@pytest.mark.timeout(60)
def test_task_killed_from_the_driver_is_retried(runtime, tmp_path):
    ac = runtime
    started = tmp_path / "started"

    @ac.remote
    def long_job(path):
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
            return "first attempt"
        return "second attempt"

    ref = long_job.remote(str(started))
    wait_for(lambda: started.exists() and started.read_text(), 30, what="task started")
    kill_pid(int(started.read_text()))
    assert ac.get(ref, timeout=45) == "second attempt"


@pytest.mark.timeout(60)
def test_no_retries_means_worker_crashed_error(runtime, tmp_path):
    ac = runtime
    log = tmp_path / "attempts"

    @ac.remote(max_retries=0)
    def always_dies(path):
        _record(path)
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(E.WorkerCrashedError):
        ac.get(always_dies.remote(str(log)), timeout=45)
    assert len(_attempts(log)) == 1


@pytest.mark.timeout(60)
def test_default_max_retries_is_three(runtime, tmp_path):
    ac = runtime
    log = tmp_path / "attempts"

    @ac.remote
    def always_dies(path):
        _record(path)
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(E.WorkerCrashedError):
        ac.get(always_dies.remote(str(log)), timeout=45)
    attempts = _attempts(log)
    assert len(attempts) == 4  # the first try and three retries
    assert len(set(attempts)) == 4  # each in a worker of its own


@pytest.mark.timeout(60)
def test_max_retries_option_counts_retries(runtime, tmp_path):
    ac = runtime
    log = tmp_path / "attempts"

    @ac.remote
    def always_dies(path):
        _record(path)
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(E.WorkerCrashedError):
        ac.get(always_dies.options(max_retries=1).remote(str(log)), timeout=45)
    assert len(_attempts(log)) == 2


@pytest.mark.timeout(60)
def test_user_exception_not_retried_by_default(runtime, tmp_path):
    ac = runtime
    log = tmp_path / "attempts"

    @ac.remote(max_retries=3)
    def raises(path):
        _record(path)
        raise ValueError("user error")

    with pytest.raises(ValueError):
        ac.get(raises.remote(str(log)), timeout=30)
    assert len(_attempts(log)) == 1


@pytest.mark.timeout(60)
def test_user_exception_retried_with_retry_exceptions(runtime, tmp_path):
    ac = runtime
    log = tmp_path / "attempts"

    @ac.remote(max_retries=3, retry_exceptions=True)
    def flaky(path):
        _record(path)
        if len(_attempts(path)) < 3:
            raise ValueError("not yet")
        return "third time lucky"

    assert ac.get(flaky.remote(str(log)), timeout=30) == "third time lucky"
    assert len(_attempts(log)) == 3


@pytest.mark.timeout(60)
def test_retry_exceptions_gives_up_after_max_retries(runtime, tmp_path):
    ac = runtime
    log = tmp_path / "attempts"

    @ac.remote(max_retries=1, retry_exceptions=True)
    def hopeless(path):
        _record(path)
        raise KeyError("never")

    with pytest.raises(KeyError):
        ac.get(hopeless.remote(str(log)), timeout=30)
    assert len(_attempts(log)) == 2


@pytest.mark.timeout(60)
def test_dead_task_workers_are_replaced(runtime, tmp_path):
    ac = runtime
    started = tmp_path / "started"

    @ac.remote
    def report(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)

    @ac.remote
    def where(_i):
        return os.getpid()

    ref = report.options(max_retries=0).remote(str(started))
    wait_for(lambda: started.exists() and started.read_text(), 30, what="task started")
    victim = int(started.read_text())
    kill_pid(victim)
    with pytest.raises(E.WorkerCrashedError):
        ac.get(ref, timeout=30)
    pids = ac.get([where.remote(i) for i in range(20)], timeout=30)
    assert victim not in pids
    wait_for(
        lambda: victim not in {w["pid"] for w in list_state("workers")},
        15,
        what="the dead worker is forgotten",
    )
    assert list_state("workers"), "the node has no workers left"


# --- actors whose worker dies -------------------------------------------------------------------


def _make_counter(ac, init_log):
    @ac.remote
    class Counter:
        def __init__(self, path):
            self.n = 0
            with open(path, "a") as f:
                f.write(f"{os.getpid()}\n")

        def incr(self):
            self.n += 1
            return self.n

        def pid(self):
            return os.getpid()

        def hang(self, path):
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(60)
                return "first incarnation"
            return f"retried, n={self.n}"

    return Counter


def _actor_row(actor):
    aid = actor.id.hex()
    for row in list_state("actors"):
        if row["actor_id"] == aid:
            return row
    return None


@pytest.mark.timeout(60)
def test_actor_restarts_and_reruns_init(runtime, tmp_path):
    ac = runtime
    init_log = tmp_path / "inits"
    Counter = _make_counter(ac, init_log)
    c = Counter.options(max_restarts=1).remote(str(init_log))
    assert ac.get([c.incr.remote() for _ in range(3)], timeout=30) == [1, 2, 3]
    old = actor_pid(c)
    kill_pid(old)
    wait_for(
        lambda: (
            (r := _actor_row(c))
            and r["state"] == "ALIVE"
            and r["restarts"] == 1
            and r["pid"] != old
        ),
        30,
        what="actor restarted",
    )
    assert ac.get(c.incr.remote(), timeout=30) == 1  # state was reset by __init__
    assert len(_attempts(init_log)) == 2
    assert ac.get(c.pid.remote(), timeout=30) != old


@pytest.mark.timeout(60)
def test_actor_without_restarts_dies(runtime, tmp_path):
    ac = runtime
    init_log = tmp_path / "inits"
    Counter = _make_counter(ac, init_log)
    c = Counter.remote(str(init_log))
    assert ac.get(c.incr.remote(), timeout=30) == 1
    kill_pid(actor_pid(c))
    wait_for(lambda: (r := _actor_row(c)) and r["state"] == "DEAD", 30, what="actor dead")
    with pytest.raises(E.ActorDiedError):
        ac.get(c.incr.remote(), timeout=30)
    with pytest.raises(E.ActorDiedError):
        ac.get(c.incr.remote(), timeout=30)
    assert len(_attempts(init_log)) == 1


@pytest.mark.timeout(60)
def test_actor_restarts_only_max_restarts_times(runtime, tmp_path):
    ac = runtime
    init_log = tmp_path / "inits"
    Counter = _make_counter(ac, init_log)
    c = Counter.options(max_restarts=1).remote(str(init_log))
    first = actor_pid(c)
    kill_pid(first)
    wait_for(
        lambda: (r := _actor_row(c)) and r["state"] == "ALIVE" and r["pid"] not in (None, first), 30
    )
    kill_pid(actor_pid(c))
    wait_for(lambda: (r := _actor_row(c)) and r["state"] == "DEAD", 30, what="actor dead")
    with pytest.raises(E.ActorDiedError):
        ac.get(c.incr.remote(), timeout=30)
    assert len(_attempts(init_log)) == 2


@pytest.mark.timeout(60)
def test_call_in_flight_fails_with_actor_died(runtime, tmp_path):
    ac = runtime
    init_log = tmp_path / "inits"
    started = tmp_path / "started"
    Counter = _make_counter(ac, init_log)
    c = Counter.options(max_restarts=1).remote(str(init_log))
    ref = c.hang.remote(str(started))
    wait_for(lambda: started.exists() and started.read_text(), 30, what="call started")
    kill_pid(int(started.read_text()))
    with pytest.raises(E.ActorDiedError):
        ac.get(ref, timeout=30)
    # the actor itself came back
    assert ac.get(c.incr.remote(), timeout=30) == 1
    assert len(_attempts(init_log)) == 2


@pytest.mark.timeout(60)
def test_call_in_flight_retried_with_max_task_retries(runtime, tmp_path):
    ac = runtime
    init_log = tmp_path / "inits"
    started = tmp_path / "started"
    Counter = _make_counter(ac, init_log)
    c = Counter.options(max_restarts=1, max_task_retries=1).remote(str(init_log))
    assert ac.get(c.incr.remote(), timeout=30) == 1
    ref = c.hang.remote(str(started))
    wait_for(lambda: started.exists() and started.read_text(), 30, what="call started")
    kill_pid(int(started.read_text()))
    assert ac.get(ref, timeout=30) == "retried, n=0"
    assert len(_attempts(init_log)) == 2


@pytest.mark.timeout(60)
def test_task_retries_do_not_outlive_a_dead_actor(runtime, tmp_path):
    ac = runtime
    init_log = tmp_path / "inits"
    started = tmp_path / "started"
    Counter = _make_counter(ac, init_log)
    c = Counter.options(max_task_retries=3).remote(str(init_log))  # no restarts
    ref = c.hang.remote(str(started))
    wait_for(lambda: started.exists() and started.read_text(), 30, what="call started")
    kill_pid(int(started.read_text()))
    with pytest.raises(E.ActorDiedError):
        ac.get(ref, timeout=30)
    assert len(_attempts(init_log)) == 1


@pytest.mark.timeout(60)
def test_calls_queued_behind_a_dying_call_run_after_restart(runtime, tmp_path):
    ac = runtime
    init_log = tmp_path / "inits"
    started = tmp_path / "started"
    Counter = _make_counter(ac, init_log)
    c = Counter.options(max_restarts=1, max_task_retries=2).remote(str(init_log))
    ref = c.hang.remote(str(started))
    later = [c.incr.remote() for _ in range(3)]
    wait_for(lambda: started.exists() and started.read_text(), 30, what="call started")
    kill_pid(int(started.read_text()))
    assert ac.get(ref, timeout=30) == "retried, n=0"
    assert ac.get(later, timeout=30) == [1, 2, 3]


# --- drivers that exit ------------------------------------------------------------

DRIVER = r"""
import json, os, sys, time
import actorcore as ac
from actorcore.testing import list_state

info = ac.init(num_cpus=2)

@ac.remote
def where():
    return os.getpid()

@ac.remote
class Holder:
    def where(self):
        return os.getpid()

h = Holder.remote()
pids = ac.get([where.remote(), h.where.remote()], timeout=60)
node = list_state("node")
print(json.dumps({"session": info.session, "daemon": node["pid"], "workers": pids}), flush=True)
mode = sys.argv[1]
sys.stdin.readline()  # the test looked at the node; go on
if mode == "return":
    pass
elif mode == "shutdown":
    import psutil
    ac.shutdown()
    left = [p.pid for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE]
    print(json.dumps({"children_after_shutdown": left}), flush=True)
elif mode == "raise":
    raise RuntimeError("the driver failed")
elif mode == "wait":
    time.sleep(120)
"""


def _run_driver(tmp_path, mode):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen(
        [sys.executable, str(script), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
    )


def _read_info(proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the driver did not report its node")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace")
                raise AssertionError(f"the driver exited before reporting:\n{err}")
            buf += chunk
    for line in buf.decode().splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no report in {buf!r}")


def _tree(pid):
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _paths(session):
    return [
        os.path.join("/dev/shm", f"actorcore-{session}"),
        os.path.join(tempfile.gettempdir(), f"actorcore-session-{session}"),
    ]


def _go_and_wait(proc):
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    proc.wait(30)


def _check_driver_exit(tmp_path, mode, end):
    proc = _run_driver(tmp_path, mode)
    procs = []
    info = None
    try:
        info = _read_info(proc)
        procs = _tree(info["daemon"])
        pids = {p.pid for p in procs} | set(info["workers"])
        assert info["daemon"] in pids and len(pids) >= 3
        for pid in info["workers"]:
            assert pid in pids
        for d in _paths(info["session"]):
            assert os.path.isdir(d), d
        end(proc)
        wait_for(lambda: all(_gone(p) for p in pids), 15, what="the node's processes exit")
        wait_for(
            lambda: not any(os.path.exists(d) for d in _paths(info["session"])),
            15,
            what="the session directories are removed",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        stderr = proc.stderr.read().decode(errors="replace")
        stdout = proc.stdout.read().decode(errors="replace")
        proc.stdout.close()
        if not proc.stdin.closed:
            proc.stdin.close()
        proc.stderr.close()
        if info is not None:
            for d in _paths(info["session"]):
                shutil.rmtree(d, ignore_errors=True)
    return proc.returncode, stdout, stderr


@pytest.mark.timeout(90)
def test_driver_returning_leaves_nothing_behind(tmp_path):
    code, _, stderr = _check_driver_exit(tmp_path, "return", _go_and_wait)
    assert code == 0, stderr


@pytest.mark.timeout(90)
def test_driver_calling_shutdown_leaves_nothing_behind(tmp_path):
    code, stdout, stderr = _check_driver_exit(tmp_path, "shutdown", _go_and_wait)
    assert code == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["children_after_shutdown"] == []


@pytest.mark.timeout(90)
def test_driver_raising_leaves_nothing_behind(tmp_path):
    code, _, stderr = _check_driver_exit(tmp_path, "raise", _go_and_wait)
    assert code == 1
    assert "the driver failed" in stderr


@pytest.mark.timeout(90)
def test_driver_killed_leaves_nothing_behind(tmp_path):
    def sigkill(p):
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    code, _, _ = _check_driver_exit(tmp_path, "wait", sigkill)
    assert code == -signal.SIGKILL
