"""A parameter server as an actor, trained synchronously and asynchronously.

Logistic regression on a generated data set: each worker actor makes its own
shard of the data once and answers "gradient of this minibatch at these
weights"; the parameter server actor holds the weights and applies gradients.

- sync: every step, all workers compute a gradient at the same weights and
  the server applies their average (refs go straight from the workers into
  the server's call: the driver never touches a gradient).
- async: each worker gets fresh weights as soon as its gradient is applied,
  taken with `ac.wait` in whatever order they finish; no worker waits for
  the slowest.

Run: python examples/parameter_server.py [--small] [--address etcd://host:2379/NAME]
"""

import argparse
import time

import numpy as np

import actorcore as ac

DIM, NOISE, TARGET_ACCURACY = 50, 0.3, 0.88  # the best possible accuracy is ~0.91


def make_data(seed, n):
    """Points x ~ N(0, I) labelled by a hidden plane (the same for every seed) plus noise."""
    w_true = np.random.default_rng(0).standard_normal(DIM) / np.sqrt(DIM)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM))
    y = (x @ w_true + NOISE * rng.standard_normal(n) > 0).astype(np.float64)
    return x, y


def accuracy(w, x, y):
    return float(((x @ w > 0) == (y > 0.5)).mean())


@ac.remote
class ParameterServer:
    def __init__(self, lr):
        self.w = np.zeros(DIM)
        self.lr = lr
        self.updates = 0

    def apply_gradients(self, *grads):
        self.w = self.w - self.lr * np.mean(grads, axis=0)
        self.updates += 1
        return self.w

    def get_weights(self):
        return self.w


@ac.remote
class DataWorker:
    def __init__(self, seed, n, batch):
        self.x, self.y = make_data(seed, n)
        self.batch = batch
        self.rng = np.random.default_rng(seed)

    def gradient(self, w):
        i = self.rng.integers(0, len(self.y), self.batch)
        x, y = self.x[i], self.y[i]
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        return x.T @ (p - y) / len(y)


def train_sync(ps, workers, steps):
    w = ps.get_weights.remote()
    for _ in range(steps):
        grads = [worker.gradient.remote(w) for worker in workers]
        w = ps.apply_gradients.remote(*grads)
    return ac.get(w)


def train_async(ps, workers, steps):
    in_flight = {worker.gradient.remote(ps.get_weights.remote()): worker for worker in workers}
    for _ in range(steps * len(workers)):  # as many gradients as the sync run computes
        [ready], _ = ac.wait(list(in_flight))
        worker = in_flight.pop(ready)
        w = ps.apply_gradients.remote(ready)
        in_flight[worker.gradient.remote(w)] = worker
    ac.wait(list(in_flight), num_returns=len(in_flight))
    return ac.get(ps.get_weights.remote())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=None, help="etcd://host:2379/NAME to join a cluster")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300, help="sync steps (async: as many gradients)")
    ap.add_argument("--shard", type=int, default=50_000, help="training points per worker")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--small", action="store_true", help="a quick run for CI")
    args = ap.parse_args()
    if args.small:
        args.workers, args.steps, args.shard = 2, 60, 5_000

    ac.init(address=args.address)
    x_test, y_test = make_data(seed=10_000, n=20_000)
    print(f"logistic regression, {DIM} features, {args.workers} workers x {args.shard:,} points")
    results = {}
    for name, train, lr in [("sync", train_sync, 1.0), ("async", train_async, 0.5)]:
        ps = ParameterServer.remote(lr)
        workers = [DataWorker.remote(i + 1, args.shard, args.batch) for i in range(args.workers)]
        ac.get([ps.get_weights.remote()] + [wk.gradient.remote(np.zeros(DIM)) for wk in workers])
        t0 = time.perf_counter()
        w = train(ps, workers, args.steps)
        dt = time.perf_counter() - t0
        acc = accuracy(w, x_test, y_test)
        grads = args.steps * args.workers
        print(
            f"{name:>5}: {grads} gradients in {dt:.2f} s ({grads / dt:,.0f}/s), accuracy {acc:.3f}"
        )
        results[name] = acc
        for actor in [ps, *workers]:
            ac.kill(actor)
    ok = all(acc >= TARGET_ACCURACY for acc in results.values())
    print(
        f"RESULT sync_accuracy={results['sync']:.3f} async_accuracy={results['async']:.3f} "
        f"target={TARGET_ACCURACY} reached={ok}"
    )
    ac.shutdown()
    if not ok:
        raise SystemExit("the model did not reach the target accuracy")


if __name__ == "__main__":
    main()
