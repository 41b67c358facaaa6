"""Test clusters on one machine: a real etcd and node daemons, and network-namespace hosts.

* :class:`Cluster` starts an etcd (free loopback port, data in /dev/shm) and
  node daemons through the path of ``actorcore start --address`` and tears
  everything down, even after a failure: daemons (their whole process
  group), their /dev/shm and session directories, etcd and its data.
* :class:`NetnsHosts` makes network namespaces on a test bridge (veth pairs,
  addresses of a test subnet) so that nodes live at different addresses as
  on separate machines; it removes every namespace and link it made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Cluster",
    "ClusterNodeProc",
    "NetnsHosts",
    "TcpProxy",
    "make_tls_certificates",
    "netns_unavailable",
    "run_driver_on_netns_hosts",
]

_STOP_S = 15.0


@dataclass
class ClusterNodeProc:
    """One node daemon of a :class:`Cluster`."""

    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    token: bytes
    stopped: bool = False

    @property
    def node_id(self) -> str:
        return str(self.ready["node_id"])

    @property
    def pid(self) -> int:
        return int(self.ready["pid"])

    def ask(self, msg: Any) -> Any:
        """Send one request to this node's daemon over TCP (it may live in another
        network namespace, where its Unix socket is out of reach)."""
        from ._cli import _ask

        return _ask({**self.ready, "token": self.token.hex(), "unix_name": None}, msg)

    def nodes(self) -> list[dict[str, Any]]:
        """``ac.nodes()`` as this node sees it."""
        from . import _protocol as P
        from ._rpc import next_rid

        return list(self.ask(P.ClusterInfoMsg(next_rid(), "nodes")))


@dataclass
class Cluster:
    """A real etcd and node daemons joined to cluster ``namespace``.

    Args:
        num_nodes: nodes started by :meth:`start`.
        namespace: the cluster's NAME (default: unique per instance).
        ttl_s: node lease TTL (small in tests: a killed node is seen dead after it).
        num_cpus: CPUs of each node started by :meth:`start`.
        etcd: an :class:`~actorcore.gcs.EtcdProcess` to use (not closed here);
            default: one of its own.
        etcd_host: the host in :attr:`address` (a bridge address for namespaces).
    """

    num_nodes: int = 2
    namespace: str = ""
    ttl_s: float = 3.0
    num_cpus: float = 1.0
    etcd: Any = None
    etcd_host: str = "127.0.0.1"
    nodes: list[ClusterNodeProc] = field(default_factory=list)
    _own_etcd: bool = False

    @property
    def address(self) -> str:
        return str(self.etcd.address_for(self.namespace, self.etcd_host))

    def start(self, timeout: float = 120.0) -> Cluster:
        """Start etcd (unless given) and the nodes; return once every node sees all."""
        from actorcore.gcs import EtcdProcess

        self.namespace = self.namespace or f"test-{os.getpid()}-{os.urandom(3).hex()}"
        try:
            if self.etcd is None:
                self.etcd = EtcdProcess(namespace=self.namespace)
                self._own_etcd = True
                self.etcd.start()
            for _ in range(self.num_nodes):
                self.add_node(num_cpus=self.num_cpus, wait=False)
            self.wait_registered(timeout)
        except BaseException:
            self.shutdown()
            raise
        return self

    def config(self, **overrides: Any) -> Any:
        from ._config import Config

        return Config.from_env(node_ttl_s=self.ttl_s, **overrides)

    def add_node(
        self,
        *,
        num_cpus: float = 1.0,
        resources: dict[str, float] | None = None,
        node_ip: str | None = None,
        wrap: list[str] | None = None,
        wait: bool = True,
        etcd_address: str | None = None,
        **settings: Any,
    ) -> ClusterNodeProc:
        """Start one more node (``actorcore start --address`` path); with ``wait``,
        return once every live node lists it. ``etcd_address``: the address this
        node reaches etcd at (e.g. through a proxy a test can cut), same NAME."""
        from ._driver import start_cluster_node

        config = self.config(num_cpus=num_cpus, resources=resources or {}, **settings)
        proc, ready, token = start_cluster_node(
            config, etcd_address or self.address, node_ip=node_ip or self.etcd_host, wrap=wrap
        )
        for f in (proc.stdout, proc.stdin):
            if f is not None:
                f.close()
        node = ClusterNodeProc(proc, ready, token)
        self.nodes.append(node)
        if wait:
            self.wait_registered()
        return node

    def live(self) -> list[ClusterNodeProc]:
        return [n for n in self.nodes if not n.stopped]

    def wait_registered(self, timeout: float = 60.0) -> None:
        """Wait until every live node lists every live node as alive."""
        from .testing import wait_for

        want = {n.node_id for n in self.live()}

        def all_seen() -> bool:
            for n in self.live():
                alive = {r["NodeID"] for r in n.nodes() if r["Alive"]}
                if not want <= alive:
                    return False
            return True

        wait_for(all_seen, timeout, interval=0.05, what=f"{len(want)} nodes registered")

    def live_records(self) -> dict[str, dict[str, Any]]:
        """The live nodes' records, straight from etcd (node id hex -> record)."""
        import asyncio

        import msgpack

        from actorcore.gcs import EtcdControlStore

        async def read() -> dict[str, dict[str, Any]]:
            async with EtcdControlStore(self.address, call_timeout=5.0) as store:
                kvs, _ = await store.get_prefix(b"/nodes/")
            return {
                kv.key[len(b"/nodes/") :].decode(): msgpack.unpackb(kv.value, raw=False)
                for kv in kvs
            }

        return asyncio.run(read())

    def wait_reborn(self, node: ClusterNodeProc, timeout: float = 60.0) -> str:
        """Wait until ``node``'s daemon process, fenced, is registered again under a
        new node id (same pid); point ``node`` at it and return the old id."""
        from .testing import wait_for

        old = node.node_id

        def reborn() -> dict[str, Any] | None:
            for nid, rec in self.live_records().items():
                if nid != old and int(rec["pid"]) == node.pid:
                    return {**rec, "node_id": nid}
            return None

        rec = wait_for(reborn, timeout, interval=0.1, what=f"node {old[:8]} back as a new node")
        node.ready = {
            **node.ready,
            "node_id": rec["node_id"],
            "address": [rec["address"], int(rec["port"])],
        }
        # registered is not ready: its node file is written once it serves (as the
        # first start's ready line), and every live node must list it
        path = os.path.join("/dev/shm", "actorcore-" + str(node.ready["session"]), "node.json")

        def serving() -> bool:
            try:
                with open(path) as f:
                    return bool(json.load(f).get("node_id") == rec["node_id"])
            except (OSError, ValueError):
                return False

        wait_for(serving, timeout, interval=0.05, what=f"node {rec['node_id'][:8]} serving")
        self.wait_registered(timeout)
        return old

    @staticmethod
    def daemon_log(node: ClusterNodeProc) -> str:
        """The text of ``node``'s daemon log ("" if there is none)."""
        path = os.path.join(
            tempfile.gettempdir(),
            f"actorcore-session-{node.ready['session']}",
            "logs",
            "daemon.log",
        )
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop_node(self, node: ClusterNodeProc, *, kill: bool = False) -> None:
        """Stop one node: cleanly (it leaves at once), or SIGKILL (seen dead after the TTL)."""
        if node.stopped:
            return
        node.stopped = True
        if kill:
            _killpg(node.pid, signal.SIGKILL)
        else:
            try:
                os.kill(node.pid, signal.SIGTERM)  # the daemon stops its workers itself
            except ProcessLookupError:
                pass
        try:
            node.proc.wait(_STOP_S)
        except subprocess.TimeoutExpired:
            _killpg(node.pid, signal.SIGKILL)
            node.proc.wait(5.0)
        _reap_group(node.pid)
        _remove_session(node.ready)

    def shutdown(self) -> None:
        """Stop every node, then etcd (if this cluster started it); idempotent."""
        try:
            for node in self.nodes:
                self.stop_node(node)
        finally:
            if self._own_etcd and self.etcd is not None:
                self.etcd.close()
                self.etcd = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the daemon leads its own session: zygote and workers too
    except (ProcessLookupError, PermissionError):
        pass


def _reap_group(pgid: int, timeout: float = _STOP_S) -> None:
    """Wait until no process of group ``pgid`` is left (SIGKILL after ``timeout``)."""
    import psutil

    from .testing import wait_for

    def left() -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return out

    try:
        wait_for(lambda: not left(), timeout, interval=0.05, what=f"process group {pgid} gone")
    except TimeoutError:
        _killpg(pgid, signal.SIGKILL)
        wait_for(lambda: not left(), 5.0, interval=0.05, what=f"process group {pgid} killed")


def _remove_session(ready: dict[str, Any]) -> None:
    """A node killed hard leaves its session directories: remove them."""
    session = ready.get("session")
    if not session:
        return
    shutil.rmtree(os.path.join("/dev/shm", "actorcore-" + session), ignore_errors=True)
    shutil.rmtree(
        os.path.join(tempfile.gettempdir(), "actorcore-session-" + session), ignore_errors=True
    )


# --- network namespaces ------------------------------------------------------------------


def run_driver_on_netns_hosts(
    count: int, driver: str, **node_settings: Any
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """A cluster of ``count`` one-CPU nodes on network-namespace hosts (node
    ``i`` offers resource ``h<i>``), etcd on the bridge; runs the Python code
    ``driver`` (``ADDRESS`` in it replaced by the cluster's address) on host 0.

    Returns the finished driver process and the nodes' ids. Everything is torn
    down before returning, even on failure.
    """
    import sys
    import textwrap

    from actorcore.gcs import EtcdProcess

    with NetnsHosts(count=count) as hosts:
        with EtcdProcess(namespace="unused", extra_hosts=(hosts.bridge_ip,)) as etcd:
            cluster = Cluster(num_nodes=0, etcd=etcd, etcd_host=hosts.bridge_ip, ttl_s=3.0)
            cluster.start()
            try:
                for i in range(count):
                    cluster.add_node(
                        num_cpus=1,
                        resources={f"h{i}": 2},
                        node_ip=hosts.ip_of(i),
                        wrap=hosts.wrap(i),
                        wait=False,
                        **node_settings,
                    )
                cluster.wait_registered(60)
                code = textwrap.dedent(driver.replace("ADDRESS", repr(cluster.address)))
                run = subprocess.run(
                    [*hosts.wrap(0), sys.executable, "-c", code],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    env=dict(os.environ),
                )
            finally:
                cluster.shutdown()
    return run, [n.node_id for n in cluster.nodes]


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2)"
    probe = f"acprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=30)
    if made.returncode != 0:
        why = made.stderr.decode(errors="replace").strip()
        return f"cannot create network namespaces here (no CAP_NET_ADMIN?): {why}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=30)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class NetnsHosts:
    """``count`` network namespaces on one bridge: host i at ``<subnet>.<i+1>``,
    the bridge (the root namespace's side) at ``<subnet>.254``.

    Names carry this process's pid; every namespace and link made is removed
    by :meth:`close` (also when setting up fails half way).
    """

    count: int = 3
    # one /24 of 10.77.0.0/16 per process: test runs side by side do not collide
    subnet: str = field(default_factory=lambda: f"10.77.{os.getpid() % 250}")
    tag: str = ""
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.254"

    def ip_of(self, i: int) -> str:
        return f"{self.subnet}.{i + 1}"

    def wrap(self, i: int) -> list[str]:
        """The command prefix that runs a program in host ``i``."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    def open(self) -> NetnsHosts:
        self.tag = self.tag or f"ac{os.getpid() % 100000}"
        bridge = f"{self.tag}br"
        try:
            _ip("link", "add", bridge, "type", "bridge")
            self.links.append(bridge)
            _ip("addr", "add", f"{self.bridge_ip}/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
            for i in range(self.count):
                self._add_host(i, bridge)
        except BaseException:
            self.close()
            raise
        return self

    def _add_host(self, i: int, bridge: str) -> None:
        ns, outside, inside = f"{self.tag}ns{i}", f"{self.tag}v{i}", f"{self.tag}p{i}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self.links.append(outside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", ns, "addr", "add", f"{self.ip_of(i)}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")

    def set_link(self, i: int, up: bool) -> None:
        """Cut (``up=False``) or restore host ``i``'s only link to the bridge (a
        partition: its packets are dropped, nothing is refused)."""
        _ip("link", "set", f"{self.tag}v{i}", "up" if up else "down")

    def close(self) -> None:
        """Remove every namespace and link made; idempotent, best effort per item."""
        errors = []
        for ns in reversed(self.namespaces):
            try:
                _ip("netns", "delete", ns)
            except subprocess.SubprocessError as e:
                errors.append(f"{ns}: {e}")
        self.namespaces.clear()
        for link in reversed(self.links):
            r = subprocess.run(["ip", "link", "delete", link], capture_output=True, timeout=30)
            if r.returncode != 0 and b"Cannot find device" not in r.stderr:
                errors.append(f"{link}: {r.stderr.decode(errors='replace').strip()}")
        self.links.clear()
        if errors:
            raise RuntimeError("could not remove test network links: " + "; ".join(errors))

    def __enter__(self) -> NetnsHosts:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_tls_certificates(directory: str, names: tuple[str, ...] = ("node",)) -> dict[str, Any]:
    """A throwaway CA in ``directory`` and one certificate per name that it signed
    (for both ends of a link), made with the ``openssl`` command.

    Returns ``{name: {"tls_cert": ..., "tls_key": ..., "tls_ca": ...}}``: the
    settings of :meth:`Cluster.add_node` (or ``actorcore start --tls-*``).

    Raises:
        FileNotFoundError: no ``openssl`` command.
        subprocess.CalledProcessError: it failed.
    """

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    tag = os.urandom(3).hex()
    ca, ca_key = os.path.join(directory, f"ca-{tag}.pem"), os.path.join(directory, f"ca-{tag}.key")
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", f"/CN=ca-{tag}")
    ext = os.path.join(directory, f"ext-{tag}.cnf")
    with open(ext, "w") as f:
        f.write("extendedKeyUsage=serverAuth,clientAuth\n")
    out: dict[str, Any] = {}
    for name in names:
        cert, key, csr = (
            os.path.join(directory, f"{name}-{tag}{s}") for s in (".pem", ".key", ".csr")
        )
        run("req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
        out[name] = {"tls_cert": cert, "tls_key": key, "tls_ca": ca}
    return out


# --- a link a test can cut ----------------------------------------------------------------


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 to ``target`` (e.g. one node's way to etcd):
    :meth:`cut` closes every link and refuses new ones; :meth:`open` again reopens
    it on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                a, _ = server.accept()
            except OSError:
                return  # cut
            try:
                b = socket.create_connection(self.target, timeout=5)
            except OSError:
                a.close()
                continue
            with self._lock:
                self._links += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._server.close()
            self._server = None
        with self._lock:
            links, self._links = self._links, []
        for s in links:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
