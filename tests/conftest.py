"""Test harness.

* ``async def`` tests run on a fresh event loop, once on the default asyncio
  loop and once on uvloop (the ``aloop`` parameter), under a deadline
  (``@pytest.mark.timeout`` or 60 s).
* An exception that reaches the loop's exception handler ("Task exception was
  never retrieved" and friends) fails the test.
* After every test, no child process of this test process may be left, and no
  /dev/shm entry created by actorcore may remain.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import tempfile
import time

import psutil
import pytest
import uvloop

from actorcore.testing import SESSION_MARKER, leftover_processes, leftover_shm

LOOPS = ["asyncio", "uvloop"]

# Everything this test session starts inherits the marker; the leak check looks
# only at processes that carry it (runs side by side do not see each other).
os.environ.setdefault(SESSION_MARKER, f"{os.getpid()}-{time.time()}")
os.environ.setdefault("ACTORCORE_SESSION_TAG", f"t{os.getpid()}")
_TAG = os.environ["ACTORCORE_SESSION_TAG"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function) and "aloop" not in metafunc.fixturenames:
        metafunc.fixturenames.append("aloop")
    if "aloop" in metafunc.fixturenames:
        metafunc.parametrize("aloop", LOOPS)


def _new_loop(impl: str) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if impl == "uvloop" else asyncio.new_event_loop()


def _deadline(item: pytest.Item, default: float = 60.0) -> float:
    marker = item.get_closest_marker("timeout")
    if marker and marker.args:
        return float(marker.args[0]) * 0.9
    return default


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    impl = pyfuncitem.funcargs.get("aloop", "asyncio")
    kwargs = {n: pyfuncitem.funcargs[n] for n in pyfuncitem._fixtureinfo.argnames}
    loop = _new_loop(impl)
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    deadline = _deadline(pyfuncitem)
    try:
        loop.run_until_complete(asyncio.wait_for(fn(**kwargs), deadline))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        gc.collect()
    if errors:
        msgs = [str(ctx.get("exception") or ctx.get("message")) for ctx in errors]
        pytest.fail("exceptions reached the event loop: " + "; ".join(msgs))
    return True


@pytest.fixture
def loop_runner(aloop: str):
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""

    def run(coro, timeout: float = 60.0):
        loop = _new_loop(aloop)
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, timeout))
        finally:
            loop.close()

    return run


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(p: psutil.Process) -> str:
    try:
        chain = [a.pid for a in p.parents()]
        return f"pid {p.pid} ({' '.join(p.cmdline())[:80]}), parents {chain}"
    except psutil.Error:
        return f"pid {p.pid}"


def _descends(p: psutil.Process, pids: set[int]) -> bool:
    try:
        return any(a.pid in pids for a in p.parents())
    except psutil.NoSuchProcess:
        return False


def _shm_entries() -> set[str]:
    return {n for n in leftover_shm() if n.endswith("-" + _TAG)}


def _session_dirs() -> set[str]:
    root = tempfile.gettempdir()
    return {
        n for n in os.listdir(root) if n.startswith("actorcore-session-") and n.endswith("-" + _TAG)
    }


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):
    """Every process a test starts is gone after it; so are its /dev/shm files."""
    me = psutil.Process()
    started = time.time()
    before_children = {p.pid for p in me.children(recursive=True)}
    before_children |= {p.pid for p in leftover_processes(0.0)}
    before_shm = _shm_entries()
    before_dirs = _session_dirs()
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    deadline = time.monotonic() + 15.0
    while True:
        extra = [
            p
            for p in me.children(recursive=True)
            if p.pid not in before_children and _alive(p) and not _descends(p, before_children)
        ]
        extra += [
            p
            for p in leftover_processes(started)
            if p.pid not in before_children
            and p not in extra
            and _alive(p)
            and not _descends(p, before_children)
        ]
        leaked_shm = _shm_entries() - before_shm
        leaked_dirs = _session_dirs() - before_dirs
        if (not extra and not leaked_shm and not leaked_dirs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling a condition with a deadline, not synchronizing
    extra = [p for p in extra if _alive(p)]
    described = [_describe(p) for p in extra]
    for p in extra:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not extra, f"test left processes behind: {described}"
    assert not leaked_shm, f"test left /dev/shm entries behind: {sorted(leaked_shm)}"
    assert not leaked_dirs, f"test left session directories behind: {sorted(leaked_dirs)}"


@pytest.fixture
def abc():
    """Three cluster nodes, TTL 2 s (needs etcd): A, the driver's node (2 CPUs, no
    ``w``); B and C (2 CPUs, ``w: 2`` each). This process's driver is attached to A."""
    from cluster_helpers import ABC, ABC_TTL, attached_cluster

    with attached_cluster(*ABC, ttl_s=ABC_TTL) as c:
        yield c


@pytest.fixture(scope="module")
def runtime():
    """One embedded node (2 CPUs) shared by the tests of a module."""
    import actorcore as ac

    ac.init(num_cpus=2)
    try:
        yield ac
    finally:
        ac.shutdown()


@pytest.fixture
def fresh_runtime():
    """A node of its own for one test; shut down even if the test fails."""
    import actorcore as ac

    started: list[bool] = []

    def start(**kw):
        kw.setdefault("num_cpus", 2)
        info = ac.init(**kw)
        started.append(True)
        return info

    try:
        yield start
    finally:
        if started:
            ac.shutdown()
