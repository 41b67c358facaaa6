"""Batch inference: a data set pushed through an ActorPool of model actors.

Each model actor builds its model once (a numpy MLP with fixed, seeded
weights standing in for a checkpoint) and then classifies batch after batch.
Loader tasks read batches (here: generate them) a few ahead of the models;
whichever load finishes first (`ac.wait`) goes to whichever model is free
(`ActorPool`), and each result is written to a file as it arrives.

Run: python examples/batch_inference.py [--small] [--out DIR] [--address etcd://host:2379/NAME]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import actorcore as ac

FEATURES, HIDDEN, CLASSES = 784, 256, 10


def build_model():
    rng = np.random.default_rng(42)  # the same "checkpoint" in every actor
    shapes = [(FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)]
    return [rng.standard_normal(s).astype(np.float32) / np.sqrt(s[0]) for s in shapes]


def classify(layers, x):
    for w in layers[:-1]:
        x = np.maximum(x @ w, 0)
    logits = x @ layers[-1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits.argmax(axis=1), (p.max(axis=1) / p.sum(axis=1)).astype(np.float32)


@ac.remote(num_cpus=0)  # a loader waits on storage, not on a CPU
def load_batch(i, rows):
    return i, np.random.default_rng(i).standard_normal((rows, FEATURES), dtype=np.float32)


@ac.remote(num_cpus=1)
class Model:
    def __init__(self):
        self.layers = build_model()  # loaded once, used for every batch

    def predict(self, batch):
        i, x = batch
        labels, confidence = classify(self.layers, x)
        return i, labels, confidence


def progress(done, total, rows, t0):
    rate = rows / (time.perf_counter() - t0)
    bar = "#" * (30 * done // total)
    end = "\n" if done == total or not sys.stdout.isatty() else ""
    if sys.stdout.isatty() or done == total or done % max(1, total // 10) == 0:
        print(f"\r[{bar:<30}] {done}/{total} batches, {rate:,.0f} rows/s", end=end, flush=True)


def run(pool, batches, rows, prefetch, out_dir):
    loading, next_batch, done, t0 = [], 0, 0, time.perf_counter()
    while done < batches:
        while next_batch < batches and len(loading) < prefetch:
            loading.append(load_batch.remote(next_batch, rows))
            next_batch += 1
        if pool.has_next():  # take the loads that are ready, without waiting
            ready, loading = ac.wait(loading, num_returns=len(loading), timeout=0)
        else:  # nothing to collect: wait for the first load to finish
            ready, loading = ac.wait(loading, num_returns=1)
        for ref in ready:
            pool.submit(lambda model, batch: model.predict.remote(batch), ref)
        if pool.has_next():
            i, labels, confidence = pool.get_next_unordered()
            path = os.path.join(out_dir, f"batch_{i:05d}.npz")
            np.savez(path, labels=labels, confidence=confidence)
            done += 1
            progress(done, batches, done * rows, t0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=None, help="etcd://host:2379/NAME to join a cluster")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1000, help="rows per batch")
    ap.add_argument("--models", type=int, default=0, help="model actors (default: one per CPU)")
    ap.add_argument("--out", default=None, help="output directory (default: a new temp dir)")
    ap.add_argument("--small", action="store_true", help="a quick run for CI")
    args = ap.parse_args()
    if args.small:
        args.batches, args.rows = 20, 200

    ac.init(address=args.address)
    out_dir = args.out or tempfile.mkdtemp(prefix="actorcore-inference-")
    os.makedirs(out_dir, exist_ok=True)
    n_models = args.models or int(ac.cluster_resources().get("CPU", 1))
    models = [Model.remote() for _ in range(n_models)]
    ac.get([m.predict.remote((0, np.zeros((1, FEATURES), np.float32))) for m in models])  # loaded
    pool = ac.util.ActorPool(models)
    print(f"{args.batches} batches x {args.rows} rows through {n_models} model actors -> {out_dir}")
    dt = run(pool, args.batches, args.rows, 2 * n_models, out_dir)

    files = sorted(os.listdir(out_dir))
    sample = args.batches // 2  # check one batch against the model run right here
    want_labels, _ = classify(build_model(), ac.get(load_batch.remote(sample, args.rows))[1])
    got = np.load(os.path.join(out_dir, f"batch_{sample:05d}.npz"))["labels"]
    ok = len(files) == args.batches and np.array_equal(got, want_labels)
    rows = args.batches * args.rows
    print(f"{rows:,} rows in {dt:.2f} s ({rows / dt:,.0f} rows/s), {len(files)} files written")
    print(f"RESULT rows={rows} files={len(files)} rows_per_s={rows / dt:.0f} check_matches={ok}")
    ac.shutdown()
    if not ok:
        raise SystemExit("missing output files or predictions that differ from a local run")


if __name__ == "__main__":
    main()
