"""Issue 14 item 2 probed as a new user would (only the public API and the OS):
bytes seen through any live view never change, whatever the store does meanwhile
(frees, reuse of the range, revocation, spilling, restore), from the driver,
several threads and a worker; views are read-only. Each test has a node of its
own."""

from __future__ import annotations

import gc
import random
import threading
import time

import numpy as np
import pytest
from issue14_helpers import MiB, digest, store_objects

import actorcore as ac
from actorcore.testing import wait_for


@pytest.mark.timeout(120)
def test_random_store_workload_never_changes_a_live_view(fresh_runtime):
    """Puts, gets kept and dropped, refs deleted, in a store so small that objects
    spill and ranges are reused all the time (with a read cache of 16 MiB): every
    view the program still holds keeps its own bytes until it is dropped."""
    fresh_runtime(num_cpus=1, object_store_memory=64 * MiB, store_read_cache_bytes=16 * MiB)
    rng = random.Random(1414)
    refs: dict[int, tuple[ac.ObjectRef, str]] = {}
    views: list[tuple[np.ndarray, str, int]] = []
    key = 0
    sizes = [300 * 1024, 2 * MiB, 5 * MiB, 9 * MiB]

    def check_views() -> None:
        for v, want, k in views:
            assert digest(v) == want, f"live view of object #{k} changed"

    for _step in range(200):
        op = rng.random()
        if op < 0.35 or not refs:
            key += 1
            a = np.random.default_rng(key).integers(0, 256, rng.choice(sizes), dtype=np.uint8)
            refs[key] = (ac.put(a), digest(a))
        elif op < 0.65:
            k = rng.choice(list(refs))
            ref, want = refs[k]
            v = ac.get(ref, timeout=30)
            assert v.flags.writeable is False
            assert digest(v) == want, f"object #{k} read back wrong"
            if rng.random() < 0.3 and sum(x[0].nbytes for x in views) < 24 * MiB:
                views.append((v, want, k))
            del v
        elif op < 0.85:
            k = rng.choice(list(refs))
            del refs[k]  # views of it may still be alive
        elif views:
            views.pop(rng.randrange(len(views)))
        gc.collect() if rng.random() < 0.1 else None
        check_views()
    st = ac.memory_summary()["store"]
    print(f"\nstore after the workload: {st}")
    assert st["spill_count"] > 0, "the workload was meant to spill"
    check_views()
    views.clear()
    refs.clear()


@pytest.mark.timeout(120)
def test_threads_reading_while_the_store_churns(fresh_runtime):
    """Readers on several threads get cached objects again and again while another
    thread puts and frees enough to spill them and reuse their ranges."""
    fresh_runtime(num_cpus=1, object_store_memory=48 * MiB, store_read_cache_bytes=12 * MiB)
    objs = []
    for i in range(6):
        a = np.random.default_rng(100 + i).integers(0, 256, 3 * MiB, dtype=np.uint8)
        objs.append((ac.put(a), digest(a)))
    stop = threading.Event()
    failures: list[str] = []
    reads = [0]

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                ref, want = rng.choice(objs)
                v = ac.get(ref, timeout=30)
                if digest(v) != want:
                    failures.append(f"thread {seed}: wrong bytes for {ref.hex()}")
                    return
                reads[0] += 1
        except Exception as e:
            failures.append(f"thread {seed}: {e!r}")

    def churn() -> None:
        window: list = []  # the last five stay alive: 35 MiB + the readers' 18 MiB > 48 MiB
        try:
            for i in range(60):
                r = ac.put(np.full(7 * MiB, i % 251, dtype=np.uint8))
                v = ac.get(r, timeout=30)
                if int(v[0]) != i % 251 or int(v[-1]) != i % 251:
                    failures.append(f"churn {i}: wrong bytes")
                del v
                window = [*window[-4:], r]
                del r
        except Exception as e:
            failures.append(f"churn: {e!r}")
        finally:
            stop.set()

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    threads.append(threading.Thread(target=churn))
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    stop.set()
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert failures == [], failures[:5]
    assert reads[0] > 50
    st = ac.memory_summary()["store"]
    print(f"\n{reads[0]} reads, store: {st}")
    assert st["spill_count"] > 0, "the churn was meant to spill"


@pytest.mark.timeout(90)
def test_view_held_after_del_ref_survives_reuse_in_driver_and_worker(fresh_runtime):
    """Ray semantics: a value got from the store stays valid while the program holds
    it, even after the last ref is gone; here in the driver and in an actor, with
    the read cache involved (read twice, the first view dropped)."""
    fresh_runtime(num_cpus=1, object_store_memory=32 * MiB, store_read_cache_bytes=8 * MiB)

    @ac.remote
    class Holder:
        def hold(self, refs):
            v = ac.get(refs[0])
            del v
            self.v = ac.get(refs[0])  # from the read cache
            return digest(self.v)

        def check(self):
            return digest(self.v)

    h = Holder.remote()
    a = np.random.default_rng(5).integers(0, 256, 4 * MiB, dtype=np.uint8)
    want = digest(a)
    ref = ac.put(a)
    del a
    v = ac.get(ref)
    del v
    v = ac.get(ref)  # the second read: from the cache
    assert ac.get(h.hold.remote([ref]), timeout=30) == want
    del ref
    gc.collect()
    for i in range(30):  # 120 MB through a 32 MB store: every free range is reused
        r = ac.put(np.full(4 * MiB, i, dtype=np.uint8))
        assert int(ac.get(r)[0]) == i
        del r
        assert digest(v) == want, "another object's bytes showed through the driver's view"
    assert ac.get(h.check.remote(), timeout=30) == want, "the actor's view changed"
    ac.kill(h)
    del v
    gc.collect()


@pytest.mark.etcd
@pytest.mark.timeout(120)
def test_a_view_kept_across_shutdown_on_an_attached_node_keeps_its_bytes():
    from actorcore.testing import Cluster

    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        node = c.add_node(num_cpus=1, object_store_memory=32 * MiB)
        ac.init(address=c.address, attach_node=node.node_id)
        try:
            a = np.random.default_rng(11).integers(0, 256, 4 * MiB, dtype=np.uint8)
            want = digest(a)
            v = ac.get(ac.put(a))
            ac.shutdown()
            assert digest(v) == want
            ac.init(address=c.address, attach_node=node.node_id)  # or any other driver
            for i in range(12):  # 48 MB through a 32 MB store
                r = ac.put(np.full(4 * MiB, i, dtype=np.uint8))
                assert int(ac.get(r)[0]) == i
                del r
            changed = digest(v) != want
            first = int(v[0])
        finally:
            ac.shutdown()
    assert not changed, f"the view now shows another object's bytes (v[0] = {first})"


@pytest.mark.timeout(60)
def test_a_dead_owners_object_leaves_the_read_cache_and_the_store(fresh_runtime):
    """Owner death frees its objects; one that only a reader's read cache still
    pinned must go too (before the fix it stayed, unrevocable, and a put that
    needed its room raised ObjectStoreFullError)."""
    fresh_runtime(num_cpus=2, object_store_memory=32 * MiB, store_read_cache_bytes=8 * MiB)

    @ac.remote
    class Keeper:
        def make(self, size):
            self.big = ac.put(np.full(size, 5, dtype=np.uint8))
            return [self.big]

    k = Keeper.options(num_cpus=1).remote()
    [big] = ac.get(k.make.remote(6 * MiB), timeout=30)
    v = ac.get(big, timeout=30)
    assert int(v[0]) == 5
    del v  # no view left: only the read cache pins it
    gc.collect()
    assert store_objects()[big.hex()]["pins"] == 1
    ac.kill(k)
    wait_for(lambda: big.hex() not in store_objects(), 15, what="the dead owner's object freed")
    with pytest.raises(ac.errors.ObjectLostError):
        ac.get(big, timeout=10)
    r = ac.put(np.full(30 * MiB, 1, dtype=np.uint8))  # needs the whole store
    assert int(ac.get(r)[-1]) == 1


@pytest.mark.timeout(60)
def test_a_put_under_pressure_does_not_fail_because_a_cache_cannot_answer(fresh_runtime):
    """An async actor that blocks its loop cannot answer REVOKE_PINS for a while;
    the daemon used to wait 5 s once and raise ObjectStoreFullError though the only
    pin on the spillable object was that cache's (a put that succeeded without the
    read cache); now it asks again until the process answers (or 60 s pass)."""
    fresh_runtime(num_cpus=1, object_store_memory=64 * MiB)

    @ac.remote
    class Hog:
        async def read(self, refs):
            return int((await refs[0])[0])  # its read cache now pins the object

        async def hog(self, s):
            time.sleep(s)  # noqa: ASYNC251 - the point: it blocks the actor's loop
            return "done"

    a = Hog.options(num_cpus=0).remote()
    x = ac.put(np.full(6 * MiB, 1, dtype=np.uint8))
    assert ac.get(a.read.remote([x]), timeout=30) == 1
    views = [ac.get(ac.put(np.full(6 * MiB, i, dtype=np.uint8))) for i in range(9)]
    h = a.hog.remote(6)
    time.sleep(0.5)
    try:
        y = ac.put(np.full(6 * MiB, 2, dtype=np.uint8))  # only x (spillable) can make room
        ok = int(ac.get(y)[0]) == 2
    except ac.errors.ObjectStoreFullError:
        ok = False
    assert ac.get(h, timeout=30) == "done"
    del views
    assert ok, "ObjectStoreFullError: x was spillable but for a read cache's pin"


@pytest.mark.timeout(60)
def test_views_are_read_only_everywhere(fresh_runtime):
    fresh_runtime(num_cpus=1, object_store_memory=128 * MiB)
    ref = ac.put(np.zeros(MiB, dtype=np.int64))
    v = ac.get(ref)
    with pytest.raises(ValueError):
        v[0] = 1
    with pytest.raises(ValueError):
        v.setflags(write=True)
    with pytest.raises(TypeError):
        memoryview(v)[0:8] = b"\x01" * 8
    with pytest.raises(ValueError):
        np.frombuffer(v.data, dtype=np.int64)[0] = 1
    again = ac.get(ref)
    assert int(again.sum()) == 0

    @ac.remote
    def try_write(x):
        try:
            x[0] = 1
        except ValueError:
            return "read-only"
        return "written"

    assert ac.get(try_write.remote(ref), timeout=30) == "read-only"
    assert int(ac.get(ref).sum()) == 0
    del v, again, ref
