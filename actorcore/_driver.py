"""The driver: the user's process. Starts (or attaches to) a node and runs the
runtime's event loop on a thread of its own, so the user's code, blocking or
async on any loop, never has to drive it.
"""

from __future__ import annotations

import asyncio
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

__all__ = ["DriverRuntime", "find_local_node", "spawn_daemon"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_local_node(shm_root: str = "/dev/shm") -> dict[str, Any]:
    """The newest node started with ``actorcore start`` on this machine."""
    from actorcore.store import owner_alive as _owner_alive

    found = []
    for path in glob.glob(os.path.join(shm_root, "actorcore-*", "node.json")):
        if _owner_alive(os.path.dirname(path)):
            found.append((os.path.getmtime(path), path))
    if not found:
        raise ConnectionError(
            "no running actorcore node on this machine: start one with `actorcore start`, "
            "or call ac.init() without an address to start one for this program"
        )
    with open(max(found)[1]) as f:
        return json.load(f)


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
        if address is None:
            token = os.urandom(32)
            proc, ready = spawn_daemon(config, token, os.getpid())
        else:
            if address not in ("auto", "local"):
                raise ValueError(
                    f"address {address!r} is not supported yet: use None (start a node here) or "
                    f"'auto' (attach to the node `actorcore start` runs on this machine)"
                )
            ready = find_local_node(config.shm_root)
            token = bytes.fromhex(ready["token"])
            proc = None
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
    config: Config, token: bytes, owner_pid: int | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a node daemon process; returns it and its ready information.

    With ``owner_pid`` the node ends when that process does (embedded mode).
    """
    session = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    if config.session_tag:
        session += "-" + config.session_tag
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PKG_ROOT, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(
        [sys.executable, "-m", "actorcore._daemon"],
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
