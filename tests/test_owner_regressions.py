"""Owner-side bugs: named creation on a worker's loop, and recursive cancel."""

import os
import time

import pytest

import actorcore as ac
from actorcore.errors import TaskCancelledError, TaskCancelledInterrupt
from actorcore.testing import wait_for


@ac.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


@ac.remote
class Finder:
    async def find_and_incr(self, name):
        # on the worker's loop thread: creation cannot wait for the daemon here
        h = Counter.options(name=name, get_if_exists=True).remote()
        n = await h.incr.remote()
        return n, h.id


@pytest.mark.timeout(60)
def test_get_if_exists_inside_an_async_actor_method_reaches_the_existing_actor(runtime):
    c = Counter.options(name="owner-reg-shared").remote()
    f = Finder.remote()
    try:
        assert ac.get(c.incr.remote(), timeout=30) == 1
        n, hid = ac.get(f.find_and_incr.remote("owner-reg-shared"), timeout=20)
        assert hid == c.id
        assert n == 2
        n, hid = ac.get(f.find_and_incr.remote("owner-reg-shared"), timeout=20)
        assert (n, hid) == (3, c.id)
        assert ac.get(c.incr.remote(), timeout=10) == 4
    finally:
        ac.kill(c)
        ac.kill(f)


@pytest.mark.timeout(60)
def test_named_creation_inside_an_async_actor_method_creates_it_once(runtime):
    f = Finder.remote()
    try:
        n, hid = ac.get(f.find_and_incr.remote("owner-reg-fresh"), timeout=20)
        assert n == 1
        h = ac.get_actor("owner-reg-fresh")
        assert h.id == hid
        n, hid2 = ac.get(f.find_and_incr.remote("owner-reg-fresh"), timeout=20)
        assert (n, hid2) == (2, hid)
    finally:
        ac.kill(ac.get_actor("owner-reg-fresh"))
        ac.kill(f)


@ac.remote
def child(d):
    open(os.path.join(d, "started"), "w").close()
    try:
        for _ in range(400):  # 20 s unless cancelled or told to stop
            if os.path.exists(os.path.join(d, "stop")):
                return "stopped"
            time.sleep(0.05)
    except TaskCancelledInterrupt:  # (a KeyboardInterrupt: like Ray's)
        open(os.path.join(d, "cancelled"), "w").close()
        raise
    return "not cancelled"


@ac.remote
async def async_parent(d):
    return await child.remote(d)


@ac.remote
def sync_parent(d):
    return ac.get(child.remote(d))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parent", [async_parent, sync_parent], ids=["async", "sync"])
def test_cancel_is_recursive(runtime, tmp_path, parent):
    ref = parent.remote(str(tmp_path))
    try:
        wait_for((tmp_path / "started").exists, 20, what="child started")
    finally:
        ac.cancel(ref)
    wait_for((tmp_path / "cancelled").exists, 10, what="child cancelled")
    with pytest.raises(Exception):  # noqa: B017 (cancelled, or failed with its child)
        ac.get(ref, timeout=15)
    wait_for(lambda: ac.available_resources().get("CPU") == 2, 10, what="CPUs given back")


@pytest.mark.timeout(60)
def test_cancel_not_recursive_leaves_children_running(runtime, tmp_path):
    ref = async_parent.remote(str(tmp_path))
    try:
        wait_for((tmp_path / "started").exists, 20, what="child started")
    finally:
        ac.cancel(ref, recursive=False)
    with pytest.raises(TaskCancelledError):
        ac.get(ref, timeout=15)
    # the child goes on until told to stop: it holds its CPU and is never cancelled
    assert ac.available_resources().get("CPU", 0) < 2
    (tmp_path / "stop").touch()
    wait_for(lambda: ac.available_resources().get("CPU") == 2, 10, what="child stopped")
    assert not (tmp_path / "cancelled").exists()


@ac.remote
def big(n):
    return b"x" * n


@pytest.mark.timeout(60)
def test_owner_records_where_store_objects_are(runtime):
    from actorcore import _global as G

    rt = G.require()
    here = rt.node.node_id
    put = ac.put(b"y" * 1_000_000)
    assert rt.object_locations(put.id) == {here}
    made = big.remote(1_000_000)
    assert len(ac.get(made, timeout=30)) == 1_000_000
    assert rt.object_locations(made.id) == {here}
    small = big.remote(10)
    ac.get(small, timeout=30)
    assert rt.object_locations(small.id) == frozenset()  # inline: in no store
    # a node that is not this one dying changes nothing here
    assert rt.node_died(b"?" * len(here)) == []
    assert ac.get(big.remote(5), timeout=30) == b"xxxxx"
    assert rt.object_locations(made.id) == {here}
