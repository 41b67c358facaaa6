"""A node starting while etcd is away waits as long as any control change does
(review rev10: it gave up after 30 s, so a node started as a 30 s outage began
never joined). A fake clock: no sleeping."""

from __future__ import annotations

import pytest
from actorcore.gcs import ControlStoreUnavailableError

from actorcore import _driver

pytestmark = pytest.mark.timeout(10)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _etcd_back_at(clock: _Clock, t: float):
    def call() -> str:
        if clock.now < t:
            raise ControlStoreUnavailableError("etcd is away")
        return "token"

    return call


def test_a_join_waits_out_a_long_etcd_outage(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(_driver, "time", clock)
    assert _driver._wait_for_etcd(_etcd_back_at(clock, 45.0), "etcd://x/y") == "token"
    assert 45.0 <= clock.now < 48.0


def test_a_join_gives_up_after_two_minutes(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(_driver, "time", clock)
    with pytest.raises(ControlStoreUnavailableError):
        _driver._wait_for_etcd(_etcd_back_at(clock, 1e9), "etcd://x/y")
    assert 110.0 <= clock.now <= 120.0
