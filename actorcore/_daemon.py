"""The node daemon process: ``python -m actorcore._daemon`` (reads its boot
settings as one JSON line on stdin, answers with one JSON line on stdout when
ready).

Start-up order matters: the listening socket and the session directories come
first, then the fork server is forked while this process still has no thread
and no event loop, and only then does the uvloop loop start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

__all__ = ["main", "read_node_file"]

logger = logging.getLogger("actorcore.daemon")


def _setup_logging(path: str) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _write_node_file(path: str, info: dict[str, Any], token: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**info, "token": token}, f)


def read_node_file(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def main() -> None:
    boot = json.loads(sys.stdin.readline())
    from ._task_events import set_process_title

    set_process_title("daemon")  # observability hook: `ps` shows actorcore::daemon
    # The driver's paths come after the daemon's own: a user's module named like
    # one of ours (store.py, gcs.py) must never shadow actorcore's.
    for path in boot.get("sys_path", []):
        if path not in sys.path:
            sys.path.append(path)
    from actorcore.store import Arena, SessionDirs, default_capacity, sweep_stale

    from ._config import Config
    from ._ids import new_id

    config = Config.from_dict(boot["config"])
    sweep_stale(config.shm_root)
    dirs = SessionDirs.create(boot["session"], config.shm_root, config.spill_dir)
    _setup_logging(os.path.join(dirs.logs_dir, "daemon.log"))
    for life in boot.get("fenced", []):  # earlier lives of this process (actorcore._fencing)
        logger.warning("this daemon fenced itself as node %s: %s", life["node_id"], life["why"])
    capacity, note = default_capacity(config.shm_root, config.object_store_memory)
    if note:
        logger.warning("%s", note)
    Arena.create(dirs.arena_path, capacity)
    node_id = new_id()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    cluster = boot.get("cluster")
    host = cluster["node_ip"] if cluster else boot.get("host", "127.0.0.1")
    lsock.bind((host, int(boot.get("port", 0))))
    lsock.listen(1024)
    address = list(lsock.getsockname()[:2])
    node = {
        "node_id": node_id,
        "address": address,
        "unix_name": f"\0actorcore-{node_id.hex()}-{os.getpid()}",
        "arena_path": dirs.arena_path,
        "capacity": capacity,
        "session": dirs.session,
        "session_dir": dirs.disk_dir,
        # who started it: only nodes of `actorcore start` are found by address="auto"
        "started_by": boot.get("started_by", "driver"),
        "cluster": cluster["address"] if cluster else None,
        "node_ip": host,
        # mutual TLS on this node's TCP links (its workers and drivers use it too)
        "tls": (cluster or {}).get("tls"),
    }
    worker_boot = {
        "config": config.to_dict(),
        "token": boot["token"],
        "node": node,
        "log_dir": dirs.logs_dir,
    }
    zsock, zpid = _fork_zygote(lsock, worker_boot)
    fenced = ""
    try:
        fenced = _serve(config, boot, dirs, node, capacity, note, lsock, (zsock, zpid))
    finally:
        dirs.remove()
    if fenced:  # the old node id is dead for the cluster: come back as a new node
        from ._fencing import reexec_daemon

        lives = [*boot.get("fenced", [])[-9:], {"node_id": node["node_id"].hex(), "why": fenced}]
        cluster = {**boot["cluster"], "rejoin": True}  # wait for etcd: it may still be cut off
        reexec_daemon({**boot, "cluster": cluster, "fenced": lives}, fenced)


def _fork_zygote(lsock: socket.socket, worker_boot: dict[str, Any]) -> tuple[socket.socket, int]:
    parent, child = socket.socketpair()
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        parent.close()
        lsock.close()
        from ._zygote import zygote_main

        try:
            zygote_main(child, worker_boot, me)
        finally:
            os._exit(1)
    child.close()
    return parent, pid


def _serve(
    config: Any,
    boot: dict[str, Any],
    dirs: Any,
    node: dict[str, Any],
    capacity: int,
    note: str | None,
    lsock: socket.socket,
    zygote: tuple[socket.socket, int],
) -> str:
    """Serve until stopped; returns why the node fenced itself ("" if it did not)."""
    from actorcore.store import Arena

    from ._node import NodeDaemon

    if config.loop == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    daemon = NodeDaemon(
        config=config,
        token=bytes.fromhex(boot["token"]),
        node_id=node["node_id"],
        dirs=dirs,
        arena=Arena(dirs.arena_path, capacity),
        capacity=capacity,
        listen_sock=lsock,
        zygote=zygote,
        owner_pid=boot.get("owner_pid"),
        sys_path=list(boot.get("sys_path", [])),
        unix_name=node["unix_name"],
        cluster=boot.get("cluster"),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop, f"signal {sig.name}")
    loop.run_until_complete(daemon.serve())
    ready = {**node, "node_id": node["node_id"].hex(), "pid": os.getpid(), "capacity_note": note}
    ready.update(daemon.obs.ready_info())  # observability hook: dashboard and metrics ports
    _write_node_file(os.path.join(dirs.shm_dir, "node.json"), ready, boot["token"])
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    # from here on the driver stops reading our pipes: output goes to the log
    log_fd = os.open(
        os.path.join(dirs.logs_dir, "daemon.out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        loop.run_until_complete(daemon.wait_stopped())
    finally:
        loop.run_until_complete(daemon.close())
        loop.close()
    return str(daemon.fenced)


if __name__ == "__main__":
    main()
