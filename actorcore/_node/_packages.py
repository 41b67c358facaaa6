"""The node's side of runtime environments: packages stored once, workers per env.

A package (a zip named by the blake2b hash of its bytes, see
:mod:`actorcore._runtime_env`) lives on a node as two things under
``<session dir>/runtime_env/``: ``<hash>.zip`` (kept, so this node can serve
it to others) and ``<hash>/`` (its unpacked files, what workers import). Both
appear atomically: bytes go to a temporary file that is renamed once its hash
checks; files are extracted into a temporary directory that is renamed into
place. The session directory goes when the node stops, and the cache with it.

Packages arrive two ways:

* ``PACKAGE_PUT`` from a process of this node (a driver or worker shipping its
  own code), in chunks; it first asks, and sends nothing when the node holds
  the hash already (``statistics()["uploads"]`` counts what was received);
* ``PACKAGE_GET`` from a peer daemon, when work of an env whose package this
  node lacks arrives here: it is pulled in chunks from a node named in the
  env's ``sources``, else from any live peer that holds it. Concurrent needs
  of one package make one fetch.

:meth:`RuntimeEnvService.install` gates the daemon's ``REQUEST_LEASE`` and
``CREATE_ACTOR`` handlers: work naming an env is passed on only once its
packages are here, so the scheduler never waits on a download and a failed
download fails that request with a clear error. :meth:`worker_env` then tells
the worker pool how to start a worker of that env (variables, ``sys.path``,
current directory).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actorcore.scheduler import RUNTIME_ENV_PREFIX

from .. import _protocol as P
from .._rpc import RpcPeer, Service, handles, next_rid
from .._runtime_env import env_hash
from ..errors import ActorCoreError

__all__ = ["RuntimeEnvService", "WorkerEnv"]

logger = logging.getLogger(__name__)

GET_CHUNK = 4 << 20  # bytes per PACKAGE_GET reply at most
Handler = Callable[[RpcPeer, Any, list[bytes]], Any]


@dataclass(frozen=True, slots=True)
class WorkerEnv:
    """How to start a worker of one runtime env (what the fork server applies)."""

    digest: str
    env_vars: dict[str, str]
    paths: list[str]  # first on sys.path, in order
    cwd: str | None
    wire: dict[str, Any] = field(compare=False)

    def boot(self) -> dict[str, Any]:
        return {
            "tag": self.digest,
            "env_vars": self.env_vars,
            "paths": self.paths,
            "cwd": self.cwd,
            "wire": self.wire,  # the worker's own env, inherited by what it submits
        }


def _check_digest(digest: Any) -> str:
    if (
        not isinstance(digest, str)
        or len(digest) != 32
        or not all(c in "0123456789abcdef" for c in digest)
    ):
        raise ValueError(f"{digest!r} is not a runtime_env package hash")
    return digest


def _hash_file(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _unpack_once(zip_path: str, dest: str) -> bool:
    """Unpack unless ``dest`` exists; True if this call unpacked it."""
    if os.path.isdir(dest):
        return False
    _unpack(zip_path, dest)
    return True


def _unpack(zip_path: str, dest: str) -> None:
    """Extract ``zip_path`` to ``dest`` atomically (a temporary directory renamed)."""
    tmp = f"{dest}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.makedirs(tmp, mode=0o700)
        with zipfile.ZipFile(zip_path) as zf:
            for name in zf.namelist():
                if name.startswith("/") or ".." in name.split("/"):
                    raise ValueError(f"runtime_env package holds an unsafe path {name!r}")
            zf.extractall(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):  # else: another unpack won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RuntimeEnvService(Service):
    """Package cache and runtime envs of one node (``PACKAGE_PUT``, ``PACKAGE_GET``)."""

    def __init__(self, root: str, *, daemon: Any, max_bytes: int) -> None:
        super().__init__()
        self.root = root
        self.daemon = daemon
        self.max_bytes = max_bytes
        self.envs: dict[str, WorkerEnv] = {}
        self._ready: dict[str, asyncio.Future[str]] = {}  # package -> its unpacked dir
        self._uploads: dict[tuple[bytes, str], tuple[str, int]] = {}  # partial uploads
        self.counts = {"uploads": 0, "fetches": 0, "unpacks": 0, "served_bytes": 0}

    # --- files -----------------------------------------------------------------------------

    def _zip(self, digest: str) -> str:
        return os.path.join(self.root, digest + ".zip")

    def _dir(self, digest: str) -> str:
        return os.path.join(self.root, digest)

    def _tmp(self) -> str:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        return os.path.join(self.root, f".part-{os.urandom(6).hex()}")

    async def _commit(self, tmp: str, digest: str) -> None:
        """Move a received file into place once its bytes hash to ``digest``."""
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, _hash_file, tmp)
        if got != digest:
            os.unlink(tmp)
            raise ValueError(f"runtime_env package {digest}: the bytes received hash to {got}")
        os.replace(tmp, self._zip(digest))

    # --- uploads from this node's processes ---------------------------------------------------

    @handles(P.Tag.PACKAGE_PUT)
    def on_put(self, peer: RpcPeer, msg: P.PackagePutMsg, _b: list[bytes]) -> Any:
        digest = _check_digest(msg.digest)
        assert peer.conn is not None
        key = (peer.conn.peer_id, digest)
        if os.path.exists(self._zip(digest)):
            self._drop_upload(key)
            return True
        if not 0 < msg.total <= self.max_bytes:
            raise ValueError(
                f"a runtime_env package of {msg.total} bytes: this node takes 1 byte to "
                f"{self.max_bytes} (runtime_env_max_bytes)"
            )
        if msg.offset == 0 and not msg.data:
            return False  # asked whether it is here: it is not
        if msg.offset == 0:
            self._drop_upload(key)  # a new try from the start
        tmp, size = self._uploads.get(key) or (self._tmp(), 0)
        if msg.offset != size or size + len(msg.data) > msg.total:
            self._drop_upload(key)
            raise ValueError(
                f"runtime_env package {digest}: chunk at {msg.offset}, expected {size}"
            )
        with open(tmp, "ab") as f:
            f.write(msg.data)
        size += len(msg.data)
        if size < msg.total:
            self._uploads[key] = (tmp, size)
            return False
        self._uploads.pop(key, None)
        return self._uploaded(tmp, digest)

    async def _uploaded(self, tmp: str, digest: str) -> bool:
        await self._commit(tmp, digest)
        self.counts["uploads"] += 1
        logger.info("runtime_env package %s received", digest)
        return True

    def process_gone(self, process_id: bytes) -> None:
        """A process of this node ended: drop what it had half uploaded."""
        for key in [k for k in self._uploads if k[0] == process_id]:
            self._drop_upload(key)

    def _drop_upload(self, key: tuple[bytes, str]) -> None:
        part = self._uploads.pop(key, None)
        if part is not None:
            try:
                os.unlink(part[0])
            except OSError:
                pass

    # --- serving and fetching between nodes -------------------------------------------------

    @handles(P.Tag.PACKAGE_GET)
    def on_get(self, peer: RpcPeer, msg: P.PackageGetMsg, _b: list[bytes]) -> Any:
        path = self._zip(_check_digest(msg.digest))
        try:
            with open(path, "rb") as f:
                total = os.fstat(f.fileno()).st_size
                f.seek(max(0, msg.offset))
                data = f.read(max(0, min(msg.length, GET_CHUNK)))
        except FileNotFoundError:
            raise LookupError(f"runtime_env package {msg.digest} is not on this node") from None
        self.counts["served_bytes"] += len(data)
        return [total, data]

    def _candidates(self, sources: list[str]) -> list[bytes]:
        """Live peers to fetch from: the env's sources first, then every other."""
        cluster = getattr(self.daemon, "cluster", None)
        if cluster is None:
            return []
        me = self.daemon.node_id
        live = cluster.membership.table.live
        named = [bytes.fromhex(s) for s in sources]
        return [n for n in dict.fromkeys([*named, *live]) if n != me and n in live]

    async def _fetch(self, digest: str, sources: list[str]) -> None:
        errors: list[str] = []
        for node in self._candidates(sources):
            try:
                await self._fetch_from(node, digest)
            except (OSError, ConnectionError, TimeoutError, LookupError, ActorCoreError) as e:
                errors.append(f"node {node.hex()[:12]}: {e}")
                continue
            self.counts["fetches"] += 1
            return
        raise ActorCoreError(
            f"runtime_env package {digest} is not on this node and no live node could send "
            f"it ({'; '.join(errors) or 'no peer holds it'}): the node that received it may "
            f"have left the cluster"
        )

    async def _fetch_from(self, node: bytes, digest: str) -> None:
        """Pull a package from ``node`` in chunks (written off the loop), then commit it."""
        call = self.daemon.cluster.membership.call_node
        loop = asyncio.get_running_loop()
        tmp = self._tmp()
        try:
            offset, total = 0, -1
            while offset != total:
                msg = P.PackageGetMsg(next_rid(), digest, offset, GET_CHUNK)
                total, data = await call(node, msg)
                if not data or offset + len(data) > total or total > self.max_bytes:
                    raise ActorCoreError(f"bad reply at {offset} of {total} bytes")
                await loop.run_in_executor(None, _append, tmp, data)
                offset += len(data)
            await self._commit(tmp, digest)
        finally:
            _remove(tmp)

    # --- preparing envs -------------------------------------------------------------------

    def _package(self, digest: str, sources: list[str]) -> asyncio.Future[str]:
        """The unpacked directory of a package, once here (one preparation per package)."""
        fut = self._ready.get(digest)
        if fut is None or (fut.done() and fut.exception() is not None):
            fut = self._ready[digest] = self.spawn(self._make_ready(digest, sources))
        return fut

    def _have(self, digest: str) -> tuple[bool, bool]:
        """``(unpacked, zip here)`` (two stat calls)."""
        return os.path.isdir(self._dir(digest)), os.path.exists(self._zip(digest))

    async def _make_ready(self, digest: str, sources: list[str]) -> str:
        dest = self._dir(digest)
        unpacked, zipped = self._have(digest)
        if unpacked:
            return dest
        if not zipped:
            await self._fetch(digest, sources)
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, _unpack_once, self._zip(digest), dest):
            self.counts["unpacks"] += 1
        return dest

    async def prepare(self, wire: dict[str, Any]) -> WorkerEnv:
        """Make every package of ``wire`` present here; returns how to start its workers.

        Raises:
            ActorCoreError: a package could not be fetched; ValueError: a bad spec.
        """
        digest = env_hash(wire)
        env = self.envs.get(digest)
        if env is not None:
            return env
        sources = dict(wire.get("sources") or {})
        wd = wire.get("working_dir")
        mods = list(wire.get("py_modules") or [])
        for d in [*([wd] if wd else []), *mods]:
            _check_digest(d)
        dirs = await asyncio.gather(
            *(self._package(d, list(sources.get(d) or [])) for d in [*([wd] if wd else []), *mods])
        )
        env_vars = {str(k): str(v) for k, v in dict(wire.get("env_vars") or {}).items()}
        env = WorkerEnv(digest, env_vars, list(dirs), dirs[0] if wd else None, dict(wire))
        self.envs[digest] = env
        return env

    def worker_env(self, digest: str) -> WorkerEnv | None:
        return self.envs.get(digest) if digest else None

    # --- gating work on its env ----------------------------------------------------------------

    def install(self, handlers: dict[int, Handler]) -> None:
        """Wrap ``REQUEST_LEASE`` and ``CREATE_ACTOR`` in ``handlers`` (changed in place)."""
        lease = handlers[int(P.Tag.REQUEST_LEASE)]
        create = handlers[int(P.Tag.CREATE_ACTOR)]
        handlers[int(P.Tag.REQUEST_LEASE)] = functools.partial(
            self._gated, lease, lambda m: (m.shape, m.runtime_env)
        )
        handlers[int(P.Tag.CREATE_ACTOR)] = functools.partial(
            self._gated, create, lambda m: (m.spec.get("shape") or {}, m.spec.get("runtime_env"))
        )

    def _gated(
        self, inner: Handler, fields: Callable[[Any], Any], peer: RpcPeer, msg: Any, b: list[bytes]
    ) -> Any:
        shape, wire = fields(msg)
        named = next((k for k in shape if str(k).startswith(RUNTIME_ENV_PREFIX)), None)
        if named is None:
            return inner(peer, msg, b)
        if not isinstance(wire, dict):
            raise ValueError(f"work asks for runtime env {named} without sending its spec")
        digest = env_hash(wire)
        if named != RUNTIME_ENV_PREFIX + digest:
            raise ValueError(f"work asks for runtime env {named}, but its spec hashes to {digest}")
        if digest in self.envs:
            return inner(peer, msg, b)
        return self._prepare_then(digest, wire, inner, peer, msg, b)

    async def _prepare_then(
        self,
        digest: str,
        wire: dict[str, Any],
        inner: Handler,
        peer: RpcPeer,
        msg: Any,
        b: list[bytes],
    ) -> Any:
        await self.prepare(wire)
        result = inner(peer, msg, b)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    # --- views ----------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            names = []
        return {
            **self.counts,
            "root": self.root,
            "packages": [n[:-4] for n in names if n.endswith(".zip")],
            "unpacked": [n for n in names if len(n) == 32 and os.path.isdir(self._dir(n))],
            "envs": sorted(self.envs),
        }
