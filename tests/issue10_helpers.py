"""What the issue 10 probes (tests/test_issue10_*.py) share: the TTL of their
clusters and the tasks and actor they kill nodes under (not a test module)."""

from __future__ import annotations

import os
import time

import numpy as np
from cluster_helpers import here

import actorcore as ac

TTL = 2.0
MB = 1 << 20


@ac.remote(max_retries=3)
def slow(t: float, marker_dir: str, i: int, stuck_on: str = "") -> tuple[int, str]:
    """Sleeps ``t`` s; on node ``stuck_on`` (the one a test kills) until killed."""
    open(os.path.join(marker_dir, f"{i}.{here()}.{os.getpid()}"), "w").close()
    time.sleep(300 if here() == stuck_on else t)
    return i, here()


@ac.remote
class Log:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def add(self, i: int) -> tuple[list[int], str]:
        self.seen.append(i)
        return list(self.seen), here()

    def hold(self, marker: str, t: float) -> str:
        open(marker, "w").close()
        time.sleep(t)
        return here()

    def pid(self) -> int:
        return os.getpid()


@ac.remote(max_retries=2, num_returns=2)
def make(n: int, k: int):
    return np.full(n, k, dtype=np.uint8), here()


@ac.remote(max_retries=0, num_returns=2)
def make_once(n: int):
    return np.full(n, 9, dtype=np.uint8), here()
