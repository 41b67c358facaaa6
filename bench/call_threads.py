"""CPU time and wake-ups per actor call, thread by thread, in the driver and in
the actor's worker (read from ``/proc/PID/task/TID/{stat,status}``)::

    python -m bench.call_threads sync 10000     # ac.get(a.small_value.remote()), one at a time
    python -m bench.call_threads async 30000    # 1000 in flight

Prints one JSON line: calls/s, wall us per call, CPU us per call of each
thread, voluntary context switches per call (each is a thread going to
sleep, to be woken again) and the time its threads were runnable but waited
for a CPU, per call, of each process. On a shared machine compare two
checkouts by running them at the same time (``PYTHONPATH=<checkout>``): both
then see the same load.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import actorcore as ac


def _threads(pid: int) -> dict[int, tuple[int, int, int]]:
    """tid -> (CPU ticks, voluntary context switches, ns waited for a CPU once runnable)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                waited = int(f.read().split()[1])
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        out[int(tid)] = (int(fields[11]) + int(fields[12]), switches, waited)
    return out


def _per_call(
    before: dict[int, tuple[int, int, int]],
    after: dict[int, tuple[int, int, int]],
    names: dict[int, str],
    n: int,
) -> tuple[dict[str, float], float, float]:
    hz = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    switches = waited = 0
    for tid, (ticks, sw, wt) in after.items():
        t0, s0, w0 = before.get(tid, (0, 0, 0))
        switches += sw - s0
        waited += wt - w0
        if ticks > t0:
            name = names.get(tid, str(tid))
            cpu[name] = cpu.get(name, 0.0) + round((ticks - t0) / hz / n * 1e6, 1)
    by_cpu = dict(sorted(cpu.items(), key=lambda kv: -kv[1]))
    return by_cpu, round(switches / n, 2), round(waited / n / 1e3, 1)


@ac.remote
class Actor:
    def small_value(self) -> bytes:
        return b"ok"

    def where(self) -> tuple[int, dict[int, str]]:
        return os.getpid(), {t.native_id or 0: t.name for t in threading.enumerate()}


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "sync"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    ac.init(num_cpus=2, include_dashboard=False)
    try:
        a = Actor.remote()
        wpid, _ = ac.get(a.where.remote())
        for _ in range(500):
            ac.get(a.small_value.remote())
        ac.get([a.small_value.remote() for _ in range(2000)])
        me = os.getpid()
        d0, w0 = _threads(me), _threads(wpid)
        start = time.perf_counter()
        if mode == "sync":
            for _ in range(n):
                ac.get(a.small_value.remote())
        else:
            for _ in range(n // 1000):
                ac.get([a.small_value.remote() for _ in range(1000)])
        wall = time.perf_counter() - start
        d1, w1 = _threads(me), _threads(wpid)
        _, wnames = ac.get(a.where.remote())
        dnames = {t.native_id or 0: t.name for t in threading.enumerate()}
        dcpu, dsw, dwait = _per_call(d0, d1, dnames, n)
        wcpu, wsw, wwait = _per_call(w0, w1, wnames, n)
        out: dict[str, Any] = {
            "mode": mode,
            "calls_per_s": round(n / wall),
            "wall_us": round(wall / n * 1e6, 1),
            "driver_cpu_us": dcpu,
            "worker_cpu_us": wcpu,
            "driver_switches": dsw,
            "worker_switches": wsw,
            "driver_cpu_wait_us": dwait,  # runnable but waiting for a CPU, all threads
            "worker_cpu_wait_us": wwait,
            "load": os.getloadavg()[0],
        }
        print(json.dumps(out), flush=True)
    finally:
        ac.shutdown()


if __name__ == "__main__":
    main()
