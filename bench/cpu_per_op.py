"""Driver CPU time per operation (every thread of the driver process), for
comparing two versions of the owner side on a busy machine, where rates are
noisy and CPU time much less so::

    python -m bench.cpu_per_op                      # this checkout
    cd /tmp/other && PYTHONPATH=. python -m bench.cpu_per_op   # another one

Workers' CPU is not counted: the rows measure what the caller's process pays.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import actorcore as ac

REPS = 5


def cpu_per_op(fn: Callable[[int], Any], n: int) -> float:
    """Median over REPS runs of ``fn(n)``'s process CPU time per op, in microseconds."""
    fn(max(n // 10, 1))  # warm up
    out = []
    for _ in range(REPS):
        t = time.process_time()
        fn(n)
        out.append((time.process_time() - t) / n * 1e6)
    return statistics.median(out)


def main() -> None:
    ac.init(num_cpus=2, include_dashboard=False)

    @ac.remote
    def small() -> bytes:
        return b"x"

    @ac.remote
    class Actor:
        def small(self) -> bytes:
            return b"x"

        def echo(self, _x: Any) -> int:
            return 1

    a = Actor.remote()
    ac.get([a.small.remote(), small.remote()])
    ready = ac.put(0)
    arg = ac.put(b"y" * 1000)
    big10k = ac.put([ac.put(i) for i in range(10_000)])
    rows: list[tuple[str, Callable[[int], Any], int]] = [
        ("put small", lambda n: [ac.put(0) for _ in range(n)], 20_000),
        ("get ready", lambda n: [ac.get(ready) for _ in range(n)], 20_000),
        ("put then get", lambda n: [ac.get(ac.put(1)) for _ in range(n)], 5_000),
        ("task sync", lambda n: [ac.get(small.remote()) for _ in range(n)], 500),
        ("task batch", lambda n: ac.get([small.remote() for _ in range(n)]), 2_000),
        ("actor call sync", lambda n: [ac.get(a.small.remote()) for _ in range(n)], 1_000),
        ("actor call batch", lambda n: ac.get([a.small.remote() for _ in range(n)]), 3_000),
        (
            "actor call batch, ref arg",
            lambda n: ac.get([a.echo.remote(arg) for _ in range(n)]),
            3_000,
        ),
        (
            "get a list of 10k refs (per ref)",
            lambda n: [ac.get(big10k) for _ in range(n // 10_000)],
            100_000,
        ),
    ]
    try:
        for name, fn, n in rows:
            print(f"{name:34s} {cpu_per_op(fn, n):8.1f} us CPU/op", flush=True)
    finally:
        ac.shutdown()


if __name__ == "__main__":
    main()
