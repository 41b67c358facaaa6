"""The observability commands of the ``actorcore`` CLI.

``list``, ``get``, ``summary``, ``timeline``, ``logs`` and ``dashboard``;
:func:`add_commands` adds them to the CLI's subparsers. They ask the local
node (``actorcore start``) through the state API, or with ``--address
etcd://...`` a node of that cluster (one on this machine, else any live one,
found in etcd); in a cluster the node asked answers for every node.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

__all__ = ["add_commands", "node_for", "print_dashboard"]

LIST_KINDS = {
    "nodes": "nodes",
    "actors": "actors",
    "tasks": "tasks",
    "objects": "objects",
    "workers": "workers",
    "placement-groups": "placement_groups",
}
TABLE_COLUMNS = {
    "nodes": ["node_id", "state", "node_ip", "pid", "cpu_percent", "store_used", "dashboard_url"],
    "actors": ["actor_id", "class_name", "name", "state", "node_id", "pid", "num_restarts"],
    "tasks": ["task_id", "name", "state", "type", "node_id", "worker_pid", "error_type"],
    "objects": ["object_id", "object_size", "state", "owner_id", "spilled", "node_id"],
    "workers": ["worker_id", "pid", "role", "actors", "cpu_percent", "rss", "node_id"],
    "placement_groups": ["placement_group_id", "name", "state", "strategy", "bundles"],
}


_ADDRESS: list[str | None] = [None]  # --address of the command running
_TIMEOUT: list[float | None] = [None]  # --timeout: how long each node may take to answer


def node_for(address: str | None) -> dict[str, Any]:
    """The node to ask: this machine's (``actorcore start``), or one of cluster ``address``.

    Raises:
        ConnectionError: no such node runs (or etcd does not answer).
        ValueError: an address that is not ``etcd://...``.
    """
    from .._driver import find_local_node, local_nodes

    if not address or address in ("auto", "local"):
        return find_local_node()
    if not address.startswith("etcd://"):
        raise ValueError(f"--address is etcd://HOST:PORT/NAME, not {address!r}")
    for node in local_nodes(cluster=address):  # this machine's first (newest first)
        if _answers(node):
            return node
    import asyncio

    for node in asyncio.run(_nodes_from_etcd(address)):  # then any live one (oldest first)
        if _answers(node):
            return node
    raise ConnectionError(f"no node of cluster {address} answers")


def _answers(node: dict[str, Any], timeout: float = 2.0) -> bool:
    """Whether the node's daemon completes a handshake in time (a stuck one does not)."""
    from .._config import Config
    from .._ids import new_id
    from .._sync_client import SyncClient

    cfg = Config()
    try:
        client = SyncClient(
            node.get("unix_name") or tuple(node["address"]),
            token=bytes.fromhex(node["token"]),
            role="cli",
            my_id=new_id(),
            max_header_bytes=cfg.max_header_bytes,
            max_frame_bytes=cfg.max_frame_bytes,
            timeout=timeout,
            handshake_timeout=timeout,
        )
    except (OSError, ConnectionError, ValueError):
        return False
    client.close()
    return True


async def _nodes_from_etcd(address: str) -> list[dict[str, Any]]:
    import msgpack

    from actorcore.gcs import ControlStoreError, EtcdControlStore

    from .._config import Config
    from .._driver import etcd_options
    from .._peers import NODES, TOKEN

    try:
        async with EtcdControlStore(address, options=etcd_options(Config.from_env())) as store:
            token = await store.get(TOKEN)
            nodes, _ = await store.get_prefix(NODES)
    except (ControlStoreError, OSError) as e:
        raise ConnectionError(f"cannot read cluster {address} from etcd: {e}") from e
    records = sorted(
        (dict(msgpack.unpackb(kv.value, raw=False)) for kv in nodes),
        key=lambda r: r.get("start_time", 0.0),
    )
    if token is None or not records:
        raise ConnectionError(f"cluster {address} has no live node")
    return [
        {
            "address": [r["address"], int(r["port"])],
            "token": token.value.hex(),
            "unix_name": None,
            "node_id": r["node_id"],
            "pid": r.get("pid"),
            "cluster": address,
        }
        for r in records
    ]


def _node() -> dict[str, Any]:
    return node_for(_ADDRESS[0])


def _query(kind: str, filters: Any = None, limit: int = 0, options: Any = None) -> Any:
    from ..util.state import query

    options = dict(options or {})
    if _TIMEOUT[0] is not None:
        options["timeout"] = _TIMEOUT[0]
    return query(kind, filters, limit, options, node=_node())


def _with_address(fn: Any) -> Any:
    """Run ``fn`` asking ``--address``'s nodes; silent nodes are named on stderr, briefly."""

    def run(args: argparse.Namespace) -> int:
        import warnings

        def show(message: Any, *_: Any, **__: Any) -> None:
            print(f"actorcore: warning: {message}", file=sys.stderr)

        _ADDRESS[0] = getattr(args, "address", None)
        _TIMEOUT[0] = getattr(args, "timeout", None)
        with warnings.catch_warnings():
            warnings.showwarning = show
            return int(fn(args))

    return run


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "" if v is None else str(v)


def format_table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    """Rows as aligned text columns."""
    if not rows:
        return "(none)"
    cols = cols or list(rows[0])
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _emit(rows: Any, fmt: str, cols: list[str] | None = None) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif isinstance(rows, list):
        print(format_table(rows, cols))
    else:
        print(format_table([rows], cols))


def cmd_list(args: argparse.Namespace) -> int:
    kind = LIST_KINDS[args.what]
    rows = _query(kind, args.filter, args.limit, {"detail": args.detail})
    _emit(rows, args.format, None if args.detail else TABLE_COLUMNS.get(kind))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    rows = _query(args.what, None, 1, {"id": args.id})
    if not rows:
        print(f"no {args.what} {args.id}", file=sys.stderr)
        return 1
    print(json.dumps(rows[0], indent=2, default=str))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .._obs._query import summarize

    s = summarize(args.what, _query(args.what))
    if args.format == "json":
        print(json.dumps(s, indent=2))
        return 0
    states = sorted(s["by_state"])
    rows = [{"name": n, **{st: c.get(st, 0) for st in states}} for n, c in s["by_name"].items()]
    print(format_table(rows, ["name", *states]))
    print(f"total: {s['total']}")
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    from ._timeline import chrome_trace

    trace = chrome_trace(_query("tasks"))
    with open(args.output, "w") as f:
        json.dump(trace, f)
    print(f"wrote {len(trace)} events to {args.output} (open in chrome://tracing or Perfetto)")
    return 0


def _log_filter(args: argparse.Namespace) -> Any:
    """A predicate on log rows for --actor / --task, or None for every line."""
    if args.actor:
        found = _query("actor", None, 1, {"id": args.actor}) or _query(
            "actors", [("name", "=", args.actor)], 1
        )
        if not found:
            raise LookupError(f"no actor {args.actor}")
        pid, prefix, node = found[0]["pid"], found[0]["class_name"], found[0].get("node_id")
        return lambda r: (
            r["pid"] == pid
            and r.get("node_id", node) == node
            and str(r["label"]).startswith(prefix)
        )
    if args.task:
        found = _query("task", None, 1, {"id": args.task})
        if not found:
            raise LookupError(f"no task {args.task}")
        return _task_lines(found[0])
    return None


def _task_lines(t: dict[str, Any]) -> Any:
    """Lines its worker printed under its label while it ran (and shortly after: shipping)."""
    label = t["name"] if t["type"] == "NORMAL_TASK" else t["name"].rsplit(".", 1)[0]
    start = (t["start_time_ms"] or 0) / 1000 - 0.05
    end = (t["end_time_ms"] or 1e13) / 1000 + 2.0

    def keep(r: dict[str, Any]) -> bool:
        return (
            r["pid"] == t["worker_pid"]
            and r.get("node_id", t.get("node_id")) == t.get("node_id")
            and str(r["label"]).startswith(label + " ")
            and start <= r["time"] <= end
        )

    return keep


def cmd_logs(args: argparse.Namespace) -> int:
    if not (args.follow or args.actor or args.task or args.node):
        return _print_log_files(args.tail)
    try:
        keep = _log_filter(args)
    except LookupError as e:
        print(e, file=sys.stderr)
        return 1
    if args.node:
        by_task, node = keep, args.node
        keep = lambda r: str(r["node_id"]).startswith(node) and (by_task is None or by_task(r))  # noqa: E731
    after: dict[str, int] = {}  # per node: each numbers its own lines
    started = time.time()
    rows = _query("logs", None, 0, {"after": 0, "tail": args.tail})
    first = True
    while True:
        for r in rows:
            node = str(r.get("node_id", ""))
            seen = after.get(node)
            after[node] = max(seen or 0, r["seq"])
            if not first and seen is None and r["time"] < started:
                continue  # a node with no line in the tail shown: its older lines stay unshown
            if keep is None or keep(r):
                out = sys.stderr if r["stream"] == "err" else sys.stdout
                out.write(f"({r['label']}) {r['line']}\n")
                out.flush()
        if not args.follow:
            return 0
        first = False
        time.sleep(0.5)  # the follow loop's polling period
        rows = _query("logs", None, 0, {"after": dict(after), "tail": 10_000})


def _print_log_files(tail: int) -> int:
    import glob
    import os

    node = _node()
    if not node.get("session_dir"):  # a node of another machine: its workers' lines instead
        rows = _query("logs", None, 0, {"after": 0, "tail": tail})
        for r in rows:
            print(f"({r['label']}) {r['line']}")
        return 0
    logs = os.path.join(node["session_dir"], "logs")
    for path in sorted(glob.glob(os.path.join(logs, "*"))):
        with open(path, errors="replace") as f:
            lines = f.readlines()[-tail:]
        if lines:
            print(f"==> {os.path.basename(path)} <==")
            sys.stdout.writelines(lines)
    return 0


def _dashboard_of(node: dict[str, Any]) -> dict[str, Any]:
    """Where the dashboard of ``node`` (or of its cluster) is: asked, not read from node.json."""
    try:
        found = _query_node(node, "dashboard")
        return dict(found[0]) if found else {}
    except (ConnectionError, ValueError, OSError):
        return {"dashboard_url": node.get("dashboard_url"), "dashboard_token": None}


def _query_node(node: dict[str, Any], kind: str) -> Any:
    from ..util.state import query

    return query(kind, None, 0, None, node=node)


def print_dashboard(node: dict[str, Any]) -> None:
    """The dashboard and metrics lines of ``actorcore status`` (the cluster's dashboard)."""
    d = _dashboard_of(node)
    url = d.get("dashboard_url")
    if not url:
        print(
            "  dashboard: off"
            + (" (no node of the cluster serves one)" if node.get("cluster") else "")
        )
    else:
        print(f"  dashboard: {url} (token {d.get('dashboard_token')})")
    if node.get("metrics_export_port"):
        print(f"  metrics: http://{node['address'][0]}:{node.get('metrics_export_port')}/metrics")
    if node.get("cluster"):
        try:
            nodes = _query_node(node, "nodes")
        except (ConnectionError, ValueError, OSError) as e:
            print(f"  cluster nodes: cannot ask ({e})")
            return
        print(f"  cluster {node['cluster']}: {len(nodes)} node(s)")
        for n in nodes:
            port = n.get("metrics_export_port")
            metrics = f" metrics http://{n['node_ip']}:{port}/metrics" if port else ""
            print(f"    {n['node_id'][:12]} {n['state']:<11} {n['node_ip']}{metrics}")


def cmd_dashboard(args: argparse.Namespace) -> int:
    node = _node()
    if args.serve or str(args.address or "").startswith("etcd://"):  # serve one for the cluster
        from ._standalone import serve_dashboard

        serve_dashboard(node, args.host, 8266 if args.port is None else args.port)
        return 0
    d = _dashboard_of(node)
    url = d.get("dashboard_url")
    if not url:
        print(
            "no dashboard runs: serve one with `actorcore dashboard --serve`"
            + (f" --address {args.address}" if args.address else ""),
            file=sys.stderr,
        )
        return 1
    print(f"dashboard: {url}")
    print(f"log in with the token {d.get('dashboard_token')}, or open {url}/?token=...")
    return 0


def add_commands(sub: Any) -> None:
    """Add the observability subcommands to the CLI's ``sub`` (argparse subparsers)."""
    p = sub.add_parser("list", help="list nodes, actors, tasks, objects, workers, placement groups")
    p.add_argument("what", choices=list(LIST_KINDS))
    p.add_argument("--filter", action="append", default=[], help="key=value or key!=value")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--detail", action="store_true", help="every field")
    _address(p)
    p.set_defaults(fn=_with_address(cmd_list))
    p = sub.add_parser("get", help="one actor, task or node, by id (or a prefix of it)")
    p.add_argument("what", choices=["actor", "task", "node"])
    p.add_argument("id")
    _address(p)
    p.set_defaults(fn=_with_address(cmd_get))
    p = sub.add_parser("summary", help="tasks or actors counted by name and state")
    p.add_argument("what", choices=["tasks", "actors"])
    p.add_argument("--format", choices=["table", "json"], default="table")
    _address(p)
    p.set_defaults(fn=_with_address(cmd_summary))
    p = sub.add_parser("timeline", help="write a Chrome/Perfetto trace of recent tasks")
    p.add_argument("--output", "-o", default="actorcore-timeline.json")
    _address(p)
    p.set_defaults(fn=_with_address(cmd_timeline))
    p = sub.add_parser("logs", help="worker output (or the session's log files)")
    p.add_argument("--tail", type=int, default=50)
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--actor", help="an actor id (prefix) or name")
    p.add_argument("--task", help="a task id (prefix)")
    p.add_argument("--node", help="a node id (prefix)")
    _address(p)
    p.set_defaults(fn=_with_address(cmd_logs))
    p = sub.add_parser("dashboard", help="where the node's dashboard is and how to log in")
    p.add_argument("--serve", action="store_true", help="serve a dashboard from this process")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="serving: its port (default 8266; 0: any free)")
    _address(p)
    p.set_defaults(fn=_with_address(cmd_dashboard))


def _address(p: Any) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds each node of a cluster may take to answer (default 5); silent ones are named",
    )
    p.add_argument(
        "--address",
        help="a cluster (etcd://HOST:PORT/NAME): ask its nodes (default: this machine's)",
    )
