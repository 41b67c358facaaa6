"""runtime_env without processes: checking, merging, packing, the scheduler's pools per
env, the fork server's requests and the node's package cache (issue 8 item 9)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import types
import zipfile

import pytest

from actorcore import _protocol as P
from actorcore import _runtime_env as RE
from actorcore import scheduler as S
from actorcore._node._packages import RuntimeEnvService, _unpack
from actorcore._zygote import _INCOMPLETE, _next_request
from actorcore.errors import ActorCoreError

pytestmark = pytest.mark.timeout(30)


def _tree(root, files: dict[str, str]) -> str:
    for rel, text in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
    return str(root)


# --- checking and merging ---------------------------------------------------------------------


def test_validate_normalizes_and_refuses(tmp_path):
    d = _tree(tmp_path / "wd", {"a.py": ""})
    assert RE.validate(None) is None
    assert RE.validate({}) is None
    got = RE.validate({"working_dir": os.path.relpath(d), "env_vars": {"A": "1"}})
    assert got == {"working_dir": d, "env_vars": {"A": "1"}}
    for key in ("pip", "conda", "container", "uv"):
        with pytest.raises(ValueError, match=r"supported keys: \['working_dir', 'py_modules'"):
            RE.validate({key: "x"})
    with pytest.raises(TypeError):
        RE.validate({"env_vars": {"A": None}})
    with pytest.raises(TypeError):
        RE.validate({"py_modules": "not-a-list"})
    with pytest.raises(ValueError, match="no file"):
        RE.validate({"py_modules": [types.ModuleType("nofile")]})


def test_merge_follows_ray():
    job = {"env_vars": {"A": "job", "B": "job"}, "working_dir": "w1", "sources": {"w1": ["n1"]}}
    task = {"env_vars": {"B": "task"}, "py_modules": ["m1"], "sources": {"m1": ["n2"]}}
    got = RE.merge(job, task)
    assert got is not None
    assert got["env_vars"] == {"A": "job", "B": "task"}
    assert got["working_dir"] == "w1" and got["py_modules"] == ["m1"]
    assert got["sources"] == {"w1": ["n1"], "m1": ["n2"]}
    assert RE.merge(job, {"working_dir": "w2"})["working_dir"] == "w2"  # overrides
    assert RE.merge(None, None) is None
    assert RE.merge(job, None) == job


def test_env_hash_ignores_where_packages_are():
    a = {"working_dir": "h", "sources": {"h": ["n1"]}}
    b = {"working_dir": "h", "sources": {"h": ["n2", "n3"]}}
    assert RE.env_hash(a) == RE.env_hash(b)
    assert RE.env_hash(a) != RE.env_hash({"working_dir": "h", "env_vars": {"X": "1"}})


# --- packing ------------------------------------------------------------------------------------


def test_pack_is_deterministic_and_leaves_junk_out(tmp_path):
    files = {"m.py": "x = 1\n", "sub/n.py": "", ".git/HEAD": "r", "__pycache__/m.pyc": "c"}
    a = _tree(tmp_path / "a", {**files, "skip.log": "l"})
    b = _tree(tmp_path / "b", {**files, "skip.log": "other"})
    ha, za = RE.pack(a, as_module=False, excludes=["*.log"], limit=1 << 20)
    os.utime(os.path.join(b, "m.py"), (1, 1))  # times are not content
    hb, zb = RE.pack(b, as_module=False, excludes=["*.log"], limit=1 << 20)
    assert (ha, za) == (hb, zb)
    assert ha == hashlib.blake2b(za, digest_size=16).hexdigest()
    assert sorted(zipfile.ZipFile(io.BytesIO(za)).namelist()) == ["m.py", "sub/n.py"]
    hm, zm = RE.pack(a, as_module=True, excludes=["*.log"], limit=1 << 20)
    assert sorted(zipfile.ZipFile(io.BytesIO(zm)).namelist()) == ["a/m.py", "a/sub/n.py"]
    assert hm != ha
    with pytest.raises(ValueError, match="runtime_env_max_bytes"):
        RE.pack(a, as_module=False, excludes=[], limit=10)
    _, zs = RE.pack(a, as_module=False, excludes=["sub/", "*.log"], limit=1 << 20)
    assert zipfile.ZipFile(io.BytesIO(zs)).namelist() == ["m.py"]
    _tree(a, {".gitignore": "# venvs\n.venv/\n!keep.log\n*.log\n", ".venv/lib/x.py": ""})
    _, zg = RE.pack(a, as_module=False, excludes=[], limit=1 << 20)
    assert sorted(zipfile.ZipFile(io.BytesIO(zg)).namelist()) == [".gitignore", "m.py", "sub/n.py"]


# --- the scheduler: one pool per env ----------------------------------------------------------


def _env(shape: dict, h: str) -> dict:
    return {**shape, S.RUNTIME_ENV_PREFIX + h: RE.MARK}


def test_scheduler_starts_and_reuses_workers_per_env():
    s = S.LocalScheduler({"CPU": 4})
    s.worker_started(b"plain")
    out = s.request_lease("k1", _env({"CPU": 1}, "e1"), "o")
    assert [i for i in out if isinstance(i, S.StartWorker)] == [S.StartWorker(1, "e1")]
    assert not [i for i in out if isinstance(i, S.GrantLease)]  # the plain worker is not it
    out = s.worker_started(b"w1", env="e1")
    assert [i for i in out if isinstance(i, S.GrantLease)] == [S.GrantLease("k1", b"w1")]
    s.return_lease(b"w1")
    out = s.request_lease("k2", _env({"CPU": 1}, "e1"), "o")
    assert [i for i in out if isinstance(i, S.GrantLease)] == [S.GrantLease("k2", b"w1")]
    out = s.request_lease("k3", {"CPU": 1}, "o")
    assert [i for i in out if isinstance(i, S.GrantLease)] == [S.GrantLease("k3", b"plain")]
    # light actors of an env get a shared host of that env
    out = s.place_actor(b"a1", _env({}, "e2"))
    assert [i for i in out if isinstance(i, S.StartWorker)] == [S.StartWorker(1, "e2")]
    out = s.worker_started(b"w2", env="e2")
    assert [i for i in out if isinstance(i, S.HostActor)] == [S.HostActor(b"a1", b"w2")]
    s.validate()


def test_scheduler_evicts_idle_workers_of_other_envs_at_the_cap():
    s = S.LocalScheduler({"CPU": 4}, max_workers=2)
    s.worker_started(b"p1")
    s.worker_started(b"p2")
    out = s.request_lease("k", _env({"CPU": 1}, "e"), "o")
    assert S.StopWorker(b"p1") in out and S.StartWorker(1, "e") in out
    s.worker_start_failed("e")
    assert s.starting == 0 and not s.starting_env
    s.validate()


def test_idle_env_workers_are_reaped_and_never_kept_warm():
    s = S.LocalScheduler({"CPU": 4})
    s.worker_started(b"p", now=0.0)
    s.worker_started(b"e", now=0.0, env="x")
    out = s.reap_idle(now=100.0, idle_timeout=10.0, keep=1)
    assert out == [S.StopWorker(b"e")]
    assert s.keep_warm(1) == []  # the plain one counts; env workers never do


# --- the fork server's requests ----------------------------------------------------------------


def test_fork_server_requests_parse_in_pieces():
    import json
    import struct

    blob = json.dumps({"tag": "t", "env_vars": {}, "paths": [], "cwd": None}).encode()
    req = b"F" + b"E" + struct.pack("<I", len(blob)) + blob + b"F"
    env, rest = _next_request(req)
    assert env is None
    env, rest2 = _next_request(rest[:7])
    assert env is _INCOMPLETE and rest2 == rest[:7]
    env, rest = _next_request(rest)
    assert env["tag"] == "t" and rest == b"F"


# --- the node's package cache ---------------------------------------------------------------


class _Peer:
    def __init__(self, pid: bytes) -> None:
        self.conn = types.SimpleNamespace(peer_id=pid)


def _service(root, cluster=None) -> RuntimeEnvService:
    daemon = types.SimpleNamespace(node_id=b"me", cluster=cluster)
    return RuntimeEnvService(str(root), daemon=daemon, max_bytes=1 << 20)


async def _put(svc, peer, digest, data, chunk=7):
    if svc.on_put(peer, P.PackagePutMsg(1, digest, len(data), 0, b""), []):
        return True
    result = None
    for off in range(0, len(data), chunk):
        result = svc.on_put(
            peer, P.PackagePutMsg(1, digest, len(data), off, data[off : off + chunk]), []
        )
        if asyncio.iscoroutine(result):
            result = await result
    return result


async def test_uploads_are_checked_stored_once_and_unpacked(tmp_path):
    src = _tree(tmp_path / "src", {"mod.py": "V = 3\n"})
    digest, data = RE.pack(src, as_module=False, excludes=[], limit=1 << 20)
    svc = _service(tmp_path / "cache")
    assert await _put(svc, _Peer(b"p1"), digest, data) is True
    assert await _put(svc, _Peer(b"p2"), digest, data) is True  # asked first: nothing sent
    assert svc.counts["uploads"] == 1
    with pytest.raises(ValueError, match="hash to"):
        await _put(svc, _Peer(b"p1"), "f" * 32, data)
    with pytest.raises(ValueError, match="runtime_env_max_bytes"):
        svc.on_put(_Peer(b"p1"), P.PackagePutMsg(1, "e" * 32, 2 << 20, 0, b""), [])
    half = svc.on_put(_Peer(b"p3"), P.PackagePutMsg(1, "d" * 32, 10, 0, b"12345"), [])
    assert half is False and len(svc._uploads) == 1
    svc.process_gone(b"p3")  # its part file goes with it
    assert not svc._uploads and not [n for n in os.listdir(svc.root) if n.startswith(".part")]
    env = await svc.prepare({"working_dir": digest, "env_vars": {"A": "1"}})
    assert env.cwd == os.path.join(str(tmp_path / "cache"), digest) and env.paths == [env.cwd]
    assert os.listdir(env.cwd) == ["mod.py"]
    total, chunk = svc.on_get(_Peer(b"n2"), P.PackageGetMsg(1, digest, 0, 10), [])
    assert total == len(data) and chunk == data[:10]
    stats = svc.statistics()
    assert stats["packages"] == [digest] and stats["unpacked"] == [digest]


async def test_a_package_no_node_holds_fails_clearly(tmp_path):
    svc = _service(tmp_path / "cache")
    with pytest.raises(ActorCoreError, match="no live node could send it"):
        await svc.prepare({"py_modules": ["0" * 32], "sources": {"0" * 32: ["aa"]}})
    with pytest.raises(ValueError, match="not a runtime_env package hash"):
        await svc.prepare({"py_modules": ["../../etc"]})


def test_unpack_refuses_paths_out_of_its_directory(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.py", "x")
    with pytest.raises(ValueError, match="unsafe path"):
        _unpack(str(bad), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    assert os.listdir(tmp_path) == ["bad.zip"]  # no temporary directory left
