"""The shared-memory object store with real processes: segments in /dev/shm,
zero-copy reads, inline vs store, nested refs, owner death, pins, spilling,
capacity errors, crash safety and stale-session sweeps.

Tests that need a node with special settings (``fresh_runtime``, subprocess
drivers) come first: the module's shared node (``store_rt``, a 64 MB store)
is started by the first test that asks for it and lives until the end of the
module, and only one runtime can run in a process at a time.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

import actorcore as ac
from actorcore import errors
from actorcore.testing import actor_pid, kill_pid, wait_for

MB = 1 << 20
KB = 1 << 10
STORE = 64 * MB
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers (also used inside workers: cloudpickled by value or imported) -----------------


def arena_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of an actorcore arena file."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and "/actorcore-" in parts[5] and parts[5].endswith("/arena"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def in_arena(addr: int, nbytes: int) -> bool:
    """True if ``[addr, addr + nbytes)`` lies inside a shared-memory arena mapping."""
    return any(lo <= addr and addr + nbytes <= hi for lo, hi in arena_ranges())


def digest(buf) -> str:
    return hashlib.sha256(memoryview(buf).cast("B")).hexdigest()


def store_stats() -> dict:
    return ac.memory_summary()["store"]


def objects() -> dict[str, dict]:
    return {o["object_id"]: o for o in ac.memory_summary()["objects"]}


def n_objects() -> int:
    return store_stats()["objects"]


def settle(baseline: int, timeout: float = 15.0) -> None:
    """Wait until the store holds no more than ``baseline`` objects again (frees are
    asynchronous; objects of earlier tests may still be on their way out)."""
    gc.collect()
    wait_for(lambda: n_objects() <= baseline, timeout, what=f"store back to {baseline} objects")


def _driver_env() -> dict[str, str]:
    """The environment of a driver subprocess: it imports actorcore from this checkout."""
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _mentions_size(text: str, nbytes: int) -> bool:
    """The message names an object size of ``nbytes`` (plus the store's few bytes of framing)."""
    return any(nbytes <= n <= nbytes + 4096 for n in _numbers(text))


def _pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ============================================================================================
# Nodes with settings of their own
# ============================================================================================


@pytest.mark.timeout(60)
def test_arena_lives_in_a_per_session_shm_dir_with_the_requested_capacity(fresh_runtime):
    info = fresh_runtime(object_store_memory=STORE)
    shm_dir = f"/dev/shm/actorcore-{info.session}"
    assert os.path.isdir(shm_dir)
    arena = os.path.join(shm_dir, "arena")
    assert os.path.isfile(arena)
    assert store_stats()["capacity"] == STORE
    assert os.stat(arena).st_size >= STORE
    # the bytes of a large object are in that file
    pattern = np.random.default_rng(1).integers(0, 256, 2 * MB, dtype=np.uint8)
    ref = ac.put(pattern)
    with open(arena, "rb") as f:
        data = f.read()
    assert data.find(pattern[: 64 * KB].tobytes()) >= 0, "the object's bytes are not in the arena"
    view = ac.get(ref)
    assert in_arena(view.ctypes.data, view.nbytes)
    assert np.array_equal(view, pattern)


@pytest.mark.timeout(60)
def test_inline_threshold_setting(fresh_runtime):
    fresh_runtime(inline_threshold=10 * KB, object_store_memory=STORE)
    base = n_objects()
    small = ac.put(np.ones(5 * KB, dtype=np.uint8))
    assert n_objects() == base, "5 KiB is below a 10 KiB threshold: inline"
    big = ac.put(np.ones(20 * KB, dtype=np.uint8))
    assert n_objects() == base + 1, "20 KiB is above a 10 KiB threshold: in the store"
    assert big.hex() in objects()
    v = ac.get(big)
    assert v.flags.writeable is False and in_arena(v.ctypes.data, v.nbytes)
    assert ac.get(small).sum() == 5 * KB


@pytest.mark.timeout(90)
def test_many_puts_with_dropped_refs_keep_shm_use_bounded(fresh_runtime):
    """10,000 puts of 1 MB, each ref dropped at once, on a 1 GB store: the pages
    of /dev/shm really touched stay few (freed ranges are reused) and nothing is left."""
    info = fresh_runtime(object_store_memory=1 << 30)
    arena = f"/dev/shm/actorcore-{info.session}/arena"
    block = np.arange(MB, dtype=np.uint8)
    for _ in range(10_000):
        ref = ac.put(block)
        del ref
    settle(0, timeout=30)
    st = store_stats()
    assert st["used"] == 0
    touched = os.stat(arena).st_blocks * 512
    assert touched < 128 * MB, f"{touched // MB} MB of /dev/shm in use after 10,000 freed 1 MB puts"
    assert st["spill_count"] == 0, "freed objects should not have to be spilled"


@pytest.mark.timeout(60)
def test_stale_session_dirs_are_swept_when_a_node_starts(fresh_runtime):
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = os.urandom(4).hex()
    stale_shm = f"/dev/shm/actorcore-stale-{tag}"
    stale_disk = os.path.join(tempfile.gettempdir(), f"actorcore-session-stale-{tag}")
    live_shm = f"/dev/shm/actorcore-live-{tag}"
    me = psutil.Process()
    try:
        for d, owner in (
            (stale_shm, f"{dead.pid} 12345.000"),
            (stale_disk, f"{dead.pid} 12345.000"),
            (live_shm, f"{me.pid} {me.create_time():.3f}"),
        ):
            os.makedirs(d)
            with open(os.path.join(d, "owner"), "w") as f:
                f.write(owner)
            with open(os.path.join(d, "arena"), "wb") as f:
                f.truncate(MB)
        fresh_runtime(object_store_memory=STORE)
        assert not os.path.exists(stale_shm), "a session whose daemon is gone must be swept"
        assert not os.path.exists(stale_disk), "its spill/log dir too"
        assert os.path.exists(live_shm), "a session whose owner is alive must be kept"
    finally:
        for d in (stale_shm, stale_disk, live_shm):
            shutil.rmtree(d, ignore_errors=True)


_DRIVER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import actorcore as ac

    info = ac.init(num_cpus=1, object_store_memory=32 << 20)
    ref = ac.put(np.ones(4 << 20, dtype=np.uint8))
    view = ac.get(ref)
    print(info.session, info.session_dir, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.timeout(60)
def test_sigkilled_driver_leaves_no_segment_files():
    env = _driver_env()
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, env=env)
    shm_dir = disk_dir = None
    daemon = None
    try:
        line = b""
        ready = threading.Event()

        def read() -> None:
            nonlocal line
            line = proc.stdout.readline()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(30), "the driver did not start its node"
        session, disk_dir = line.decode().split()
        shm_dir = f"/dev/shm/actorcore-{session}"
        assert os.path.isfile(os.path.join(shm_dir, "arena"))
        import json

        with open(os.path.join(shm_dir, "node.json")) as f:
            daemon = psutil.Process(json.load(f)["pid"])
        kill_pid(proc.pid)
        wait_for(lambda: not os.path.exists(shm_dir), 20, what="the node removes its /dev/shm dir")
        wait_for(lambda: not os.path.exists(disk_dir), 20, what="and its session dir")
        wait_for(lambda: _pid_gone(daemon.pid), 20, what="the node daemon exits")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if daemon is not None:
            try:
                for p in [*daemon.children(recursive=True), daemon]:
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        for d in (shm_dir, disk_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)


# ============================================================================================
# The module's node: 2 CPUs, a 64 MB store
# ============================================================================================


_SHARED: dict = {}


@pytest.fixture(scope="module")
def store_rt():
    _SHARED["info"] = ac.init(num_cpus=2, object_store_memory=STORE)
    try:
        yield ac
    finally:
        ac.shutdown()


@ac.remote
def array_facts(a):
    """What a worker sees of an array argument."""
    return {
        "writeable": bool(a.flags.writeable),
        "in_arena": in_arena(a.ctypes.data, a.nbytes),
        "digest": digest(a),
    }


@ac.remote
def read_twice(refs):
    x = ac.get(refs[0])
    y = ac.get(refs[0])
    return {
        "same": x.ctypes.data == y.ctypes.data,
        "in_arena": in_arena(x.ctypes.data, x.nbytes),
        "writeable": bool(x.flags.writeable),
        "digest": digest(x),
    }


@ac.remote
def make_array(n, fill):
    return np.full(n, fill, dtype=np.uint8)


# --- zero copy -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_driver_reads_a_read_only_view_into_shared_memory(store_rt):
    data = np.random.default_rng(2).standard_normal(MB // 8 * 4)  # 4 MB of float64
    ref = ac.put(data)
    a = ac.get(ref)
    b = ac.get(ref)
    assert a.flags.writeable is False
    assert in_arena(a.ctypes.data, a.nbytes), "the array must point into the arena mapping"
    assert a.ctypes.data == b.ctypes.data, "two gets of one ref on one node: one buffer"
    assert np.shares_memory(a, b)
    assert np.array_equal(a, data)
    with pytest.raises(ValueError):
        a[0] = 1.0


@pytest.mark.timeout(60)
def test_worker_reads_the_drivers_array_without_a_copy(store_rt):
    data = np.random.default_rng(3).integers(0, 1 << 30, MB, dtype=np.int64)  # 8 MB
    ref = ac.put(data)
    facts = ac.get(array_facts.remote(ref), timeout=30)
    assert facts == {"writeable": False, "in_arena": True, "digest": digest(data)}
    # a ref nested in a list is fetched by the worker itself
    facts = ac.get(read_twice.remote([ref]), timeout=30)
    assert facts == {"same": True, "in_arena": True, "writeable": False, "digest": digest(data)}


@pytest.mark.timeout(60)
def test_large_return_value_is_a_shared_memory_view(store_rt):
    base = n_objects()
    ref = make_array.remote(3 * MB, 7)
    v = ac.get(ref, timeout=30)
    assert n_objects() == base + 1
    assert ref.hex() in objects()
    assert v.flags.writeable is False and in_arena(v.ctypes.data, v.nbytes)
    assert v.shape == (3 * MB,) and int(v[0]) == 7 and int(v[-1]) == 7
    assert ac.get(ref).ctypes.data == v.ctypes.data


@pytest.mark.timeout(60)
def test_memoryview_comes_back_without_copy(store_rt):
    payload = np.random.default_rng(4).integers(0, 256, 2 * MB, dtype=np.uint8).tobytes()
    ref = ac.put(memoryview(payload))
    v = ac.get(ref)
    assert bytes(v) == payload
    assert isinstance(v, memoryview) and v.readonly
    arr = np.frombuffer(v, dtype=np.uint8)
    assert in_arena(arr.ctypes.data, arr.nbytes)


@pytest.mark.timeout(60)
def test_pickle5_buffers_come_back_without_copy(store_rt):
    """Any value with out-of-band buffers (here a dict of arrays) reads back zero copy."""
    value = {"a": np.arange(MB, dtype=np.int32), "b": np.ones((512, 512)), "meta": "x"}
    got = ac.get(ac.put(value))
    assert got["meta"] == "x"
    for k in ("a", "b"):
        assert np.array_equal(got[k], value[k])
        assert got[k].flags.writeable is False
        assert in_arena(got[k].ctypes.data, got[k].nbytes)


# --- inline vs store ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_small_values_do_not_create_store_objects(store_rt):
    base = n_objects()
    refs = [ac.put(np.ones(90 * KB // 8)) for _ in range(5)]  # 90 KiB: below 100 KiB
    refs += [ac.put({"k": list(range(100))}), ac.put(b"x" * 1000)]
    small_task = make_array.remote(1000, 1)
    assert ac.get(small_task, timeout=30).sum() == 1000
    assert n_objects() == base, "values below the inline threshold must not use the store"
    big = ac.put(np.ones(110 * KB // 8))  # 110 KiB: above
    assert n_objects() == base + 1
    row = objects()[big.hex()]
    assert row["size"] >= 110 * KB
    assert len(refs) == 7


@pytest.mark.timeout(60)
def test_memory_summary_lists_objects_with_size_owner_and_spilled_flag(store_rt):
    ref = ac.put(np.zeros(MB, dtype=np.uint8))
    row = objects()[ref.hex()]
    assert row["size"] >= MB
    assert row["owner"] == ref.owner[0].hex()
    assert row["spilled"] is False
    st = store_stats()
    assert st["capacity"] == STORE
    assert st["used"] >= MB


def _wait_for_file(path: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # inside a task: a poll of the test's go signal
    return True


@ac.remote
def hold_arg(a, go_file):
    _wait_for_file(go_file)
    return digest(a)


@pytest.mark.timeout(60)
def test_big_argument_by_value_is_stored_once_per_call(store_rt, tmp_path):
    data = np.random.default_rng(5).integers(0, 256, 6 * MB, dtype=np.uint8)
    go = str(tmp_path / "go")

    def arg_objects() -> set[str]:
        return {o["object_id"] for o in ac.memory_summary()["objects"] if o["size"] >= 6 * MB}

    r1 = hold_arg.remote(data, go)
    first = wait_for(arg_objects, 10, what="the argument in the store")
    assert len(first) == 1, f"one store object for the argument, got {first}"
    r2 = hold_arg.remote(data, go)
    both = wait_for(
        lambda: ids if len(ids := arg_objects()) == 2 else None,
        10,
        what="a second call stores its own copy",
    )
    assert first < both
    open(go, "w").close()
    assert ac.get([r1, r2], timeout=30) == [digest(data)] * 2
    del r1, r2
    gc.collect()
    wait_for(lambda: not arg_objects() & both, 10, what="the arguments freed after the calls")


@pytest.mark.timeout(60)
def test_wait_fetch_local_then_get_uses_the_store(store_rt):
    refs = [make_array.remote(2 * MB, i) for i in range(3)]
    ready, pending = ac.wait(refs, num_returns=3, timeout=30, fetch_local=True)
    assert len(ready) == 3 and pending == []
    listed = objects()
    for i, r in enumerate(refs):
        assert r.hex() in listed, "a large result lives in the store"
        v = ac.get(r)
        assert in_arena(v.ctypes.data, v.nbytes) and int(v[123]) == i


async def test_await_large_value_is_a_shared_memory_view(store_rt):
    ref = make_array.remote(2 * MB, 9)
    v = await ref
    assert v.flags.writeable is False and in_arena(v.ctypes.data, v.nbytes)
    assert int(v.sum()) == 9 * 2 * MB


# --- nested refs and ownership -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_refs_nested_in_a_put_keep_their_targets_alive(store_rt):
    base = n_objects()
    inner = [ac.put(np.full(MB, i, dtype=np.uint8)) for i in range(3)]
    ids = [r.hex() for r in inner]
    outer = ac.put(inner)
    del inner
    gc.collect()
    assert set(ids) <= set(objects()), "the outer object still refers to its targets"
    got = ac.get(outer)
    assert [int(ac.get(r)[0]) for r in got] == [0, 1, 2]
    del got
    gc.collect()
    assert set(ids) <= set(objects())
    del outer
    settle(base)
    assert not set(ids) & set(objects())


@pytest.mark.timeout(60)
def test_refs_nested_in_a_stored_object_keep_their_targets_alive(store_rt):
    base = n_objects()
    inner = [ac.put(np.full(MB, 10 + i, dtype=np.uint8)) for i in range(2)]
    ids = [r.hex() for r in inner]
    outer = ac.put({"refs": inner, "pad": np.zeros(MB, dtype=np.uint8)})
    assert outer.hex() in objects(), "the container itself is large: in the store"
    del inner
    gc.collect()
    assert n_objects() == base + 3
    value = ac.get(outer)
    assert [int(ac.get(r)[5]) for r in value["refs"]] == [10, 11]
    del value, outer
    settle(base)
    assert not set(ids) & set(objects())


@ac.remote
def make_refs(n, size):
    return [ac.put(np.full(size, i, dtype=np.uint8)) for i in range(n)]


@pytest.mark.timeout(60)
def test_refs_returned_by_a_task_keep_their_targets_alive(store_rt):
    base = n_objects()
    outer = make_refs.remote(3, MB)
    refs = ac.get(outer, timeout=30)
    ids = [r.hex() for r in refs]
    del refs
    gc.collect()
    assert set(ids) <= set(objects()), "the task's result still holds them"
    refs = ac.get(outer)
    assert [int(ac.get(r)[0]) for r in refs] == [0, 1, 2]
    del refs, outer
    settle(base)


@ac.remote
def sum_refs(refs):
    return sum(ac.get(refs))


@pytest.mark.timeout(90)
def test_object_holding_ten_thousand_refs(store_rt):
    base = n_objects()
    refs = [ac.put(i) for i in range(10_000)]
    outer = ac.put(refs)
    del refs
    gc.collect()
    back = ac.get(outer)
    assert len(back) == 10_000
    assert sum(ac.get(back, timeout=60)) == sum(range(10_000))
    assert ac.get(sum_refs.remote(outer), timeout=60) == sum(range(10_000))
    assert ac.get(back[9_999]) == 9_999
    del back, outer
    settle(base)


@ac.remote
class Keeper:
    def make(self, size):
        self.big = ac.put(np.full(size, 5, dtype=np.uint8))
        self.small = ac.put("small value")
        return [self.big, self.small]


@pytest.mark.parametrize("how", ["sigkill", "ac.kill"])
@pytest.mark.timeout(60)
def test_owner_death_makes_its_objects_lost(store_rt, how):
    base = n_objects()
    k = Keeper.options(num_cpus=1).remote()
    pid = actor_pid(k)
    big, small = ac.get(k.make.remote(2 * MB), timeout=30)
    owner_hex = big.owner[0].hex()
    assert big.hex() in objects()
    if how == "sigkill":
        kill_pid(pid)
    else:
        ac.kill(k)
        wait_for(lambda: _pid_gone(pid), 15, what="the actor's worker exits")
    for ref in (big, small):
        with pytest.raises(errors.ObjectLostError) as ei:
            ac.get(ref, timeout=20)
        msg = str(ei.value)
        assert ref.hex() in msg, msg
        assert owner_hex in msg, msg
    settle(base)  # the dead owner's store object is freed


# --- a freed object is never read ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_view_outliving_its_refs_pins_the_bytes(store_rt):
    base = n_objects()
    size = 4 * MB
    data = np.random.default_rng(6).integers(0, 256, size, dtype=np.uint8)
    ref = ac.put(data)
    oid = ref.hex()
    view = ac.get(ref)
    want = digest(view)
    del ref
    gc.collect()
    # the owner let go, the reader still holds a view: the store keeps it, pinned
    wait_for(lambda: oid in objects() and objects()[oid]["pins"] >= 1, 10, what="pinned")
    for i in range(40):  # same size: a freed range would be handed out again
        r = ac.put(np.full(size, i, dtype=np.uint8))
        assert int(ac.get(r)[0]) == i
        del r
        assert digest(view) == want, "another object's bytes showed through a live view"
    assert oid in objects()
    assert digest(view) == want and np.array_equal(view, data)
    del view
    gc.collect()
    wait_for(lambda: oid not in objects(), 10, what="freed once the view is gone")
    settle(base)


@ac.remote
class ViewHolder:
    def hold(self, a):
        self.view = a  # a zero-copy view: it pins the object in this process
        return in_arena(a.ctypes.data, a.nbytes)


@pytest.mark.timeout(60)
def test_a_dead_readers_pins_go_with_it(store_rt):
    h = ViewHolder.options(num_cpus=1).remote()
    pid = actor_pid(h)
    ref = ac.put(np.ones(2 * MB, dtype=np.uint8))
    oid = ref.hex()
    assert ac.get(h.hold.remote(ref), timeout=30) is True
    del ref
    gc.collect()
    wait_for(
        lambda: oid in objects() and objects()[oid]["pins"] >= 1,
        10,
        what="owner let go; the actor's view still pins it",
    )
    kill_pid(pid)
    wait_for(lambda: oid not in objects(), 10, what="the dead reader's pin is dropped")


# --- the read cache (issue 14.2): repeated reads without a round trip, pins revoked ---------


@ac.remote
def read_digest(refs):
    return digest(ac.get(refs[0]))


@pytest.mark.timeout(60)
def test_a_reread_object_stays_mapped_without_a_live_view(store_rt):
    data = np.random.default_rng(7).integers(0, 256, 4 * MB, dtype=np.uint8)
    ref = ac.put(data)
    first = ac.get(ref)
    addr = first.ctypes.data
    del first
    gc.collect()
    # no view is left: the read cache still pins the object for this process
    assert objects()[ref.hex()]["pins"] == 1
    again = ac.get(ref)
    assert again.ctypes.data == addr and np.array_equal(again, data)
    del again, ref
    gc.collect()


@pytest.mark.timeout(60)
def test_freeing_an_object_revokes_the_cached_pins_of_every_process(store_rt):
    base = n_objects()
    ref = ac.put(np.full(4 * MB, 3, dtype=np.uint8))
    oid = ref.hex()
    want = digest(np.full(4 * MB, 3, dtype=np.uint8))
    h = ViewHolder.options(num_cpus=0).remote()
    assert ac.get(h.hold.remote(ref), timeout=30) is True
    ac.get(h.hold.remote(np.zeros(8)), timeout=30)  # the actor drops its view: its cache pins
    assert ac.get(read_digest.remote([ref]), timeout=30) == want  # a worker caches it too
    assert digest(ac.get(ref)) == want  # and the driver
    wait_for(lambda: objects()[oid]["pins"] >= 2, 10, what="cached in other processes")
    del ref
    gc.collect()
    wait_for(lambda: oid not in objects(), 10, what="freed: every cache let go")
    settle(base)
    ac.kill(h)


@pytest.mark.timeout(60)
def test_cached_pins_give_way_when_the_store_needs_room(store_rt):
    base = n_objects()
    size = 6 * MB  # under the read cache's budget (an eighth of the 64 MB store)
    held = [ac.put(np.full(size, i, dtype=np.uint8)) for i in range(9)]
    views = [ac.get(r) for r in held]  # 54 MB pinned by live views
    x = ac.put(np.full(size, 100, dtype=np.uint8))
    assert int(ac.get(x)[0]) == 100  # no view kept: only the read cache pins x
    assert objects()[x.hex()]["pins"] == 1
    # no room for y but x's range, which only the cache holds: the store revokes
    # that pin, spills x and writes y (without revocation: ObjectStoreFullError)
    y = ac.put(np.full(size, 101, dtype=np.uint8))
    assert int(ac.get(y)[0]) == 101
    del views  # reading x back needs room again
    got = ac.get(x)
    assert got.shape == (size,) and int(got[0]) == 100 and int(got[-1]) == 100
    assert int(got.sum()) == 100 * size, "x's bytes, not another object's"
    del got, x, y, held
    settle(base)


@pytest.mark.timeout(60)
def test_threads_put_and_get_concurrently(store_rt):
    base = n_objects()
    failures: list[str] = []

    def work(k: int) -> None:
        try:
            for i in range(100):
                fill = (k * 7 + i) % 251
                r = ac.put(np.full(200 * KB, fill, dtype=np.uint8))
                v = ac.get(r)
                assert int(v[0]) == fill and int(v[-1]) == fill, (k, i)
                assert in_arena(v.ctypes.data, v.nbytes)
                del v, r
        except Exception as e:  # reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(45)
    assert not any(t.is_alive() for t in threads), "a thread hung in put/get"
    assert failures == []
    settle(base)


async def test_many_coroutines_await_large_values(store_rt):
    import asyncio

    refs = [make_array.remote(MB, i) for i in range(6)]
    values = await asyncio.gather(*refs, *refs)
    for i, v in enumerate(values):
        assert int(v[0]) == i % 6 and v.flags.writeable is False
    assert values[0].ctypes.data == values[6].ctypes.data


_KEEP_VIEW = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    import actorcore as ac

    ac.init(num_cpus=1, object_store_memory=32 << 20)
    v = ac.get(ac.put(np.arange(1 << 20, dtype=np.int64)))
    h = hashlib.sha256(v).hexdigest()
    ac.shutdown()
    assert hashlib.sha256(v).hexdigest() == h, "a live view changed at shutdown"
    ac.init(num_cpus=1, object_store_memory=32 << 20)
    w = ac.get(ac.put(np.full(1 << 20, 3, dtype=np.int64)))
    assert int(w.sum()) == 3 << 20
    assert hashlib.sha256(v).hexdigest() == h, "a new session overwrote an old view"
    ac.shutdown()
    print("ok", int(v[-1]), int(w[0]))
    """
)


@pytest.mark.timeout(60)
def test_views_stay_valid_after_shutdown_and_reinit():
    env = _driver_env()
    try:
        out = subprocess.run(
            [sys.executable, "-c", _KEEP_VIEW], env=env, capture_output=True, timeout=45, text=True
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the driver hung: {e.stderr}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", str((1 << 20) - 1), "3"]


# --- capacity: spilling and errors ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_puts_beyond_capacity_spill_and_restore_transparently(store_rt):
    base_st = store_stats()
    n, size = 12, 8 * MB  # 96 MB into 64 MB
    refs = [ac.put(np.full(size, i, dtype=np.uint8)) for i in range(n)]
    st = store_stats()
    assert st["spilled"] > 0 and st["spill_count"] > base_st["spill_count"]
    assert st["used"] <= st["capacity"]
    listed = objects()
    assert any(listed[r.hex()]["spilled"] for r in refs), "memory_summary flags spilled objects"
    assert all(listed[r.hex()]["size"] >= size for r in refs)
    for i, r in enumerate(refs):
        v = ac.get(r)
        assert v.shape == (size,) and int(v[0]) == i and int(v[-1]) == i
        assert int(v.sum()) == i * size
        del v
    assert store_stats()["restore_count"] > base_st["restore_count"]
    # a worker reading an object that is spilled gets it back too
    listed = objects()
    spilled = [i for i, r in enumerate(refs) if listed[r.hex()]["spilled"]]
    assert spilled
    i = spilled[0]
    facts = ac.get(array_facts.remote(refs[i]), timeout=30)
    assert facts["digest"] == digest(np.full(size, i, dtype=np.uint8))
    assert facts["in_arena"] is True
    del refs, r
    settle(base_st["objects"])


@pytest.mark.timeout(60)
def test_sequential_reads_of_spilled_objects_never_fail(store_rt):
    n, size = 12, 8 * MB
    refs = [ac.put(np.full(size, i, dtype=np.uint8)) for i in range(n)]
    order: list = []
    try:
        for rnd in range(3):
            order = list(enumerate(refs))
            if rnd % 2 == 0:
                order.reverse()  # what was read last must be spilled to make room
            for i, r in order:
                v = ac.get(r)  # raises ObjectStoreFullError with the bug
                assert int(v[0]) == i and int(v[-1]) == i
                del v
    finally:
        # the failure's traceback must not keep 96 MB alive
        refs.clear()
        order.clear()
        r = v = None  # noqa: F841


@pytest.mark.timeout(60)
def test_spill_files_are_deleted_with_their_objects(store_rt):
    base = n_objects()
    spill_dir = os.path.join(_SHARED["info"].session_dir, "spill")
    refs = [ac.put(np.full(8 * MB, i, dtype=np.uint8)) for i in range(12)]
    st = store_stats()
    assert st["spilled"] > 0
    listed = objects()
    mine = {r.hex() for r in refs}
    spilled = {oid for oid in mine if listed[oid]["spilled"]}
    assert spilled and spilled <= set(os.listdir(spill_dir)), "each spilled object has a file"
    assert not (mine - spilled) & set(os.listdir(spill_dir)), "objects in memory have none"
    del refs
    settle(base)
    wait_for(lambda: not mine & set(os.listdir(spill_dir)), 10, what="spill files deleted")
    assert not mine & set(objects())


@pytest.mark.timeout(60)
def test_object_larger_than_the_store_raises_full_with_sizes(store_rt):
    base = n_objects()
    with pytest.raises(errors.ObjectStoreFullError) as ei:
        ac.put(np.zeros(STORE + MB, dtype=np.uint8))
    msg = str(ei.value)
    assert STORE in _numbers(msg), msg
    assert _mentions_size(msg, STORE + MB), msg
    assert isinstance(ei.value, MemoryError)
    assert n_objects() == base
    # the store still works
    assert int(ac.get(ac.put(np.ones(MB, dtype=np.uint8))).sum()) == MB


@pytest.mark.timeout(60)
def test_full_when_every_object_is_pinned(store_rt):
    views = [ac.get(ac.put(np.full(8 * MB, i, dtype=np.uint8))) for i in range(7)]  # 56 MB pinned
    with pytest.raises(errors.ObjectStoreFullError) as ei:
        ac.put(np.zeros(16 * MB, dtype=np.uint8))
    msg = str(ei.value)
    assert _mentions_size(msg, 16 * MB), msg
    assert STORE in _numbers(msg), msg
    assert [int(v[0]) for v in views] == list(range(7))
    del views
    gc.collect()
    wait_for(lambda: store_stats()["pinned"] == 0, 10)
    assert int(ac.get(ac.put(np.ones(16 * MB, dtype=np.uint8)))[0]) == 1


@pytest.mark.timeout(60)
def test_task_returning_more_than_the_store_raises_full(store_rt):
    with pytest.raises(errors.ObjectStoreFullError) as ei:
        ac.get(make_array.remote(STORE + MB, 0), timeout=30)
    assert _mentions_size(str(ei.value), STORE + MB)


# --- serialization errors ----------------------------------------------------------------------


@ac.remote
def return_lock():
    return threading.Lock()


@pytest.mark.timeout(60)
def test_unpicklable_values_raise_serialization_error_naming_the_type(store_rt):
    base = n_objects()
    with pytest.raises(errors.SerializationError, match="lock"):
        ac.put(threading.Lock())
    with pytest.raises(errors.SerializationError, match="lock") as ei:
        ac.put({"pad": np.zeros(MB), "bad": [threading.Lock()]})
    assert "dict" in str(ei.value)
    with pytest.raises(errors.SerializationError, match="lock"):
        array_facts.remote(threading.Lock())
    with pytest.raises(errors.SerializationError, match="lock"):
        ac.get(return_lock.remote(), timeout=30)
    assert n_objects() == base, "a failed serialization must not leave a store object"


# --- crash safety ------------------------------------------------------------------------------


@ac.remote
class Writer:
    def put_forever(self, size):
        i = 0
        while True:
            r = ac.put(np.full(size, i % 251, dtype=np.uint8))
            del r
            i += 1

    def produce(self, size, fill):
        return np.full(size, fill, dtype=np.uint8)


def _created_objects() -> list[dict]:
    return [o for o in ac.memory_summary()["objects"] if o["state"] == "created"]


@pytest.mark.timeout(60)
def test_worker_killed_during_puts_leaves_nothing_behind(store_rt):
    base = store_stats()
    w = Writer.options(num_cpus=1).remote()
    pid = actor_pid(w)
    w.put_forever.remote(24 * MB)
    # kill it while an object is being written (not yet sealed)
    wait_for(lambda: _created_objects(), 20, interval=0.0005, what="a write in progress")
    kill_pid(pid)
    wait_for(lambda: not _created_objects(), 10, what="no unsealed object is left")
    settle(base["objects"])
    assert store_stats()["used"] <= base["used"]


@pytest.mark.timeout(60)
def test_worker_killed_while_writing_a_return_value(store_rt):
    base = store_stats()
    w = Writer.options(num_cpus=1).remote()
    pid = actor_pid(w)
    size = 24 * MB
    done: list = []
    caught = False
    for i in range(60):
        ref = w.produce.remote(size, i % 251)

        def state(ref=ref):
            if _created_objects():
                return "writing"  # the return value is being written, by the worker, for us
            if ac.wait([ref], timeout=0)[0]:
                return "done"
            return None

        if wait_for(state, 20, interval=0.0005) == "writing":
            caught = True
            break
        done.append((i, ref))
        if len(done) > 1:
            done.pop(0)  # keep the store from filling up
    kill_pid(pid)
    assert caught, "never saw a return value being written"
    try:
        v = ac.get(ref, timeout=30)
    except (errors.ActorDiedError, errors.WorkerCrashedError, errors.ObjectLostError):
        pass
    else:  # the write finished just before the kill: then the value must be whole
        assert int(v[0]) == int(v[-1]) == i % 251 and int(v.sum()) == (i % 251) * size
        del v
    r = None
    for j, r in done:
        v = ac.get(r, timeout=30)
        assert int(v[-1]) == j % 251
        del v
    wait_for(lambda: not _created_objects(), 10, what="no unsealed object is left")
    del ref, done, r
    settle(base["objects"])
    assert store_stats()["used"] <= base["used"]
