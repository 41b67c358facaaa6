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

__all__ = ["EtcdNotFoundError", "EtcdProcess"]

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
