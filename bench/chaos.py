"""``python -m bench.chaos``: SIGKILL random workers (and node daemons) under a mixed
workload, and check every answer (issue 10 item 7).

A real etcd and ``--nodes`` worker nodes (each with the resource ``chaos``) plus
the driver's node (never killed: the driver attaches to it; it holds no
``chaos``, so the workload runs on the nodes that die). Rounds of:

* tasks with retries (``max_retries``): ``square(i)``;
* large objects: ``make(seed)`` returns a 1 MiB array (store-sized, kept on
  the node that made it), ``digest(ref)`` reads it on any node;
* actors with restarts (``max_restarts``, ``max_task_retries``): ``Acc.twice(x)``.

A killer thread SIGKILLs, every ``--kill-every`` seconds, a random worker
process of a random worker node, or with ``--kill-daemons`` sometimes a whole
node (its daemon's process group, as a machine dies; a fresh node replaces it).
``--etcd-outage S`` also stops etcd for S seconds in the middle of the run.

Every answer is checked: a value must be the right one; an error must be one
that says what was lost (``ActorDiedError``, ``WorkerCrashedError``,
``NodeDiedError``, ``ObjectLostError``); a call that does not answer within
``--deadline`` seconds is a hang. Every execution is logged to a file, so the
report counts retries (executions before the first answer), reconstructions
(executions after it) and actor restarts (``__init__`` runs beyond the first).

    python -m bench.chaos [--duration 120] [--nodes 3] [--kill-every 2] [--kill-daemons]
                          [--etcd-outage 30] [--seed 1] [--json]

Exit status 0 when no answer was wrong and none hung (lost ones may raise).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

EXPECTED = ("ActorDiedError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError")
BIG = 1 << 20  # bytes per large object (store-sized: well above the inline limit)


@dataclass
class Report:
    duration_s: float = 0.0
    nodes: int = 0
    kill_daemons: bool = False
    etcd_outage_s: float = 0.0
    kills: dict[str, int] = field(default_factory=lambda: {"worker": 0, "daemon": 0})
    submitted: dict[str, int] = field(default_factory=dict)
    correct: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)  # "kind:ErrorName"
    wrong: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    retries: int = 0
    reconstructions: int = 0
    restarts: int = 0
    rounds: int = 0
    latency_max_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.wrong and not self.hung

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["wrong"] = self.wrong[:20]
        d["hung"] = self.hung[:20]
        return d


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _log_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())  # one small O_APPEND write: never interleaved
    finally:
        os.close(fd)


def _workload(ac: Any, log: str) -> tuple[Any, Any, Any, Any]:
    import numpy as np

    @ac.remote(resources={"chaos": 1}, max_retries=5)
    def square(key: str, i: int) -> int:
        _log_line(log, f"task {key} {time.time()}")
        return i * i

    @ac.remote(resources={"chaos": 1}, max_retries=5)
    def make(key: str, seed: int) -> Any:
        _log_line(log, f"make {key} {time.time()}")
        return np.random.default_rng(seed).integers(0, 255, BIG, dtype=np.uint8)

    @ac.remote(resources={"chaos": 1}, max_retries=5)
    def digest(key: str, arr: Any) -> int:
        _log_line(log, f"digest {key} {time.time()}")
        return int(arr.sum(dtype=np.uint64))

    @ac.remote(resources={"chaos": 0.5}, max_restarts=1000, max_task_retries=3)
    class Acc:
        def __init__(self, name: str) -> None:
            _log_line(log, f"init {name} {time.time()}")

        def twice(self, x: int) -> int:
            return 2 * x

    return square, make, digest, Acc


def _expected_digest(seed: int) -> int:
    import numpy as np

    arr = np.random.default_rng(seed).integers(0, 255, BIG, dtype=np.uint8)
    return int(arr.sum(dtype=np.uint64))


class Killer(threading.Thread):
    """SIGKILLs a random worker (or node) of the chaos nodes every ``every`` seconds."""

    def __init__(self, cluster: Any, victims: list[Any], args: Any, report: Report) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.cluster = cluster
        self.victims = victims  # the nodes that may die (never the driver's)
        self.args = args
        self.report = report
        self.rng = random.Random(args.seed)
        self.halt = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        import psutil

        while not self.halt.wait(self.args.kill_every):  # the kill rate, not synchronization
            try:
                node = self.rng.choice([n for n in self.victims if not n.stopped])
                if self.args.kill_daemons and self.rng.random() < self.args.daemon_share:
                    self._kill_node(node)
                    continue
                daemon = psutil.Process(node.pid)
                zygotes = {p.pid for p in daemon.children()}
                workers = [p for p in daemon.children(recursive=True) if p.pid not in zygotes]
                if workers:
                    self.rng.choice(workers).kill()
                    self.report.kills["worker"] += 1
            except Exception as e:  # a process that ended meanwhile, a node replaced...
                self.errors.append(repr(e))

    def _kill_node(self, node: Any) -> None:
        self.cluster.stop_node(node, kill=True)
        self.report.kills["daemon"] += 1
        fresh = self.cluster.add_node(
            num_cpus=2, resources={"chaos": 4}, wait=False
        )  # a new machine takes its place
        self.victims[self.victims.index(node)] = fresh


def run(args: argparse.Namespace) -> Report:
    logdir = tempfile.mkdtemp(prefix="acchaos-", dir="/dev/shm")
    try:
        return _run(args, logdir)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)  # (also when the run failed)


def _run(args: argparse.Namespace, logdir: str) -> Report:
    import actorcore as ac
    from actorcore.errors import GetTimeoutError
    from actorcore.testing import Cluster

    report = Report(
        nodes=args.nodes, kill_daemons=args.kill_daemons, etcd_outage_s=args.etcd_outage
    )
    log = os.path.join(logdir, "executions")
    cluster = Cluster(num_nodes=1, ttl_s=args.ttl, num_cpus=1)
    cluster.start()
    killer: Killer | None = None
    answered: dict[str, float] = {}  # key -> when its first answer came
    try:
        victims = [
            cluster.add_node(num_cpus=2, resources={"chaos": 4}, wait=False)
            for _ in range(args.nodes)
        ]
        cluster.wait_registered(60)
        ac.init(address=cluster.address, attach_node=cluster.nodes[0].node_id)
        square, make, digest, Acc = _workload(ac, log)
        actors = [Acc.remote(f"a{i}") for i in range(args.actors)]
        killer = Killer(cluster, victims, args, report)
        start = time.monotonic()
        killer.start()
        outage_at = start + args.duration / 2 if args.etcd_outage else None
        n = 0
        while time.monotonic() - start < args.duration:
            if outage_at is not None and time.monotonic() >= outage_at:
                outage_at = None
                threading.Thread(
                    target=_outage, args=(cluster, args.etcd_outage), daemon=True
                ).start()
            n += 1
            pending: list[tuple[str, str, Any, Any]] = []
            for i in range(args.tasks):
                key = f"t{n}.{i}"
                pending.append(("task", key, square.remote(key, i), i * i))
            for i in range(args.objects):
                key, seed = f"o{n}.{i}", n * 1000 + i
                big = make.remote(key, seed)
                pending.append(("object", key, digest.remote(key, big), _expected_digest(seed)))
            for i, a in enumerate(actors):
                x = n * 100 + i
                pending.append(("actor", f"c{n}.{i}", a.twice.remote(x), 2 * x))
            for kind, key, ref, want in pending:
                _bump(report.submitted, kind)
                t0 = time.monotonic()
                try:
                    got = ac.get(ref, timeout=args.deadline)
                except GetTimeoutError:
                    report.hung.append(f"{kind} {key}")
                    continue
                except Exception as e:
                    name = type(e).__name__
                    if any(x in [c.__name__ for c in type(e).__mro__] for x in EXPECTED):
                        _bump(report.lost, f"{kind}:{name}")
                    else:
                        report.wrong.append(f"{kind} {key}: {name}: {str(e)[:200]}")
                    continue
                finally:
                    report.latency_max_s = max(report.latency_max_s, time.monotonic() - t0)
                answered.setdefault(key, time.time())
                if got == want:
                    _bump(report.correct, kind)
                else:
                    report.wrong.append(f"{kind} {key}: {got!r} != {want!r}")
        report.rounds = n
        report.duration_s = time.monotonic() - start
    finally:
        if killer is not None:
            killer.halt.set()
            killer.join(60)
        try:
            ac.shutdown()
        finally:
            cluster.shutdown()
    _count_executions(log, answered, args.actors, report)
    if killer is not None and killer.errors:
        print(f"killer notes: {killer.errors[:5]}", file=sys.stderr)
    return report


def _outage(cluster: Any, seconds: float) -> None:
    cluster.etcd.stop()
    time.sleep(seconds)  # the outage itself: what is measured is what happens meanwhile
    cluster.etcd.start()


def _count_executions(log: str, answered: dict[str, float], actors: int, report: Report) -> None:
    runs: dict[str, list[float]] = collections.defaultdict(list)
    inits = 0
    try:
        with open(log) as f:
            for line in f:
                kind, key, t = line.split()
                if kind == "init":
                    inits += 1
                elif kind in ("task", "digest"):
                    runs[key].append(float(t))
                else:  # make: the object's maker, answered through its digest
                    runs["m" + key].append(float(t))
    except FileNotFoundError:
        return
    report.restarts = max(0, inits - actors)
    for key, times in runs.items():
        first = answered.get(key[1:] if key.startswith("m") else key)
        if first is None:
            report.retries += max(0, len(times) - 1)
            continue
        before = [t for t in times if t <= first]
        report.retries += max(0, len(before) - 1)
        report.reconstructions += len(times) - len(before)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of workload")
    p.add_argument("--nodes", type=int, default=3, help="worker nodes (the driver's is extra)")
    p.add_argument("--ttl", type=float, default=2.0, help="node lease TTL")
    p.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills")
    p.add_argument("--kill-daemons", action="store_true", help="also SIGKILL whole nodes")
    p.add_argument("--daemon-share", type=float, default=0.2, help="share of kills that are nodes")
    p.add_argument("--etcd-outage", type=float, default=0.0, help="stop etcd this long mid-run")
    p.add_argument("--tasks", type=int, default=8, help="tasks per round")
    p.add_argument("--objects", type=int, default=2, help="large objects per round")
    p.add_argument("--actors", type=int, default=4, help="actors (one call each per round)")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds before a call hangs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = p.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        for k, v in report.to_dict().items():
            print(f"{k:>16}: {v}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
