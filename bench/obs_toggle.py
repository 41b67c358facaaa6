"""Task history on against off in the same processes, toggled call batch by call batch.

    python -m bench.obs_toggle [--rounds 6]

One runtime, one actor; the history switch (``actorcore._task_events._off``)
is flipped in the driver and in the actor's worker between batches, so both
sides run in the very same processes (same memory layout, same neighbours on
a shared machine): the steadiest A/B of the hot path's recording cost. CPU
time per call is summed over the driver, the node daemon and the workers;
medians of the rounds. (``bench.obs_cost`` compares whole fresh runtimes,
with /metrics and the dashboard off too.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    import psutil

    import actorcore as ac
    from actorcore import _task_events as TE
    from actorcore.testing import runtime_processes

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)
    ac.init(num_cpus=2)

    @ac.remote
    class A:
        def f(self) -> int:
            return 1

        def history_off(self, off: bool) -> None:
            from actorcore import _task_events

            _task_events._off = off

    a: Any = A.remote()
    ac.get(a.f.remote())
    procs = [*runtime_processes(), psutil.Process()]

    def cpu() -> float:
        total = 0.0
        for proc in procs:
            try:
                c = proc.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total

    rows = {
        "1:1 actor calls async": (lambda n: ac.get([a.f.remote() for _ in range(n)]), 20000),
        "1:1 actor calls sync": (lambda n: [ac.get(a.f.remote()) for _ in range(n)], 5000),
    }
    print(
        "| row | off: calls/s | on: calls/s | on/off | off: CPU us/call | on: CPU us/call | delta |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (run, n) in rows.items():
        res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for on in (False, True):
                TE._off = not on
                ac.get(a.history_off.remote(not on))
                run(n)  # warm
                c, w = cpu(), time.perf_counter()
                run(n)
                w = time.perf_counter() - w
                res[on].append(((cpu() - c) / n * 1e6, n / w))
        c_off, c_on = (statistics.median(x[0] for x in res[k]) for k in (False, True))
        r_off, r_on = (statistics.median(x[1] for x in res[k]) for k in (False, True))
        print(
            f"| {name} | {r_off:,.0f} | {r_on:,.0f} | {r_on / r_off:.3f} | {c_off:.1f} | "
            f"{c_on:.1f} | {c_on - c_off:+.1f} ({100 * (c_on - c_off) / c_off:+.1f}%) |"
        )
    ac.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
