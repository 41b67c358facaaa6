"""Helpers for testing code that uses actorcore (and for actorcore's own tests).

* :func:`wait_for` polls a condition until it holds or a deadline passes
  (never a bare sleep);
* :func:`runtime_processes` lists the node daemon, fork server and workers of
  the running runtime;
* :func:`actor_pid` finds the process hosting an actor; :func:`kill_pid`
  SIGKILLs a process and waits until it is gone;
* :func:`leftover_processes` / :func:`leftover_shm` find what a test left
  behind;
* :class:`Cluster` runs a real etcd and node daemons joined to it (the path
  of ``actorcore start --address``); :class:`NetnsHosts` makes network
  namespaces on a test bridge so nodes live at different addresses.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil

from . import _global as G
from . import _protocol as P
from ._cluster_testing import (
    Cluster,
    ClusterNodeProc,
    NetnsHosts,
    TcpProxy,
    make_tls_certificates,
    netns_unavailable,
    run_driver_on_netns_hosts,
)
from ._rpc import next_rid

__all__ = [
    "Cluster",
    "ClusterNodeProc",
    "NetnsHosts",
    "TcpProxy",
    "actor_pid",
    "kill_pid",
    "leftover_processes",
    "leftover_shm",
    "list_state",
    "make_tls_certificates",
    "netns_unavailable",
    "run_driver_on_netns_hosts",
    "runtime_processes",
    "wait_for",
]


def wait_for(
    cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Return ``cond()``'s first truthy value; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {what or cond}")
        time.sleep(interval)


def list_state(kind: str) -> Any:
    """``actors``, ``workers``, ``objects``, ``store`` or ``node`` as the daemon sees them."""
    return G.require().call_daemon(P.ListStateMsg(next_rid(), kind))


def runtime_processes() -> list[psutil.Process]:
    """The node daemon and every process below it."""
    pid = list_state("node")["pid"]
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def actor_pid(handle: Any, timeout: float = 10.0) -> int:
    """The pid of the worker hosting the actor of ``handle`` (once it is alive)."""
    aid = handle.id.hex()

    def find() -> int | None:
        for a in list_state("actors"):
            if a["actor_id"] == aid and a["state"] == "ALIVE" and a["pid"]:
                return int(a["pid"])
        return None

    return int(wait_for(find, timeout, what=f"actor {aid} alive"))


def kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` and wait until it no longer runs."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, timeout, what=f"pid {pid} gone")


SESSION_MARKER = "ACTORCORE_TEST_SESSION"


def leftover_processes(since: float, marker: str | None = None) -> list[psutil.Process]:
    """Processes started after ``since`` that carry ``ACTORCORE_TEST_SESSION=marker``
    in their environment (set it before starting anything: every driver, node
    daemon and worker inherits it), so runs side by side never see each other's."""
    marker = marker or os.environ.get(SESSION_MARKER)
    if not marker:
        return []
    out = []
    for p in psutil.process_iter(["create_time", "status"]):
        try:
            if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if p.info["create_time"] < since - 0.5:
                continue
            if p.environ().get(SESSION_MARKER) == marker:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def leftover_shm(shm_root: str = "/dev/shm") -> set[str]:
    try:
        return {n for n in os.listdir(shm_root) if n.startswith("actorcore")}
    except FileNotFoundError:
        return set()
