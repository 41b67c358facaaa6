"""Idle RSS of a node with its dashboard up (and in use) against off, side by side with Ray.

    python -m bench.obs_rss [--ray-python /tmp/rayenv/bin/python] [--rounds 3]

Each measurement is a fresh driver in a subprocess: init, one task, for
"dashboard on" one authenticated page load of the dashboard (so its web stack
is loaded, as when someone watches), then 2 s idle; RSS summed over every
process below the driver (the node: daemon, zygote, workers; Ray: GCS,
raylet, dashboard, agents, workers). Medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, os, sys, time, urllib.error, urllib.request

def descendants(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out

def rss_of(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
fw_name, dash = sys.argv[1], sys.argv[2] == "1"
if fw_name == "ray":
    import ray as fw
    ctx = fw.init(
        include_dashboard=dash, dashboard_port=18265, logging_level="ERROR", log_to_driver=False
    )
    url = ("http://" + ctx.dashboard_url) if dash and ctx.dashboard_url else None
    headers = {}
else:
    import actorcore as fw
    kw = {} if dash else {"include_dashboard": False, "metrics_export_port": -1}
    info = fw.init(**kw)
    url = info.dashboard_url
    headers = {"Authorization": "Bearer %s" % info.dashboard_token} if url else {}

@fw.remote
def one():
    return 1

fw.get(one.remote())
if url:
    path = "/api/nodes" if fw_name != "ray" else "/nodes?view=summary"
    for _ in range(3):
        req = urllib.request.Request(url + path, headers=headers)
        try:
            urllib.request.urlopen(req, timeout=30).read()
        except urllib.error.HTTPError as e:  # Ray 2.60 may ask for its own token: served anyway
            e.read()
time.sleep(2.0)
procs = descendants(os.getpid())
rss = sum(rss_of(p) for p in procs)
print(json.dumps({"rss_mb": rss / 2**20, "processes": len(procs)}))
fw.shutdown()
"""


def _one(python: str, fw: str, dash: bool) -> dict[str, float]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    if fw != "ray":
        env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [python, "-c", _CHILD, fw, "1" if dash else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{fw} dashboard={dash}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ray-python")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    sides = [("actorcore", sys.executable)]
    if args.ray_python:
        sides.append(("ray", args.ray_python))
    got: dict[tuple[str, bool], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for fw, python in sides:
            for dash in (False, True):
                got.setdefault((fw, dash), []).append(_one(python, fw, dash))
    print("| framework | dashboard | idle RSS (MB, median) | processes | valid runs |")
    print("|---|---|---:|---:|---:|")
    for (fw, dash), all_rows in got.items():
        # a runtime that lost its processes (Ray's node declared dead under load) does not count
        rows = [r for r in all_rows if r["processes"] > 0] or all_rows
        rss = statistics.median(r["rss_mb"] for r in rows)
        procs = statistics.median(r["processes"] for r in rows)
        label = "on, page loaded" if dash else "off"
        print(f"| {fw} | {label} | {rss:.0f} | {procs:.0f} | {len(rows)}/{len(all_rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
