"""``python -m bench`` / ``actorcore microbenchmark``: the rows of ``ray
microbenchmark`` and a few more, for actorcore and (with ``--ray-python``) for
Ray in the same run, alternating row by row, plus the floor.

    python -m bench                                 # every row, actorcore only
    python -m bench "actor calls" --ray-python /tmp/rayenv/bin/python
    python -m bench --markdown bench/RESULTS.md --ray-python /tmp/rayenv/bin/python

A FILTER keeps the rows whose name contains it (several filters: any of them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import floor, startup
from . import runtime_env as renv

_HERE = os.path.dirname(os.path.abspath(__file__))
_WORKLOADS = os.path.join(_HERE, "workloads.py")

RAY_ROWS = [
    "single client get calls (Plasma Store)",
    "single client put calls (Plasma Store)",
    "multi client put calls (Plasma Store)",
    "single client put gigabytes",
    "single client tasks and get batch",
    "multi client put gigabytes",
    "single client get object containing 10k refs",
    "single client wait 1k refs",
    "single client tasks sync",
    "single client tasks async",
    "multi client tasks async",
    "1:1 actor calls sync",
    "1:1 actor calls async",
    "1:1 actor calls concurrent",
    "1:n actor calls async",
    "n:n actor calls async",
    "n:n actor calls with arg async",
    "1:1 async-actor calls sync",
    "1:1 async-actor calls async",
    "1:1 async-actor calls with args async",
    "1:n async-actor calls async",
    "n:n async-actor calls async",
    "placement group create/removal",
]
EXTRA_ROWS = [
    "single client get calls, 2 MiB numpy array",
    "single client get calls, 200 MiB numpy array",
    "1:1 actor call latency (p50/p99 us)",
    "asyncio driver, 100 coroutines awaiting actor calls",
    "asyncio driver, async-actor calls awaited one at a time",
    "cancel of a task blocked in time.sleep, to its error (s)",
    "idle RSS of runtime processes (MB)",
]
MEMORY_BOUND = {"single client put gigabytes", "multi client put gigabytes"}
LOWER_IS_BETTER = {
    "1:1 actor call latency (p50/p99 us)",
    "cancel of a task blocked in time.sleep, to its error (s)",
    "idle RSS of runtime processes (MB)",
    "startup: init() to first result (s)",
    "runtime_env: init(working_dir) to first result (s)",
}


class Runner:
    """One long-lived process running rows for one framework."""

    def __init__(self, python: str, framework: str, rounds: int, round_s: float) -> None:
        env = dict(os.environ)
        root = os.path.dirname(_HERE)
        if framework == "actorcore":
            env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen(
            [
                python,
                _WORKLOADS,
                "--framework",
                framework,
                "--rounds",
                str(rounds),
                "--round-s",
                str(round_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(tempfile.gettempdir(), f"bench-{framework}.log"), "w"),
            text=True,
            env=env,
            cwd=_HERE,
        )
        self.framework = framework
        ready = self._read()
        self.rows = set(ready.get("ready", []))

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        code = self.proc.wait()
        raise RuntimeError(f"the {self.framework} benchmark process ended early (exit code {code})")

    def run(self, row: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(row + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _fmt(v: Any) -> str:
    if not isinstance(v, int | float):
        return str(v)
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:,.2f}"
    return f"{v:.3f}"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "error"
    if "skipped" in r:
        return "n/a"
    s = _fmt(r["median"])
    if "rss_mb" in r:
        return f"{s} ({r['seconds']:.0f} s; {r['rss_mb']:,.0f} MB in {r['processes']} processes)"
    if "p99" in r:
        s += f" / {_fmt(r['p99'])}"
    elif r.get("rounds"):
        lo, hi = min(r["rounds"]), max(r["rounds"])
        if r["median"] > 0:
            s += f" (±{(hi - lo) / 2 / r['median'] * 100:.0f}%)"
    return s


def _ratio(name: str, ours: dict[str, Any] | None, ray: dict[str, Any] | None) -> tuple[str, str]:
    if not ours or not ray or "median" not in ours or "median" not in ray or not ray["median"]:
        return "-", ""
    if name in LOWER_IS_BETTER:
        ratio = ray["median"] / ours["median"] if ours["median"] else float("inf")
    else:
        ratio = ours["median"] / ray["median"]
    need = 1.0 if name in MEMORY_BOUND else 3.0
    verdict = "yes" if ratio >= need else "NO"
    return f"{ratio:.1f}x", verdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("filter", nargs="*", help="keep rows whose name contains any of these")
    ap.add_argument(
        "--ray-python", help="a Python with Ray installed, to run Ray's rows side by side"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-s", type=float, default=1.0)
    ap.add_argument(
        "--light-actors", type=int, default=100_000, help="actors for the light-actor row (0: skip)"
    )
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args(argv)

    def wanted(name: str) -> bool:
        return not args.filter or any(f in name for f in args.filter)

    rows = [r for r in RAY_ROWS + EXTRA_ROWS if wanted(r)]
    results: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = []
    started = time.strftime("%Y-%m-%d %H:%M")

    if wanted("startup: init() to first result (s)"):
        name = "startup: init() to first result (s)"
        ours = startup.measure(sys.executable, "actorcore")
        ray = startup.measure(args.ray_python, "ray") if args.ray_python else None
        results.append((name, ours, ray))
        _print_row(name, ours, ray)

    if wanted("runtime_env: init(working_dir) to first result (s)"):
        name = "runtime_env: init(working_dir) to first result (s)"
        ours = renv.measure(sys.executable, "actorcore")
        ray = renv.measure(args.ray_python, "ray") if args.ray_python else None
        results.append((name, ours, ray))
        _print_row(name, ours, ray)

    mine = Runner(sys.executable, "actorcore", args.rounds, args.round_s)
    theirs = Runner(args.ray_python, "ray", args.rounds, args.round_s) if args.ray_python else None
    try:
        for i, name in enumerate(rows):
            order = [mine, theirs] if i % 2 == 0 else [theirs, mine]
            got: dict[str, dict[str, Any] | None] = {"actorcore": None, "ray": None}
            for runner in order:
                if runner is not None:
                    got[runner.framework] = runner.run(name)
            results.append((name, got["actorcore"], got["ray"]))
            _print_row(name, got["actorcore"], got["ray"])
        if args.light_actors and wanted("light actors"):
            name = f"light actors {args.light_actors}"
            r = mine.run(name)
            results.append(
                (f"{args.light_actors:,} light actors created + called once (per s)", r, None)
            )
            _print_row(results[-1][0], r, None)
    finally:
        mine.close()
        if theirs is not None:
            theirs.close()

    if wanted("floor"):
        fl = floor.measure(args.rounds, args.round_s)
        results.append(("floor: bare msgpack echo, one at a time", {"median": fl["sync"]}, None))
        results.append(
            ("floor: bare msgpack echo, 1000 in flight", {"median": fl["pipelined"]}, None)
        )
        for floor_name, floor_row, _ in results[-2:]:
            _print_row(floor_name, floor_row, None)

    if args.markdown:
        _write_markdown(args, results, started)
    return 0


def _print_row(name: str, ours: Any, ray: Any) -> None:
    ratio, verdict = _ratio(name, ours, ray)
    print(f"{name:55s} {_cell(ours):>22s} {_cell(ray):>22s} {ratio:>7s} {verdict}", flush=True)
    for who, r in (("actorcore", ours), ("ray", ray)):
        if r and "error" in r:
            print(f"    {who}: {r['error']}", flush=True)


def _write_markdown(args: argparse.Namespace, results: list[Any], started: str) -> None:
    cmd = "python -m bench " + " ".join(
        [
            *(repr(f) for f in args.filter),
            *(["--ray-python", args.ray_python] if args.ray_python else []),
            "--markdown",
            args.markdown,
        ]
    )
    lines = [
        "| row | actorcore | Ray 2.60 | ratio | >= target |",
        "|---|---:|---:|---:|:---:|",
    ]
    for name, ours, ray in results:
        ratio, verdict = _ratio(name, ours, ray)
        lines.append(f"| {name} | {_cell(ours)} | {_cell(ray)} | {ratio} | {verdict} |")
    with open(args.markdown, "w") as f:
        f.write(
            f"# Benchmark results\n\nRun {started} on {platform.node()} "
            f"({os.cpu_count()} cores, Python {platform.python_version()}), with:\n\n"
            f"    {cmd}\n\n"
            "Each cell is the median of the rounds (± half the spread across rounds); "
            "rows are per second unless the name says otherwise. Ratios are ours over Ray's "
            "(Ray's over ours where lower is better). Target: 3x Ray, 1x for the memory-bound "
            "put-gigabytes rows.\n\n" + "\n".join(lines) + "\n"
        )


if __name__ == "__main__":
    sys.exit(main())
