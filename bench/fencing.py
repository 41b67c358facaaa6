"""``python -m bench.fencing``: how fast a node that lost its lease stops serving and
comes back (issue 10 items 2, 5 and 6), on a real etcd and real node daemons.

Three nodes: the driver's (A), a peer (B), and the node under test (C) with an
actor on it. Per round, one of:

* ``freeze``: SIGSTOP C's daemon; times until C's actor worker exits by itself
  (its daemon no longer vouches for it) and until A sees C dead; then SIGCONT
  and the time until C is registered again under a new node id;
* ``cut``: C reaches etcd through a TCP proxy that is cut (C still reaches its
  peers, which reach etcd: the partitioned side of the rule); same times, the
  proxy reopened once A sees C dead;
* ``outage``: etcd stopped for ``--outage`` seconds: calls to C's actor made
  meanwhile, and whether any node fenced (the outage side of the rule: none may).

    python -m bench.fencing [--rounds 3] [--ttl 2] [--outage 6]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from typing import Any


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _alive(node: Any, node_id: str) -> bool | None:
    for r in node.nodes():
        if r["NodeID"] == node_id:
            return bool(r["Alive"])
    return None


def _first_times(conds: dict[str, Any], timeout: float) -> dict[str, float]:
    """Seconds until each condition first holds (all polled every 5 ms, one deadline)."""
    start = time.monotonic()
    out: dict[str, float] = {}
    while len(out) < len(conds):
        for k, cond in conds.items():
            if k not in out and cond():
                out[k] = time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout} s: {set(conds) - set(out)}")
        time.sleep(0.005)  # polling states under a deadline
    return out


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    import actorcore as ac
    from actorcore.testing import Cluster, TcpProxy

    @ac.remote
    class Pinned:
        def pid(self) -> int:
            return os.getpid()

        def ping(self) -> int:
            return 1

    rows: dict[str, list[float]] = {}

    def add(key: str, v: float) -> None:
        rows.setdefault(key, []).append(v)

    ttl = args.ttl
    with Cluster(num_nodes=2, ttl_s=ttl) as c:
        proxy = TcpProxy(("127.0.0.1", c.etcd.port))
        proxy.open()
        via = f"etcd://127.0.0.1:{proxy.port}/{c.namespace}"
        node = c.add_node(num_cpus=1, resources={"c": 100}, etcd_address=via)
        ac.init(address=c.address, attach_node=c.nodes[0].node_id)
        try:
            for r in range(args.rounds):
                for mode in ("freeze", "cut"):
                    actor = Pinned.options(resources={"c": 1}).remote()
                    worker = ac.get(actor.pid.remote(), timeout=60)
                    old = node.node_id
                    if mode == "freeze":
                        os.kill(node.pid, signal.SIGSTOP)
                    else:
                        proxy.cut()
                    try:
                        seen = _first_times(
                            {
                                "dead": lambda o=old: _alive(c.nodes[0], o) is False,
                                "worker": lambda w=worker: _gone(w),
                            },
                            10 * ttl,
                        )
                    finally:
                        if mode == "freeze":
                            os.kill(node.pid, signal.SIGCONT)
                        else:
                            proxy.open()
                    add(f"{mode}: its worker gone (s)", seen["worker"])
                    add(f"{mode}: seen dead by a peer (s)", seen["dead"])
                    back = time.monotonic()
                    c.wait_reborn(node, 60)
                    c.wait_registered(60)  # every node lists it (work is placed by that view)
                    add(
                        f"{mode}: back as a new node (s after the cause ends)",
                        time.monotonic() - back,
                    )
                    print(f"round {r} {mode}: {seen}", file=sys.stderr)
                    del actor
            actor = Pinned.options(resources={"c": 1}).remote()
            ac.get(actor.ping.remote(), timeout=60)
            ids = {n.node_id for n in c.nodes}
            c.etcd.stop()
            t0, calls = time.monotonic(), 0
            while time.monotonic() - t0 < args.outage:
                calls += ac.get(actor.ping.remote(), timeout=30)
            c.etcd.start()
            add("outage: calls answered during it", float(calls))
            time.sleep(2 * ttl)  # let a fence, if any, happen (what is measured is its absence)
            alive = {r["NodeID"] for r in c.nodes[0].nodes() if r["Alive"]}
            add("outage: nodes fenced", float(len(ids - alive)))
        finally:
            ac.shutdown()
            proxy.cut()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ttl", type=float, default=2.0)
    p.add_argument("--outage", type=float, default=6.0)
    args = p.parse_args(argv)
    rows = run(args)
    print(f"TTL {args.ttl:g} s, {args.rounds} rounds (median, min-max):")
    for k, v in rows.items():
        print(f"  {k:<52} {statistics.median(v):7.2f}  ({min(v):.2f}-{max(v):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
