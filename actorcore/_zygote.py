"""The fork server: a process with the heavy modules imported, forking workers.

The node daemon forks it once at start, before it has any thread or event
loop. Asked over a socketpair, it forks a worker in a few milliseconds (no
interpreter start, no imports) and answers with its pid; it reaps workers and
reports each exit. It dies with the daemon (``PR_SET_PDEATHSIG``), and its
workers die with it.

Requests: ``F`` forks a plain worker; ``E`` + a little-endian u32 length + a
JSON object forks ``count`` workers of a runtime env (``tag``: the env's
hash, ``env_vars``, ``paths`` put first on ``sys.path``, ``cwd``). The answer is
``P <pid> [<tag>]``; ``X <pid> <code>`` reports an exit, and ``R 0``, sent once
its imports are done, says it is ready. Variables that numpy or the other pre-imported modules
read at import time are already read when a runtime env sets them.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
from typing import Any

__all__ = ["die_with_parent", "zygote_main"]

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> None:
    """Get SIGKILL when the parent dies; exit now if it already did."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != expected_parent:
        os._exit(0)


def _apply_env(env: dict[str, Any]) -> None:
    """Give this (forked) worker its runtime env: variables, import paths, directory."""
    os.environ.update({str(k): str(v) for k, v in env.get("env_vars", {}).items()})
    for path in reversed(env.get("paths", [])):
        sys.path.insert(0, path)
    if env.get("cwd"):
        os.chdir(env["cwd"])


def _worker_child(
    sock: socket.socket, boot: dict[str, Any], zygote_pid: int, env: dict[str, Any] | None = None
) -> None:
    sock.close()
    die_with_parent(zygote_pid)
    if env:
        _apply_env(env)
        boot = {**boot, "runtime_env": env.get("wire")}
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log_dir = boot.get("log_dir")
    if log_dir:
        fd = os.open(
            os.path.join(log_dir, f"worker-{os.getpid()}.log"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o600,
        )
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    from actorcore.store import reset_after_fork

    reset_after_fork()
    from ._worker import worker_main

    worker_main(boot)
    os._exit(0)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        try:
            sock.sendall(f"X {pid} {code}\n".encode())
        except OSError:
            os._exit(0)


def zygote_main(sock: socket.socket, boot: dict[str, Any], daemon_pid: int) -> None:
    """Serve fork requests until the daemon goes away. Never returns."""
    die_with_parent(daemon_pid)
    log_dir = boot.get("log_dir")
    if log_dir:
        fd = os.open(
            os.path.join(log_dir, "zygote.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    me = os.getpid()
    # pre-import what every worker needs
    import cloudpickle  # noqa: F401
    import numpy  # noqa: F401

    from . import _worker  # noqa: F401
    from ._task_events import set_process_title

    set_process_title("forkserver")  # observability hook
    # What is here now lives as long as every worker: the cyclic GC of a worker
    # need not walk it (a full collection of these ~40,000 objects took ~45 ms,
    # about every 25,000 calls), nor write to its pages (shared with this process).
    gc.freeze()
    sock.sendall(b"R 0\n")  # ready: forks from here on take milliseconds
    buf = b""
    while True:
        ready, _, _ = select.select([sock], [], [], 0.5)
        _reap(sock)
        if not ready:
            continue
        data = sock.recv(4096)
        if not data:
            os._exit(0)
        buf += data
        while buf:
            env, buf = _next_request(buf)
            if env is _INCOMPLETE:
                break
            if env is _SKIP:
                continue
            for _ in range(int(env.get("count", 1)) if env else 1):
                _fork_worker(sock, boot, me, env)


def _fork_worker(sock: socket.socket, boot: dict[str, Any], me: int, env: Any) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _worker_child(sock, boot, me, env)
        finally:
            os._exit(1)
    tag = f" {env['tag']}" if env else ""
    sock.sendall(f"P {pid}{tag}\n".encode())


_INCOMPLETE: Any = object()
_SKIP: Any = object()
_LEN = struct.Struct("<I")


def _next_request(buf: bytes) -> tuple[Any, bytes]:
    """``(None: a plain worker | env dict | _SKIP | _INCOMPLETE, the rest)``."""
    cmd = buf[:1]
    if cmd == b"F":
        return None, buf[1:]
    if cmd != b"E":
        return _SKIP, buf[1:]
    if len(buf) < 1 + _LEN.size:
        return _INCOMPLETE, buf
    (n,) = _LEN.unpack_from(buf, 1)
    end = 1 + _LEN.size + n
    if len(buf) < end:
        return _INCOMPLETE, buf
    try:
        env = json.loads(buf[1 + _LEN.size : end])
    except ValueError:
        return _SKIP, buf[end:]
    return env, buf[end:]
