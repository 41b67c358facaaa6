"""A throwaway etcd server for tests and single-machine trials.

:class:`EtcdProcess` runs ``etcd`` on free loopback ports with its data in a
fresh ``/dev/shm/etcd-test-*`` directory. :meth:`EtcdProcess.stop` ends the
server but keeps its data and ports, so :meth:`EtcdProcess.start` brings the
same cluster back (to play an etcd outage); :meth:`EtcdProcess.close` stops
it and deletes the data. It is a context manager, sync and async.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

__all__ = ["EtcdCluster", "EtcdNotFoundError", "EtcdProcess"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "the etcd server binary was not found on PATH; install it "
    "(Debian/Ubuntu: `apt-get install etcd-server`; or a release from "
    "https://github.com/etcd-io/etcd/releases) or pass binary=..."
)
_POLL_S = 0.05


class EtcdNotFoundError(RuntimeError):
    """Raised when no ``etcd`` binary can be found."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """One single-member etcd on 127.0.0.1.

    Args:
        namespace: the NAME in :attr:`address`.
        binary: path of ``etcd``; default: found on PATH.
        start_timeout: seconds to wait for ``/health`` to report healthy.
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
        base_dir: where the data directory is made.
        fast_leases: shorten raft's heartbeat (50 ms) so etcd accepts 1 s
            lease TTLs; with etcd's defaults the minimum TTL is 2 s.
        extra_hosts: further addresses to serve clients on (the same port),
            e.g. a test bridge's address that network namespaces reach.
        tls: ``(cert, key, ca)`` files: serve clients over TLS and require
            client certificates signed by ``ca`` (etcd's ``--client-cert-auth``).

    Raises:
        EtcdNotFoundError: no etcd binary.
    """

    def __init__(
        self,
        *,
        namespace: str = "test",
        binary: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        base_dir: str = "/dev/shm",
        fast_leases: bool = True,
        extra_hosts: tuple[str, ...] = (),
        tls: tuple[str, str, str] | None = None,
    ) -> None:
        found = binary or shutil.which("etcd")
        if found is None:
            raise EtcdNotFoundError(_INSTALL_HINT)
        self.binary = found
        self.namespace = namespace
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._base_dir = base_dir
        self._fast_leases = fast_leases
        self._extra_hosts = tuple(extra_hosts)
        self._tls = tls
        self._dir: Path | None = None
        self._client_port = 0
        self._peer_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self._client_port}"

    @property
    def _scheme(self) -> str:
        return "https" if self._tls else "http"

    @property
    def address(self) -> str:
        """``etcd://127.0.0.1:PORT/<namespace>``."""
        return self.address_for(self.namespace)

    def address_for(self, namespace: str, host: str = "127.0.0.1") -> str:
        """The address of this server with another namespace (and host)."""
        return f"etcd://{host}:{self._client_port}/{namespace}"

    @property
    def port(self) -> int:
        return self._client_port

    @property
    def data_dir(self) -> Path | None:
        return None if self._dir is None else self._dir / "data"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start etcd (again, on the same data and ports) and wait until it is healthy.

        Raises:
            RuntimeError: etcd exited or was not healthy within ``start_timeout``.
        """
        if self.running:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="etcd-test-", dir=self._base_dir))
            self._client_port, self._peer_port = _free_port(), _free_port()
        self._log = open(self._dir / "etcd.log", "ab")  # closed in stop()
        self._proc = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        logger.info("started etcd pid %d at %s", self._proc.pid, self.client_url)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self._peer_port}"
        cmd = [
            self.binary,
            "--name", "t1",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", ",".join(
                [
                    self.client_url,
                    *(f"{self._scheme}://{h}:{self._client_port}" for h in self._extra_hosts),
                ]
            ),
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"t1={peer}",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        if self._fast_leases:
            cmd += ["--heartbeat-interval", "50", "--election-timeout", "500"]
        if self._tls:
            cert, key, ca = self._tls
            cmd += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca]
            cmd += ["--client-cert-auth"]
        return cmd

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}: {self._log_tail()}")
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"etcd at {self.client_url} not healthy after {self.start_timeout} s: "
                    f"{self._log_tail()}"
                )
            time.sleep(_POLL_S)  # polling a condition under a deadline

    def _healthy(self) -> bool:
        context = None
        if self._tls:
            cert, key, ca = self._tls
            context = ssl.create_default_context(cafile=ca)
            context.load_cert_chain(cert, key)
        try:
            url = self.client_url + "/health"
            with urllib.request.urlopen(url, timeout=1.0, context=context) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False  # not listening yet, or an answer that is not JSON yet

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return (self._dir / "etcd.log").read_text(errors="replace")[-size:] if self._dir else ""
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout``); keep its data."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("etcd pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop the server and delete its data directory; idempotent."""
        self.stop()
        if self._dir is not None and os.path.isdir(self._dir):
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """:meth:`stop` without blocking the event loop."""
        await asyncio.to_thread(self.stop)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> EtcdProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> EtcdProcess:
        try:
            await self.astart()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class EtcdCluster:
    """A three-member (``members``) etcd cluster on 127.0.0.1, for tests of an etcd
    that loses a member: :attr:`address` names every member
    (``etcd://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/NAME``, clients fail over).

    :meth:`stop_member` / :meth:`kill_member` end one member (its data kept),
    :meth:`start_member` brings it back into the cluster; :meth:`close` ends all
    and deletes the data. A context manager, sync and async.
    """

    def __init__(
        self,
        *,
        members: int = 3,
        namespace: str = "test",
        binary: str | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        base_dir: str = "/dev/shm",
    ) -> None:
        found = binary or shutil.which("etcd")
        if found is None:
            raise EtcdNotFoundError(_INSTALL_HINT)
        self.binary = found
        self.namespace = namespace
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._base_dir = base_dir
        self._n = members
        self._dir: Path | None = None
        self._ports: list[tuple[int, int]] = []
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * members
        self._logs: list[IO[bytes] | None] = [None] * members
        self._started: list[bool] = [False] * members

    @property
    def address(self) -> str:
        return self.address_for(self.namespace)

    def address_for(self, namespace: str, host: str = "127.0.0.1") -> str:
        return "etcd://" + ",".join(f"{host}:{c}" for c, _ in self._ports) + f"/{namespace}"

    def client_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self._ports[i][0]}"

    def running(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int | None:
        proc = self._procs[i]
        return None if proc is None else proc.pid

    def _command(self, i: int) -> list[str]:
        assert self._dir is not None
        _, peer = self._ports[i]
        initial = ",".join(f"m{j}=http://127.0.0.1:{p}" for j, (_, p) in enumerate(self._ports))
        return [
            self.binary,
            "--name", f"m{i}",
            "--data-dir", str(self._dir / f"m{i}"),
            "--listen-client-urls", self.client_url(i),
            "--advertise-client-urls", self.client_url(i),
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", initial,
            "--initial-cluster-token", self._dir.name,
            "--initial-cluster-state", "existing" if self._started[i] else "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def _spawn(self, i: int) -> None:
        assert self._dir is not None
        log = open(self._dir / f"m{i}.log", "ab")  # closed in stop_member()
        self._logs[i] = log
        self._procs[i] = subprocess.Popen(
            self._command(i), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        self._started[i] = True

    def start(self) -> None:
        """Start every member and wait until each reports healthy (a leader elected)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="etcd-cluster-", dir=self._base_dir))
            self._ports = [(_free_port(), _free_port()) for _ in range(self._n)]
        try:
            for i in range(self._n):
                if not self.running(i):
                    self._spawn(i)
            for i in range(self._n):
                self._wait_healthy(i)
        except BaseException:
            self.close()
            raise

    def start_member(self, i: int) -> None:
        """Bring member ``i`` back (same data and ports) and wait until it is healthy."""
        if not self.running(i):
            self._spawn(i)
        self._wait_healthy(i)

    def _wait_healthy(self, i: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            proc = self._procs[i]
            assert proc is not None
            if proc.poll() is not None:
                raise RuntimeError(f"etcd member {i} exited with {proc.returncode}")
            try:
                url = self.client_url(i) + "/health"
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if json.loads(response.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd member {i} not healthy after {self.start_timeout} s")
            time.sleep(_POLL_S)  # polling a condition under a deadline

    def leader(self) -> int | None:
        """The index of the member that leads now (None: no running member knows)."""
        for i in range(self._n):
            if not self.running(i):
                continue
            try:
                request = urllib.request.Request(
                    self.client_url(i) + "/v3/maintenance/status", data=b"{}", method="POST"
                )
                with urllib.request.urlopen(request, timeout=1.0) as response:
                    status = json.loads(response.read())
            except (OSError, ValueError):
                continue
            if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                return i
        return None

    def stop_member(self, i: int, sig: int = signal.SIGTERM) -> None:
        """End member ``i`` (SIGTERM, or ``sig``); its data is kept."""
        proc, self._procs[i] = self._procs[i], None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log, self._logs[i] = self._logs[i], None
        if log is not None:
            log.close()

    def kill_member(self, i: int) -> None:
        """SIGKILL member ``i``."""
        self.stop_member(i, signal.SIGKILL)

    def close(self) -> None:
        """End every member and delete the data; idempotent."""
        for i in range(self._n):
            self.stop_member(i)
        if self._dir is not None and os.path.isdir(self._dir):
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> EtcdCluster:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)
