"""CPU per actor call by thread, two checkouts side by side (issue 14, item 1).

Each round runs, in a fresh driver per checkout (alternating), one second or
more of each row and reads per-thread CPU time from ``/proc``: the driver's
main thread, the driver's other threads (its I/O loop) and the actor's worker
process. On a shared, noisy machine these columns are steadier than rates::

    git archive main actorcore | tar -x -C /tmp/old
    python -m bench.call_cpu --old /tmp/old --rounds 5 --seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

ROWS = ("sync", "async1000", "asyncactor_sync", "asyncio_driver")
HZ = os.sysconf("SC_CLK_TCK")


def _threads_cpu() -> dict[int, int]:
    out = {}
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def _process_cpu(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def child(seconds: float) -> None:
    import actorcore as ac

    ac.init(num_cpus=2, include_dashboard=False)

    @ac.remote
    class Sync:
        def small_value(self) -> bytes:
            return b"ok"

        def pid(self) -> int:
            return os.getpid()

        def file(self) -> str:
            return str(ac.__file__)

    @ac.remote
    class Async:
        async def small_value(self) -> bytes:
            return b"ok"

        def pid(self) -> int:
            return os.getpid()

    a, aa = Sync.remote(), Async.remote()
    pids = {id(a): ac.get(a.pid.remote()), id(aa): ac.get(aa.pid.remote())}
    main = threading.get_native_id()
    loop = asyncio.new_event_loop()

    async def one_at_a_time() -> None:
        for _ in range(100):
            await aa.small_value.remote()

    rows: dict[str, tuple[Any, Callable[[], Any], int]] = {
        "sync": (a, lambda: ac.get(a.small_value.remote()), 1),
        "async1000": (a, lambda: ac.get([a.small_value.remote() for _ in range(1000)]), 1000),
        "asyncactor_sync": (aa, lambda: ac.get(aa.small_value.remote()), 1),
        "asyncio_driver": (aa, lambda: loop.run_until_complete(one_at_a_time()), 100),
    }
    result: dict[str, Any] = {"file": ac.__file__, "worker_file": ac.get(a.file.remote())}
    for name, (handle, fn, per) in rows.items():
        fn()
        fn()
        c0, w0, t0, n = _threads_cpu(), _process_cpu(pids[id(handle)]), time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            fn()
            n += per
        dt = time.perf_counter() - t0
        c1, w1 = _threads_cpu(), _process_cpu(pids[id(handle)])
        main_us = (c1.get(main, 0) - c0.get(main, 0)) / HZ / n * 1e6
        all_us = sum(c1[t] - c0.get(t, 0) for t in c1) / HZ / n * 1e6
        result[name] = {
            "rate": n / dt,
            "main_us": main_us,
            "other_us": all_us - main_us,
            "worker_us": (w1 - w0) / HZ / n * 1e6,
        }
    print(json.dumps(result), flush=True)
    loop.close()
    ac.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="a directory holding another checkout's actorcore/")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.seconds)
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sides = {"new": here, **({"old": args.old} if args.old else {})}
    got: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for side, path in sides.items():
            env = dict(os.environ, PYTHONPATH=path)
            # run as a script: its sys.path[0] is bench/, so PYTHONPATH picks actorcore;
            # in the checkout's directory: the daemon and the workers it starts
            # (``python -m``: the working directory comes first) use that one too
            cmd = [sys.executable, os.path.abspath(__file__), "--child"]
            cmd += ["--seconds", str(args.seconds)]
            out = subprocess.run(
                cmd, env=env, cwd=path, capture_output=True, text=True, timeout=600
            )
            lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if lines:
                run = json.loads(lines[-1])
                assert run["file"].startswith(path), (run["file"], path)
                assert run["worker_file"].startswith(path), (run["worker_file"], path)
                got[side].append(run)
            else:
                print(side, "failed:", out.stderr[-500:], file=sys.stderr)
    print(f"medians of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    print("| row | side | calls/s | driver main us | driver other us | worker us |")
    print("|---|---|---:|---:|---:|---:|")
    for row in ROWS:
        for side, runs in got.items():
            if runs:
                m = {k: statistics.median(r[row][k] for r in runs) for k in runs[0][row]}
                print(
                    f"| {row} | {side} | {m['rate']:,.0f} | {m['main_us']:.1f} | "
                    f"{m['other_us']:.1f} | {m['worker_us']:.1f} |"
                )


if __name__ == "__main__":
    main()
