"""Store capacity: the default, and a small /dev/shm detected and reported."""

import os
from types import SimpleNamespace

import pytest

from actorcore.store import _session


def fake_statvfs(free_bytes):
    return lambda _path: SimpleNamespace(f_bavail=free_bytes // 4096, f_frsize=4096)


def test_default_is_30_percent_of_ram_when_shm_is_large(monkeypatch):
    monkeypatch.setattr(os, "statvfs", fake_statvfs(1 << 50))
    cap, note = _session.default_capacity("/dev/shm")
    import psutil

    assert cap == int(psutil.virtual_memory().total * 0.30)
    assert note is None


def test_small_shm_caps_the_store_and_says_what_to_do(monkeypatch):
    monkeypatch.setattr(os, "statvfs", fake_statvfs(64 << 20))
    cap, note = _session.default_capacity("/dev/shm")
    assert cap <= 64 << 20
    assert "64 MB" in note and "--shm-size" in note and "object_store_memory" in note


@pytest.mark.parametrize("requested", [16 << 20, 1 << 40])
def test_requested_capacity_is_honoured_or_capped(monkeypatch, requested):
    monkeypatch.setattr(os, "statvfs", fake_statvfs(1 << 30))
    cap, note = _session.default_capacity("/dev/shm", requested)
    if requested < 1 << 30:
        assert cap == requested and note is None
    else:
        assert cap < 1 << 30 and note
