"""Runtime environments: a job's own code and environment variables, on every node.

``runtime_env`` is given to ``ac.init`` (the whole job) or to
``@ac.remote`` / ``.options`` (one task or actor class). Supported keys:

* ``working_dir``: a local directory. It is zipped, shipped to every node that
  runs the job's work, unpacked there, put first on the workers' ``sys.path``
  and made their current directory.
* ``py_modules``: a list of local package directories, ``.py`` files or
  imported module objects; each is shipped and put on ``sys.path`` (a
  directory ``mypkg`` is importable as ``import mypkg``).
* ``env_vars``: ``{name: value}`` set in the worker's ``os.environ``.
* ``excludes``: glob patterns of files to leave out of the packages (matched
  against the path relative to the directory and against the file name);
  ``.git``, ``__pycache__``, ``*.pyc`` and the plain patterns of a top-level
  ``.gitignore`` are always left out.

How it travels (the design):

1. *Packing* (here, in the process calling ``.remote()`` or ``init``): a
   deterministic zip (sorted names, fixed timestamps), named by the blake2b
   hash of its bytes, so equal content gives an equal name on every machine.
   A package over ``Config.runtime_env_max_bytes`` is refused with a message
   naming the directory and how to shrink it.
2. *Upload*: to this process's own node daemon (``PACKAGE_PUT`` chunks over
   the blocking store connection), once per hash: the node is asked first
   whether it already holds that hash. Nothing big goes through etcd.
3. *The wire spec*: ``{"env_vars": {...}, "working_dir": hash,
   "py_modules": [hash, ...], "sources": {hash: [node id hex, ...]}}``; its
   identity, :func:`env_hash`, leaves ``sources`` out. Work that needs the env
   carries ``runtime_env:<env hash>`` in its resource shape (a placement
   constraint, like hard node affinity), so owner queues, leases and worker
   pools are keyed by it; the spec itself rides on the lease request and in
   the actor spec.
4. *On the node that runs the work* (:mod:`actorcore._node._packages`): each
   package is fetched once from a node that has it (``PACKAGE_GET``, chunked,
   daemon to daemon), stored once under the node's session directory,
   unpacked atomically (a temporary directory renamed into place), and a
   worker is forked for that env. Workers of one env never serve another.
5. *Inheritance and merging* (Ray's rules): a worker's own env is the default
   of the work it submits; per-task/actor ``runtime_env`` merges over the
   job's: ``env_vars`` are merged (the task's win), other keys override.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import threading
import types
import zipfile
from collections.abc import Mapping
from typing import Any

from actorcore.scheduler import RUNTIME_ENV_PREFIX

__all__ = [
    "MARK",
    "SUPPORTED_KEYS",
    "env_hash",
    "merge",
    "pack",
    "resolve",
    "set_job_env",
    "shape_key",
    "spec_of_shape",
    "validate",
]

SUPPORTED_KEYS = ("working_dir", "py_modules", "env_vars", "excludes")
ALWAYS_EXCLUDED = (".git", "__pycache__", "*.pyc")
MARK = 0.001  # the value of the ``runtime_env:<hash>`` key in a shape
CHUNK = 1 << 20  # upload chunk (bytes in a message header)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

_lock = threading.Lock()
_packing = threading.Lock()  # one packing and upload at a time per process
_by_hash: dict[str, dict[str, Any]] = {}  # env hash -> wire spec (this process's envs)
_resolved: dict[tuple[bytes, str], dict[str, Any]] = {}  # (node, user env json) -> wire spec
# (node, id(job env), user env json) -> (job env, shape key and wire spec)
_keys: dict[tuple[bytes, int, str], tuple[Any, Any]] = {}


# --- checking what the user gave ------------------------------------------------------


def validate(env: Any) -> dict[str, Any] | None:
    """Check a user's ``runtime_env``; returns it normalized (absolute paths), or None.

    Raises:
        ValueError: an unknown key, a missing path, a remote URI.
        TypeError: a value of the wrong type.
    """
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise TypeError(f"runtime_env must be a dict, not {type(env).__name__}")
    unknown = sorted(set(env) - set(SUPPORTED_KEYS))
    if unknown:
        raise ValueError(
            f"runtime_env key(s) {unknown} are not supported by actorcore; supported keys: "
            f"{list(SUPPORTED_KEYS)} (pip, conda, container and the like are not: install "
            f"packages on the nodes, or ship your own code with working_dir/py_modules)"
        )
    out: dict[str, Any] = {}
    if env.get("working_dir") is not None:
        out["working_dir"] = _local_dir(env["working_dir"], "working_dir")
    if env.get("py_modules") is not None:
        mods = env["py_modules"]
        if not isinstance(mods, list | tuple):
            raise TypeError("runtime_env['py_modules'] must be a list of paths or modules")
        out["py_modules"] = [_module_path(m) for m in mods]
    if env.get("env_vars") is not None:
        out["env_vars"] = _env_vars(env["env_vars"])
    if env.get("excludes") is not None:
        ex = env["excludes"]
        if not isinstance(ex, list | tuple) or not all(isinstance(p, str) for p in ex):
            raise TypeError("runtime_env['excludes'] must be a list of glob patterns (str)")
        out["excludes"] = list(ex)
    return out or None


def _local_dir(path: Any, what: str) -> str:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"runtime_env[{what!r}] must be a path, not {type(path).__name__}")
    p = os.fspath(path)
    if "://" in p:
        raise ValueError(
            f"runtime_env[{what!r}]={p!r}: remote URIs are not supported; give a local "
            f"directory (it is zipped and shipped to the nodes)"
        )
    if not os.path.isdir(p):
        raise ValueError(f"runtime_env[{what!r}]: {p!r} is not an existing directory")
    return os.path.abspath(p)


def _module_path(m: Any) -> str:
    if isinstance(m, types.ModuleType):
        f = getattr(m, "__file__", None)
        if not f:
            raise ValueError(f"py_modules: module {m.__name__!r} has no file to ship")
        if os.path.basename(f) == "__init__.py":
            return os.path.dirname(os.path.abspath(f))
        return os.path.abspath(f)
    if not isinstance(m, str | os.PathLike):
        raise TypeError(f"py_modules entries are paths or modules, not {type(m).__name__}")
    p = os.fspath(m)
    if "://" in p:
        raise ValueError(f"py_modules: remote URIs are not supported ({p!r}); give a local path")
    if os.path.isdir(p) or (os.path.isfile(p) and p.endswith(".py")):
        return os.path.abspath(p)
    raise ValueError(
        f"py_modules: {p!r} is not an existing package directory or .py file "
        f"(wheels and URIs are not supported)"
    )


def _env_vars(ev: Any) -> dict[str, str]:
    if not isinstance(ev, Mapping):
        raise TypeError(f"runtime_env['env_vars'] must be a dict, not {type(ev).__name__}")
    for k, v in ev.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or "=" in k:
            raise TypeError(f"runtime_env['env_vars'] maps names to str values; got {k!r}: {v!r}")
    return dict(ev)


# --- packing ------------------------------------------------------------------------------


def _excluded(rel: str, name: str, patterns: list[str]) -> bool:
    """``rel`` (its name ``name``) matches a pattern (``data/`` and ``/data``: ``data``)."""
    pats = [p.strip("/") for p in patterns]
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in pats)


def _gitignore(root: str) -> list[str]:
    """The plain patterns of ``root/.gitignore`` (comments and negations skipped)."""
    try:
        with open(os.path.join(root, ".gitignore")) as f:
            lines = [line.strip() for line in f]
    except OSError:
        return []
    return [p for p in lines if p and not p.startswith(("#", "!"))]


def _files(root: str, patterns: list[str]) -> list[tuple[str, str]]:
    """``(path, name in the zip)`` of every file under ``root``, sorted."""
    patterns = [*patterns, *_gitignore(root)]
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):  # links to directories: not followed
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = sorted(
            d for d in dirnames if not _excluded(os.path.join(rel_dir, d), d, patterns)
        )
        for f in sorted(filenames):
            rel = os.path.join(rel_dir, f)
            if not _excluded(rel, f, patterns):
                out.append((os.path.join(dirpath, f), rel))
    return out


def pack(path: str, *, as_module: bool, excludes: list[str], limit: int) -> tuple[str, bytes]:
    """Zip ``path`` deterministically; returns ``(hash, zip bytes)``.

    ``as_module``: the zip holds ``path`` under its own name (``mypkg/...`` or
    ``mod.py``), so its unpacked directory goes on ``sys.path``; else the
    directory's contents are the zip's root (a working_dir).

    Raises:
        ValueError: the package is larger than ``limit`` bytes.
    """
    patterns = [*ALWAYS_EXCLUDED, *excludes]
    if os.path.isfile(path):
        files = [(path, os.path.basename(path))]
    else:
        prefix = os.path.basename(path.rstrip(os.sep)) if as_module else ""
        files = [(p, os.path.join(prefix, rel)) for p, rel in _files(path, patterns)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for src, name in files:
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (os.stat(src).st_mode & 0o777) << 16
            with open(src, "rb") as f:
                zf.writestr(info, f.read())
            if buf.tell() > limit:
                break
    data = buf.getvalue()
    if len(data) > limit:
        raise ValueError(
            f"runtime_env: {path!r} packs to more than {limit / 2**20:.1f} MiB "
            f"(runtime_env_max_bytes): leave large files out with "
            f"runtime_env={{'excludes': [...]}}, pass data with ac.put() or shared "
            f"storage, or raise runtime_env_max_bytes in ac.init()"
        )
    return hashlib.blake2b(data, digest_size=16).hexdigest(), data


# --- wire specs ------------------------------------------------------------------------------


def env_hash(wire: Mapping[str, Any]) -> str:
    """The identity of a wire spec (its packages and variables; not where they are)."""
    ident = {k: v for k, v in wire.items() if k != "sources"}
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def merge(
    parent: Mapping[str, Any] | None, child: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """``child`` over ``parent`` (wire specs): env_vars merged, other keys override."""
    if not parent:
        return dict(child) if child else None
    if not child:
        return dict(parent)
    out = {**parent, **child}
    if "env_vars" in parent and "env_vars" in child:
        out["env_vars"] = {**parent["env_vars"], **child["env_vars"]}
    out["sources"] = {**parent.get("sources", {}), **child.get("sources", {})}
    return out


def resolve(rt: Any, env: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The wire spec of a validated user env, its packages uploaded to this node.

    Cached per node and env: a path is packed and uploaded once per process, so
    only the first submission with a new env blocks (file reads, the store
    connection, which any thread may use, a loop's included).
    """
    if not env:
        return None
    node = rt.node.node_id
    key = (node, json.dumps(env, sort_keys=True))
    with _lock:
        hit = _resolved.get(key)
    if hit is not None:
        return hit
    with _packing:  # threads submitting with a new env at once: one packs, the rest wait
        with _lock:
            hit = _resolved.get(key)
        if hit is None:
            hit = _pack_and_upload(rt, env)
            with _lock:
                _resolved[key] = hit
    return hit


def _pack_and_upload(rt: Any, env: Mapping[str, Any]) -> dict[str, Any]:
    node = rt.node.node_id
    limit = rt.config.runtime_env_max_bytes
    excludes = list(env.get("excludes") or [])
    wire: dict[str, Any] = {}
    sources: dict[str, list[str]] = {}
    if "env_vars" in env:
        wire["env_vars"] = dict(env["env_vars"])
    if "working_dir" in env:
        h, data = pack(env["working_dir"], as_module=False, excludes=excludes, limit=limit)
        _upload(rt, h, data)
        wire["working_dir"] = h
        sources[h] = [node.hex()]
    if "py_modules" in env:
        hashes = []
        for path in env["py_modules"]:
            h, data = pack(path, as_module=True, excludes=excludes, limit=limit)
            _upload(rt, h, data)
            hashes.append(h)
            sources[h] = [node.hex()]
        wire["py_modules"] = hashes
    if sources:
        wire["sources"] = sources
    return wire


def _upload(rt: Any, digest: str, data: bytes) -> None:
    """Send a package to this process's node daemon unless it holds it already."""
    from . import _protocol as P
    from ._rpc import error_from_reply, next_rid

    conn = rt.store.conn  # blocking and thread-safe: usable from any thread

    def put(offset: int, chunk: bytes) -> bool:
        reply = conn.call(P.PackagePutMsg(next_rid(), digest, len(data), offset, chunk))
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        return bool(reply.value)

    if put(0, b""):
        return  # this node has it already (another job, or another process)
    chunk = max(64 << 10, min(CHUNK, rt.config.max_header_bytes // 4))
    for off in range(0, len(data), chunk):
        put(off, data[off : off + chunk])


def set_job_env(rt: Any, env: Mapping[str, Any] | None) -> None:
    """Make ``env`` (a validated user env) the default of all work this process submits."""
    rt.job_runtime_env = resolve(rt, env)


def shape_key(rt: Any, env: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """``(shape key, wire spec)`` of the env of one task or actor (None: the default env).

    Cached per (node, job env, user env): a submission pays a lookup, not a hash.
    """
    job = rt.job_runtime_env
    if not env and not job:
        return None
    ck = (rt.node.node_id, id(job), json.dumps(env, sort_keys=True) if env else "")
    with _lock:
        hit = _keys.get(ck)
    if hit is not None and hit[0] is job:
        return hit[1]
    wire = merge(job, resolve(rt, env))
    found = None
    if wire:
        h = env_hash(wire)
        with _lock:
            _by_hash[h] = wire  # (its sources: this node, where resolve() uploaded)
        found = (RUNTIME_ENV_PREFIX + h, wire)
    with _lock:
        _keys[ck] = (job, found)
    return found


def spec_of_shape(shape: Mapping[str, float]) -> dict[str, Any] | None:
    """The wire spec of the env a shape names (None: it names none)."""
    for k in shape:
        if k.startswith(RUNTIME_ENV_PREFIX):
            with _lock:
                return _by_hash.get(k[len(RUNTIME_ENV_PREFIX) :])
    return None


def register(wire: Mapping[str, Any] | None) -> None:
    """Know ``wire`` by its hash (a worker learns the env it was started with)."""
    if wire:
        with _lock:
            _by_hash.setdefault(env_hash(wire), dict(wire))
