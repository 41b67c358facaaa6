"""The cost of observability on the hot paths: task history + metrics on against off.

    python -m bench.obs_cost [--rounds 5] [--calls 3000]

Each round runs one fresh runtime in a subprocess, "on" (the defaults: task
history, /metrics, the dashboard) and "off" (``ACTORCORE_TASK_EVENTS=0
ACTORCORE_METRICS_EXPORT_PORT=-1 ACTORCORE_INCLUDE_DASHBOARD=0``) alternating,
and reports per workload the median rate and the median CPU time per call
summed over every process of the runtime (driver, node daemon, workers): CPU
time is steadier than rates on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

OFF = {
    "ACTORCORE_TASK_EVENTS": "0",
    "ACTORCORE_METRICS_EXPORT_PORT": "-1",
    "ACTORCORE_INCLUDE_DASHBOARD": "0",
}

_CHILD = r"""
import json, sys, time
import psutil
import actorcore as ac
from actorcore.testing import runtime_processes

N = int(sys.argv[1])
ac.init(num_cpus=2)

@ac.remote
class A:
    def f(self):
        return 1

@ac.remote
def t():
    return 1

a = A.remote()
ac.get(a.f.remote())
ac.get([t.remote() for _ in range(200)])

me = psutil.Process()
daemon_pid = runtime_processes()[0].pid

def cpu():
    out = {"driver": 0.0, "daemon": 0.0, "workers": 0.0}
    for p in runtime_processes() + [me]:
        try:
            c = p.cpu_times()
        except psutil.Error:
            continue
        role = "driver" if p.pid == me.pid else "daemon" if p.pid == daemon_pid else "workers"
        out[role] += c.user + c.system
    return out

out = {}
for name, run in (
    ("1:1 actor calls sync", lambda: [ac.get(a.f.remote()) for _ in range(N)]),
    ("1:1 actor calls async", lambda: ac.get([a.f.remote() for _ in range(N)])),
    ("single client tasks async", lambda: ac.get([t.remote() for _ in range(N)])),
):
    run()  # warm
    c0, w0 = cpu(), time.perf_counter()
    run()
    w1, c1 = time.perf_counter(), cpu()
    per = {k: (c1[k] - c0[k]) / N * 1e6 for k in c0}
    out[name] = {"rate": N / (w1 - w0), "cpu_us": sum(per.values()), **per}
ac.shutdown()
print(json.dumps(out))
"""


def _round(on: bool, calls: int) -> dict[str, dict[str, float]]:
    env = dict(os.environ)
    if not on:
        env.update(OFF)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(calls)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--only", help="turn off only this setting (e.g. TASK_EVENTS)")
    args = p.parse_args(argv)
    if args.only:
        key = "ACTORCORE_" + args.only
        for k in list(OFF):
            if k != key:
                del OFF[k]
    runs: dict[bool, list[dict[str, dict[str, float]]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for on in (False, True):
            runs[on].append(_round(on, args.calls))
    print(
        "| row | off: calls/s | on: calls/s | on/off "
        "| off: CPU us/call | on: CPU us/call | delta | delta driver/daemon/workers |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in runs[True][0]:

        def med(on: bool, key: str, row: str = row) -> float:
            return statistics.median(r[row][key] for r in runs[on])

        r_off, r_on = med(False, "rate"), med(True, "rate")
        c_off, c_on = med(False, "cpu_us"), med(True, "cpu_us")
        parts = "/".join(
            f"{med(True, k) - med(False, k):+.1f}" for k in ("driver", "daemon", "workers")
        )
        print(
            f"| {row} | {r_off:,.0f} | {r_on:,.0f} | {r_on / r_off:.3f} | "
            f"{c_off:.1f} | {c_on:.1f} | {c_on - c_off:+.1f} | {parts} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
