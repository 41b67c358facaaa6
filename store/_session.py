"""Per-session directories in /dev/shm and on disk, and the sweep of stale ones.

A node daemon owns ``<shm_root>/actorcore-<session>/`` (the arena and
``node.json``) and ``<tmp>/actorcore-session-<session>/`` (``spill/`` for
spilled objects, ``logs/`` for process output). Each holds an
``owner`` file with the daemon's pid and process start time. A daemon that
starts sweeps every session directory whose owner is gone, so even a node
killed with SIGKILL leaves nothing behind after the next start.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import psutil

__all__ = ["SessionDirs", "default_capacity", "shm_capacity_note", "sweep_stale"]

logger = logging.getLogger(__name__)

PREFIX = "actorcore-"
SPILL_PREFIX = "actorcore-session-"


def _owner_tag() -> str:
    me = psutil.Process()
    return f"{me.pid} {me.create_time():.3f}"


def _owner_alive(path: str) -> bool:
    try:
        with open(os.path.join(path, "owner")) as f:
            pid_s, started_s = f.read().split()
        proc = psutil.Process(int(pid_s))
        return abs(proc.create_time() - float(started_s)) < 0.01
    except (OSError, ValueError, psutil.Error):
        return False


def _just_made(path: str) -> bool:
    """A directory without its owner file yet may be a node that is starting."""
    if os.path.exists(os.path.join(path, "owner")):
        return False
    try:
        return time.time() - os.stat(path).st_mtime < 30.0
    except OSError:
        return False


def sweep_stale(shm_root: str, spill_root: str | None = None) -> list[str]:
    """Remove session directories whose daemon is gone; returns what was removed."""
    removed = []
    for root, prefix in ((shm_root, PREFIX), (spill_root or tempfile.gettempdir(), SPILL_PREFIX)):
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith(prefix) or (prefix == PREFIX and name.startswith(SPILL_PREFIX)):
                continue
            path = os.path.join(root, name)
            if os.path.isdir(path) and not _owner_alive(path) and not _just_made(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        logger.info("swept %d stale session directories", len(removed))
    return removed


@dataclass(frozen=True, slots=True)
class SessionDirs:
    session: str
    shm_dir: str
    disk_dir: str
    spill_dir: str

    @classmethod
    def create(cls, session: str, shm_root: str, spill_dir: str = "") -> SessionDirs:
        shm_dir = os.path.join(shm_root, PREFIX + session)
        disk_dir = os.path.join(tempfile.gettempdir(), SPILL_PREFIX + session)
        spill = spill_dir or os.path.join(disk_dir, "spill")
        tag = _owner_tag()
        for d in (shm_dir, disk_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
            with open(os.path.join(d, "owner"), "w") as f:
                f.write(tag)
        os.makedirs(spill, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(disk_dir, "logs"), mode=0o700, exist_ok=True)
        return cls(session, shm_dir, disk_dir, spill)

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.disk_dir, "logs")

    @property
    def arena_path(self) -> str:
        return os.path.join(self.shm_dir, "arena")

    def spill_path(self, oid: bytes) -> str:
        return os.path.join(self.spill_dir, oid.hex())

    def remove(self) -> None:
        shutil.rmtree(self.shm_dir, ignore_errors=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        shutil.rmtree(self.disk_dir, ignore_errors=True)


def default_capacity(shm_root: str, requested: int = 0) -> tuple[int, str | None]:
    """The store capacity to use and, when /dev/shm limits it, a note saying what to do."""
    st = os.statvfs(shm_root)
    shm_free = st.f_bavail * st.f_frsize
    if requested:
        if requested > shm_free:
            return min(requested, int(shm_free * 0.9)), shm_capacity_note(shm_free, requested)
        return requested, None
    want = int(psutil.virtual_memory().total * 0.30)
    if want > shm_free * 0.9:
        return int(shm_free * 0.9), shm_capacity_note(shm_free, want)
    return want, None


def shm_capacity_note(shm_free: int, wanted: int) -> str:
    mb = 1024 * 1024
    return (
        f"{'/dev/shm'} has only {shm_free // mb} MB free, less than the {wanted // mb} MB the "
        f"object store wants; the store is capped to fit, and objects beyond it spill to disk. "
        f"In a container, start it with a larger /dev/shm (docker run --shm-size=2g ...), "
        f"or pass object_store_memory= to init()."
    )
