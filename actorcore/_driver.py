"""The driver: the user's process. Starts (or attaches to) a node and runs the
runtime's event loop on a thread of its own, so the user's code, blocking or
async on any loop, never has to drive it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

from . import _protocol as P
from ._config import Config
from ._ids import new_id
from ._runtime import CoreRuntime, NodeInfo
from .errors import ActorCoreError

__all__ = [
    "DriverRuntime",
    "find_local_node",
    "local_nodes",
    "resolve_token",
    "spawn_daemon",
    "start_cluster_node",
    "tls_options",
]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _local_addresses() -> set[str]:
    """Addresses of this network namespace's interfaces."""
    import psutil

    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}


def _same_cluster(a: str | None, b: str) -> bool:
    from actorcore.gcs import EtcdAddress

    if not a:
        return False
    x, y = EtcdAddress.parse(a), EtcdAddress.parse(b)
    return x.namespace == y.namespace and bool(_resolved(x.endpoints) & _resolved(y.endpoints))


def _resolved(endpoints: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Endpoints by IP address (``localhost:2379`` and ``127.0.0.1:2379`` are one etcd)."""
    import socket

    out = set()
    for host, port in endpoints:
        try:
            out.add((socket.gethostbyname(host), port))
        except OSError:
            out.add((host, port))
    return out


def local_nodes(shm_root: str = "/dev/shm", cluster: str | None = None) -> list[dict[str, Any]]:
    """Nodes started with ``actorcore start`` on this machine (newest first); with
    ``cluster``, only those of that cluster reachable from this network namespace.

    Nodes that programs started for themselves (embedded, or a driver's node
    in a cluster) are never listed: attaching to one would tie this process
    to that program's life.
    """
    from actorcore.store import owner_alive as _owner_alive

    found = []
    mine = _local_addresses() if cluster else set()
    for path in glob.glob(os.path.join(shm_root, "actorcore-*", "node.json")):
        if not _owner_alive(os.path.dirname(path)):
            continue
        try:
            with open(path) as f:
                node = json.load(f)
        except (OSError, ValueError):
            continue
        if node.get("started_by") != "cli":
            continue
        if cluster is not None and not (
            _same_cluster(node.get("cluster"), cluster) and node.get("node_ip") in mine
        ):
            continue
        found.append((os.path.getmtime(path), node))
    return [n for _, n in sorted(found, key=lambda x: x[0], reverse=True)]


def find_local_node(shm_root: str = "/dev/shm", cluster: str | None = None) -> dict[str, Any]:
    """The newest node of ``actorcore start`` on this machine (see :func:`local_nodes`)."""
    nodes = local_nodes(shm_root, cluster)
    if not nodes:
        where = f" of cluster {cluster}" if cluster else ""
        raise ConnectionError(
            f"no running actorcore node{where} started with `actorcore start` on this "
            f"machine: start one with `actorcore start`, or call ac.init() without an "
            f"address to start one for this program"
        )
    return nodes[0]


def etcd_options(config: Config) -> Any:
    """The etcd login settings of ``config``."""
    from actorcore.gcs import EtcdOptions

    return EtcdOptions(
        user=config.etcd_user or None,
        password=config.etcd_password or None,
        ca=config.etcd_ca or None,
        cert=config.etcd_cert or None,
        key=config.etcd_key or None,
    )


def tls_options(config: Config) -> Any:
    """The mutual-TLS settings of ``config`` (:class:`~._tls.TlsOptions`)."""
    from ._tls import TlsOptions

    return TlsOptions(config.tls_cert or None, config.tls_key or None, config.tls_ca or None)


def resolve_token(config: Config, address: str) -> bytes:
    """The cluster's token (from etcd; ``config.cluster_token`` or a new one if it has none).

    Blocking: call it where no event loop runs.
    """
    from ._peers import cluster_token

    given = config.cluster_token.encode() if config.cluster_token else None
    return asyncio.run(cluster_token(address, etcd_options(config), given))


def _wait_for_etcd(call: Any, address: str, limit_s: float = 120.0) -> Any:
    """``call()``, tried again while etcd is unreachable (a join waits out an outage,
    as long as every other control change does: ``gcs/_retry.py``'s 2 minutes; it
    was 30 s, and a node started as a 30 s outage began never joined)."""
    from actorcore.gcs import ControlStoreUnavailableError

    deadline = time.monotonic() + limit_s
    delay = 0.2
    while True:
        try:
            return call()
        except ControlStoreUnavailableError as e:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("etcd at %s unreachable (%s): joining waits for it", address, e)
        time.sleep(delay)  # backoff while etcd is away
        delay = min(2.0, delay * 2)


def start_cluster_node(
    config: Config,
    address: str,
    *,
    node_ip: str | None = None,
    port: int = 0,
    started_by: str = "cli",
    owner_pid: int | None = None,
    wrap: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], dict[str, Any], bytes]:
    """Start a node daemon that joins cluster ``address``; returns once it is registered.

    The path of ``actorcore start --address`` (``started_by="cli"``) and of a
    driver that finds no node of its cluster here (``"driver"``, with
    ``owner_pid``: the node leaves with that process). ``wrap`` prefixes the
    daemon's command (tests: ``["ip", "netns", "exec", NS]``).
    """
    from ._peers import ClusterSpec, local_ip_towards
    from ._tls import TlsContexts

    tls = tls_options(config)
    TlsContexts.load(tls)  # bad TLS files fail here, not in the daemon
    token = _wait_for_etcd(lambda: resolve_token(config, address), address)
    spec = ClusterSpec(
        address,
        node_ip or local_ip_towards(address),
        config.node_ttl_s,
        etcd_options(config),
        started_by,
        tls,
    )
    proc, ready = spawn_daemon(
        config,
        token,
        owner_pid,
        cluster=spec.to_dict(),
        port=port,
        started_by=started_by,
        wrap=wrap,
    )
    return proc, ready, token


class DriverRuntime(CoreRuntime):
    role = "driver"

    def __init__(
        self, config: Config, token: bytes, node: NodeInfo, proc: subprocess.Popen[bytes] | None
    ) -> None:
        super().__init__(config, token, new_id(), node)
        self.proc = proc
        self._thread: threading.Thread | None = None

    # --- starting --------------------------------------------------------------------------

    @classmethod
    def start(cls, config: Config, address: str | None, namespace: str | None) -> DriverRuntime:
        proc: subprocess.Popen[bytes] | None = None
        if address is None:
            token = os.urandom(32)
            proc, ready = spawn_daemon(config, token, os.getpid())
        elif address.startswith("etcd://"):
            nodes = local_nodes(config.shm_root, address)
            if config.attach_node:
                nodes = [n for n in nodes if n["node_id"].startswith(config.attach_node)]
                if not nodes:
                    raise ConnectionError(
                        f"no node {config.attach_node} of cluster {address} runs here"
                    )
            if nodes:
                ready = nodes[0]
                token = bytes.fromhex(ready["token"])
            else:  # a node of our own that leaves the cluster when this driver exits
                proc, ready, token = start_cluster_node(
                    config, address, started_by="driver", owner_pid=os.getpid()
                )
        else:
            if address not in ("auto", "local"):
                raise ValueError(
                    f"address {address!r} is not supported: use None (start a node here), "
                    f"'auto' (attach to the node `actorcore start` runs on this machine) or "
                    f"'etcd://host:port/NAME' (join that cluster)"
                )
            ready = find_local_node(config.shm_root)
            token = bytes.fromhex(ready["token"])
        ready["node_id"] = bytes.fromhex(ready["node_id"])
        if ready.get("capacity_note"):
            warnings.warn(ready["capacity_note"], RuntimeWarning, stacklevel=3)
        rt = cls(config, token, NodeInfo(ready), proc)
        if namespace:
            rt.namespace = namespace
        try:
            rt._start_loop()
        except BaseException:
            rt._kill_daemon()
            raise
        return rt

    def _start_loop(self) -> None:
        if self.config.loop == "uvloop":
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="actorcore-io", daemon=True)
        self._thread.start()
        started.wait()
        asyncio.run_coroutine_threadsafe(self.astart(), loop).result(START_TIMEOUT_S)

    async def register(self) -> None:
        from ._rpc import next_rid

        info = await self.daemon.call(
            P.RegisterDriverMsg(
                next_rid(),
                self.my_id,
                os.getpid(),
                list(self.address),
                self.proc is not None,
                [p for p in sys.path if p],
            )
        )
        self.job_id = info["job_id"]

    # --- stopping ------------------------------------------------------------------------------

    def stop(self) -> None:
        loop = self.loop
        self.closing = True  # the daemon hanging up now is expected
        if self.proc is not None and self.broken is None:
            try:
                from ._rpc import next_rid

                self.call_daemon(P.ShutdownNodeMsg(next_rid()), timeout=5.0)
            except Exception as e:
                logger.debug("shutdown request failed: %s", e)
        if loop is not None and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self.astop(), loop).result(10.0)
            except Exception as e:
                logger.debug("stopping the runtime loop: %s", e)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(10.0)
            if not loop.is_running():
                loop.close()
        self._kill_daemon()

    def _kill_daemon(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
        for f in (proc.stdout, proc.stderr, proc.stdin):
            if f is not None:
                f.close()


def spawn_daemon(
    config: Config,
    token: bytes,
    owner_pid: int | None = None,
    *,
    cluster: dict[str, Any] | None = None,
    port: int = 0,
    started_by: str = "driver",
    wrap: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a node daemon process; returns it and its ready information.

    With ``owner_pid`` the node ends when that process does (embedded mode).
    With ``cluster`` (:meth:`ClusterSpec.to_dict`) it joins that cluster and
    is ready once registered. ``started_by="cli"`` marks nodes of
    ``actorcore start`` (the only ones ``address="auto"`` and ``actorcore
    stop`` touch).
    """
    # secrets travel in the boot line only where needed (the cluster part), never to workers
    config = dataclasses.replace(config, cluster_token="", etcd_password="")
    session = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    if config.session_tag:
        session += "-" + config.session_tag
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PKG_ROOT, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(
        [*(wrap or []), sys.executable, "-m", "actorcore._daemon"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    boot = {
        "token": token.hex(),
        "session": session,
        "config": config.to_dict(),
        "owner_pid": owner_pid,
        "cluster": cluster,
        "port": port,
        "started_by": started_by,
        "sys_path": [p for p in sys.path if p] + [os.getcwd()],
    }
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((json.dumps(boot) + "\n").encode())
    proc.stdin.close()
    line = _read_line(proc, START_TIMEOUT_S)
    if not line:
        err = b""
        if proc.stderr is not None:
            proc.wait(5.0)
            err = proc.stderr.read()
        raise ActorCoreError(f"the node daemon failed to start:\n{err.decode(errors='replace')}")
    if proc.stderr is not None:
        proc.stderr.close()
        proc.stderr = None
    return proc, json.loads(line)


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            raise ActorCoreError(f"the node daemon did not start within {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            buf += chunk
    return buf.split(b"\n", 1)[0]
