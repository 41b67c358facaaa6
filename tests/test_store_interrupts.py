"""Ctrl-C (SIGINT) in a driver while its main thread waits on the object store.

A driver's store calls from its main thread go over the blocking connection:
the daemon pins (an open) or allocates (a create) for the process, and only
the reply lets the process release or seal it. A KeyboardInterrupt raised
while the reply is awaited used to lose it: the pin (or the half-made range)
stayed for as long as the process lived, so the object could never be freed
or evicted. The interrupt must land once the reply is in hand, and nothing
may be left behind.

Each case runs in a subprocess driver of its own (a real SIGINT to its main
thread; the daemon, its child, is SIGSTOPped so that the interrupt surely
arrives while the request is with the daemon).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _driver_env() -> dict[str, str]:
    """A driver subprocess imports actorcore from this checkout."""
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


_DRIVER = textwrap.dedent(
    """
    import gc, json, os, signal, sys, threading
    import numpy as np, psutil
    import actorcore as ac
    from actorcore import _global as G
    from actorcore.testing import list_state, wait_for

    MiB = 1 << 20
    op = sys.argv[1]
    ac.init(num_cpus=1, object_store_memory=64 * MiB, store_read_cache_bytes=0)
    rt = G.require()
    daemon = int(list_state("node")["pid"])
    main = threading.main_thread().ident
    out = {}

    def store():
        return ac.memory_summary()["store"]

    x = ac.put(np.full(8 * MiB, 7, dtype=np.uint8))
    base = store()["objects"]
    waiting = threading.Event()  # the request went out; its reply is awaited
    conn = rt.store.conn
    real_read = conn._read

    def hooked_read():
        waiting.set()
        return real_read()

    def interrupt():
        ok = waiting.wait(30)
        if ok:
            signal.pthread_kill(main, signal.SIGINT)
        os.kill(daemon, signal.SIGCONT)  # the reply may come now

    os.kill(daemon, signal.SIGSTOP)
    wait_for(lambda: psutil.Process(daemon).status() == psutil.STATUS_STOPPED, 10)
    conn._read = hooked_read
    t = threading.Thread(target=interrupt)
    t.start()
    try:
        if op == "get":
            v = ac.get(x)
        else:
            y = ac.put(np.full(8 * MiB, 3, dtype=np.uint8))
        out["interrupted"] = False
    except KeyboardInterrupt:
        out["interrupted"] = True
    finally:
        conn._read = real_read
        os.kill(daemon, signal.SIGCONT)
        t.join(30)
    out["waited"] = waiting.is_set()
    gc.collect()

    def settled():
        st = store()
        return st["pinned"] == 0 and st["objects"] == base
    try:
        wait_for(settled, 10, what="no pin and no half-made object left")
        out["settled"] = True
    except Exception:
        out["settled"] = False
    out["store"] = store()
    out["again"] = int(ac.get(x)[0])  # a later get works
    z = ac.put(np.full(8 * MiB, 5, dtype=np.uint8))  # and a later put
    out["put_again"] = int(ac.get(z)[-1])
    del x, z
    gc.collect()
    try:
        wait_for(lambda: store()["objects"] == 0 and store()["pinned"] == 0, 10)
        out["freed"] = True
    except Exception:
        out["freed"] = False
    ac.shutdown()
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("op", ["get", "put"])
def test_ctrl_c_during_a_store_call_leaves_no_pin_or_range(op):
    env = _driver_env()
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, op],
        capture_output=True,
        text=True,
        timeout=80,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["waited"], out
    assert out["interrupted"], f"the Ctrl-C did not land in the {op}: {out}"
    assert out["settled"], f"a pin or a half-made range was left behind: {out['store']}"
    assert out["again"] == 7 and out["put_again"] == 5, out
    assert out["freed"], out


_STORM = textwrap.dedent(
    """
    import gc, json, random, signal, sys, threading, time
    import numpy as np
    import actorcore as ac
    from actorcore.testing import wait_for

    MiB = 1 << 20
    ac.init(num_cpus=1, object_store_memory=64 * MiB, store_read_cache_bytes=0)
    x = ac.put(np.full(2 * MiB, 7, dtype=np.uint8))
    base = ac.memory_summary()["store"]["objects"]
    main = threading.main_thread().ident
    stop = threading.Event()
    sent = 0

    def storm():  # Ctrl-Cs at random moments (the sleeps only spread them)
        global sent
        rng = random.Random(int(sys.argv[1]))
        while not stop.is_set() and sent < 300:
            time.sleep(rng.uniform(0, 0.002))
            signal.pthread_kill(main, signal.SIGINT)
            sent += 1
        stop.set()

    t = threading.Thread(target=storm)
    t.start()
    caught = ops = 0
    deadline = time.monotonic() + 40
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            try:
                v = ac.get(x)
                assert int(v[0]) == 7
                del v
                y = ac.put(np.full(2 * MiB, 3, dtype=np.uint8))
                del y
                ops += 1
            except KeyboardInterrupt:
                caught += 1
        except KeyboardInterrupt:  # one that landed in the handler above
            caught += 1
    while True:  # the last Ctrl-Cs may still be on their way
        try:
            stop.set()
            t.join(10)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
            break
        except KeyboardInterrupt:
            caught += 1
    gc.collect()
    st = lambda: ac.memory_summary()["store"]
    try:
        wait_for(lambda: st()["pinned"] == 0 and st()["objects"] == base, 15)
        settled = True
    except Exception:
        settled = False
    out = {
        "sent": sent, "caught": caught, "ops": ops, "settled": settled, "store": st(),
        "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "again": int(ac.get(x)[0]),
    }
    ac.shutdown()
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(120)
def test_a_storm_of_ctrl_cs_over_gets_and_puts_leaves_nothing_held():
    """Ctrl-Cs land at random points of gets and puts (store calls, unpickling,
    the runtime's own code): afterwards no pin and no range is left, SIGINT has
    its handler back and the cancel signal is not left blocked."""
    env = _driver_env()
    proc = subprocess.run(
        [sys.executable, "-c", _STORM, "14"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["caught"] > 0 and out["ops"] > 0, out
    assert out["settled"], f"left behind after {out['caught']} Ctrl-Cs: {out['store']}"
    assert out["sigint"] and not out["blocked"], out
    assert out["again"] == 7, out
