"""Sum many numpy arrays with a tree of pairwise `add` tasks.

Each array is made by a task and stays in the object store; `add` tasks take
two refs and return a ref to their sum, so the driver builds the whole tree of
refs at once and fetches only the root. The result is checked against a
sequential sum of the same arrays, and both are timed.

Run: python examples/tree_reduce.py [--small] [--address etcd://host:2379/NAME]
"""

import argparse
import time

import numpy as np

import actorcore as ac


@ac.remote
def make_array(seed, size):
    return np.random.default_rng(seed).standard_normal(size)


@ac.remote
def add(a, b):
    return a + b


def tree_sum(refs):
    """Pair refs level by level until one is left; every add runs as soon as its inputs exist."""
    levels = 0
    while len(refs) > 1:
        paired = [add.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        if len(refs) % 2:
            paired.append(refs[-1])  # an odd one out joins the next level
        refs = paired
        levels += 1
    return refs[0], levels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=None, help="etcd://host:2379/NAME to join a cluster")
    ap.add_argument("--arrays", type=int, default=256, help="how many arrays to sum")
    ap.add_argument("--size", type=int, default=500_000, help="float64 elements per array")
    ap.add_argument("--small", action="store_true", help="a quick run for CI")
    args = ap.parse_args()
    if args.small:
        args.arrays, args.size = 33, 20_000

    ac.init(address=args.address)
    cpus = ac.cluster_resources().get("CPU", 0)
    mb = args.arrays * args.size * 8 / 1e6
    print(f"summing {args.arrays} arrays of {args.size:,} float64 ({mb:,.0f} MB) on {cpus:g} CPUs")

    leaves = [make_array.remote(seed, args.size) for seed in range(args.arrays)]
    ac.wait(leaves, num_returns=len(leaves))  # make the data first: time only the reduction

    t0 = time.perf_counter()
    root, levels = tree_sum(leaves)
    total = ac.get(root)
    t_tree = time.perf_counter() - t0

    arrays = ac.get(leaves)  # zero-copy views of the store's shared memory
    t0 = time.perf_counter()
    expected = arrays[0].copy()
    for a in arrays[1:]:
        expected += a
    t_seq = time.perf_counter() - t0

    adds = args.arrays - 1
    ok = np.allclose(total, expected)
    print(
        f"tree of {adds} add tasks in {levels} levels: {t_tree * 1e3:.0f} ms "
        f"({adds / t_tree:,.0f} adds/s, {mb / t_tree:,.0f} MB/s reduced)"
    )
    print(f"sequential sum in the driver: {t_seq * 1e3:.0f} ms")
    print(f"RESULT tree_sum_matches={ok} max_abs_diff={np.abs(total - expected).max():.2e}")
    ac.shutdown()
    if not ok:
        raise SystemExit("the tree sum differs from the sequential sum")


if __name__ == "__main__":
    main()
