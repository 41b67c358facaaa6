"""The ``actorcore`` command: start and stop a node, look at it, run benchmarks.

actorcore start [--address etcd://HOST:PORT[,...]/NAME] [--num-cpus N] [--num-gpus N]
                [--resources JSON] [--object-store-memory BYTES] [--node-ip IP] [--port P]
                [--token-file F] [--etcd-user U --etcd-password P] [--etcd-ca F ...]
actorcore stop [--address etcd://.../NAME]
actorcore status [--address etcd://.../NAME]
actorcore list {nodes,actors,tasks,objects,workers,placement-groups} [--filter k=v] [--limit N]
               [--format table|json] [--detail]
actorcore get {actor,task,node} ID
actorcore summary {tasks,actors}
actorcore memory
actorcore logs [--tail N] [--follow] [--node ID] [--actor ID|NAME] [--task ID]
actorcore timeline [-o FILE]
actorcore dashboard [--serve [--host H] [--port P]]
    list, get, summary, logs, timeline and dashboard take --address etcd://.../NAME: a node
    of that cluster answers for every node (dashboard --address serves one for the cluster)
actorcore microbenchmark [FILTER] [--ray-python PATH]
actorcore serve status
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any

__all__ = ["main"]


def _client(node: dict[str, Any]) -> Any:
    from ._config import Config
    from ._ids import new_id
    from ._sync_client import SyncClient

    cfg = Config()
    return SyncClient(
        node.get("unix_name") or tuple(node["address"]),
        token=bytes.fromhex(node["token"]),
        role="cli",
        my_id=new_id(),
        max_header_bytes=cfg.max_header_bytes,
        max_frame_bytes=cfg.max_frame_bytes,
        timeout=30.0,
    )


def _ask(node: dict[str, Any], msg: Any) -> Any:
    from . import _protocol as P
    from ._rpc import error_from_reply

    client = _client(node)
    try:
        reply = client.call(msg)
    finally:
        client.close()
    if reply.TAG == P.Tag.ERROR_REPLY:
        raise error_from_reply(reply)
    return reply.value


def _state(node: dict[str, Any], kind: str) -> Any:
    from . import _protocol as P
    from ._rpc import next_rid

    return _ask(node, P.ListStateMsg(next_rid(), kind))


def _node() -> dict[str, Any]:
    from ._driver import find_local_node

    return find_local_node()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols)]
    for r in rows:
        lines.append("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))
    return "\n".join(lines)


def _config(args: argparse.Namespace) -> Any:
    from ._config import Config

    overrides: dict[str, Any] = {}
    if args.num_cpus is not None:
        overrides["num_cpus"] = args.num_cpus
    if args.num_gpus is not None:
        overrides["num_gpus"] = args.num_gpus
    if args.resources:
        overrides["resources"] = json.loads(args.resources)
    if args.object_store_memory:
        overrides["object_store_memory"] = args.object_store_memory
    if args.node_ttl is not None:
        overrides["node_ttl_s"] = args.node_ttl
    if args.token_file:
        with open(args.token_file) as f:
            overrides["cluster_token"] = f.read().strip()
    for name in ("etcd_user", "etcd_password", "etcd_ca", "etcd_cert", "etcd_key"):
        if getattr(args, name):
            overrides[name] = getattr(args, name)
    return Config.from_env(**overrides)


def cmd_start(args: argparse.Namespace) -> int:
    from ._driver import spawn_daemon, start_cluster_node
    from ._obs._waits import Waiting  # progress of the wait (observability)

    config = _config(args)
    if args.address:
        with Waiting(f"joining cluster {args.address}"):
            proc, ready, _token = start_cluster_node(
                config, args.address, node_ip=args.node_ip, port=args.port or 0, started_by="cli"
            )
    else:
        with Waiting("starting a node"):
            proc, ready = spawn_daemon(
                config, os.urandom(32), None, port=args.port or 0, started_by="cli"
            )
    for f in (proc.stdout, proc.stdin):
        if f is not None:
            f.close()
    host, port = ready["address"][:2]
    print(f"node {ready['node_id']} started: pid {ready['pid']}, address {host}:{port}")
    print(f"session {ready['session']}")
    if args.address:
        print(f"joined cluster {args.address}; connect with ac.init(address={args.address!r})")
    else:
        print("connect with ac.init(address='auto'); stop with `actorcore stop`")
    return 0


def _gone(path: str) -> bool:
    return not os.path.exists(path)


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the nodes this machine started with ``actorcore start`` (of one cluster
    with ``--address``); never nodes that programs started for themselves."""
    from . import _protocol as P
    from ._driver import local_nodes
    from ._obs._waits import Waiting  # progress of the waits (observability)
    from ._rpc import next_rid
    from .testing import wait_for

    stopped = 0
    nodes = local_nodes(cluster=args.address)
    for i, node in enumerate(nodes, 1):
        path = os.path.join("/dev/shm", f"actorcore-{node['session']}", "node.json")
        try:
            _ask(node, P.ShutdownNodeMsg(next_rid()))
        except (OSError, ConnectionError, ValueError):
            continue
        try:
            with Waiting(f"stopping node {node['node_id'][:12]} ({i}/{len(nodes)})"):
                wait_for(functools.partial(_gone, path), 15.0)
        except TimeoutError:
            print(f"node {node['pid']} did not stop in time", file=sys.stderr)
            continue
        stopped += 1
    print(f"stopped {stopped} node(s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ._obs._cli import node_for  # a cluster's node with --address etcd://...

    node = node_for(args.address) if args.address else _node()
    info = _state(node, "node")
    store = _state(node, "store")
    print(f"node {info['node_id']} pid {info['pid']} at {info['address'][0]}:{info['address'][1]}")
    print(f"  session {info['session']}, up {info['uptime_s']:.0f} s, {info['drivers']} driver(s)")
    total, avail = info["resources_total"], info["resources_available"]
    for k in sorted(total):
        if k in ("memory", "object_store_memory"):
            continue
        print(f"  {k}: {total[k] - avail.get(k, 0):g}/{total[k]:g} in use")
    print(f"  workers: {info['workers']}")
    mb = 1024 * 1024
    print(
        f"  object store: {store['used'] / mb:.1f}/{store['capacity'] / mb:.0f} MiB, "
        f"{store['objects']} objects, {store['spilled']} spilled"
    )
    _print_cluster(node)
    from ._obs._cli import print_dashboard  # observability hook

    print_dashboard(node)
    return 0


def _print_cluster(node: dict[str, Any]) -> None:
    """The cluster's nodes, resources, and which node runs the global placer."""
    from . import _protocol as P
    from ._rpc import next_rid

    try:
        placer = _ask(node, P.ClusterInfoMsg(next_rid(), "placer"))
    except (OSError, ConnectionError, ValueError, KeyError):
        return  # a single machine: no cluster part
    if not isinstance(placer, dict):
        return
    nodes = _ask(node, P.ClusterInfoMsg(next_rid(), "nodes"))
    total = _ask(node, P.ClusterInfoMsg(next_rid(), "total"))
    avail = _ask(node, P.ClusterInfoMsg(next_rid(), "available"))
    alive = sum(1 for n in nodes if n.get("Alive"))
    print(f"cluster: {alive} node(s) alive, {len(nodes) - alive} dead")
    if placer.get("node_id"):
        addr = placer.get("address") or ["?", "?"]
        print(f"  placer: node {placer['node_id']} at {addr[0]}:{addr[1]}")
    else:
        print("  placer: none (an election is under way)")
    for k in sorted(total):
        if k in ("memory", "object_store_memory") or ":" in k or "_group_" in k:
            continue
        print(f"  {k}: {total[k] - avail.get(k, 0):g}/{total[k]:g} in use (cluster)")


def cmd_memory(args: argparse.Namespace) -> int:
    node = _node()
    store = _state(node, "store")
    objects = _state(node, "objects")
    mb = 1024 * 1024
    print(
        f"object store: {store['used'] / mb:.1f} of {store['capacity'] / mb:.0f} MiB used; "
        f"{store['objects']} objects ({store['spilled']} spilled, "
        f"{store['spilled_bytes'] / mb:.1f} MiB on disk)"
    )
    print(_table(objects))
    return 0


def cmd_microbenchmark(args: argparse.Namespace) -> int:
    from bench.__main__ import main as bench_main

    argv = list(args.filter)
    if args.ray_python:
        argv += ["--ray-python", args.ray_python]
    return bench_main(argv)


# --- actorcore serve: implemented in actorcore.serve (imported only when used) ---


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve._cli import main as serve_main

    return serve_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actorcore", description="actorcore node control")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start", help="start a node daemon on this machine")
    p.add_argument("--address", help="join a cluster: etcd://HOST:PORT[,HOST:PORT...]/NAME")
    p.add_argument("--num-cpus", type=float)
    p.add_argument("--num-gpus", type=float)
    p.add_argument("--resources", help="custom resources as JSON, e.g. '{\"disk\": 2}'")
    p.add_argument("--object-store-memory", type=int)
    p.add_argument("--node-ip", help="the address peers use (default: the one reaching etcd)")
    p.add_argument("--port", type=int, help="the node's TCP port (default: any free one)")
    p.add_argument("--node-ttl", type=float, help="seconds without lease refresh = dead")
    p.add_argument("--token-file", help="the cluster token (default: the one kept in etcd)")
    p.add_argument("--etcd-user")
    p.add_argument("--etcd-password", help="or ACTORCORE_ETCD_PASSWORD")
    p.add_argument("--etcd-ca", help="CA file: talk TLS to etcd")
    p.add_argument("--etcd-cert", help="client certificate file (etcd client-cert auth)")
    p.add_argument("--etcd-key", help="client key file")
    p.set_defaults(fn=cmd_start)
    p = sub.add_parser("stop", help="stop the nodes started with `actorcore start`")
    p.add_argument("--address", help="only the nodes of this cluster (etcd://.../NAME)")
    p.set_defaults(fn=cmd_stop)
    p = sub.add_parser("status", help="resources, workers and store of the local node")
    p.add_argument("--address", help="a node of this cluster (etcd://.../NAME), and its nodes")
    p.set_defaults(fn=cmd_status)
    sub.add_parser("memory", help="object store use, object by object").set_defaults(fn=cmd_memory)
    from ._obs._cli import add_commands  # observability: list/get/summary/timeline/logs/dashboard

    add_commands(sub)
    p = sub.add_parser("microbenchmark", help="run the benchmark suite (see bench/)")
    p.add_argument("filter", nargs="*")
    p.add_argument("--ray-python")
    p.set_defaults(fn=cmd_microbenchmark)
    p = sub.add_parser("serve", help="serve applications: `actorcore serve status`")
    p.add_argument("action", choices=["status"])
    p.set_defaults(fn=cmd_serve)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConnectionError, ValueError) as e:
        print(f"actorcore: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
