"""Hyperparameter search with trials as actors and ASHA early stopping.

Each trial is an actor that owns a small numpy MLP and trains it a few more
steps per call, returning its validation accuracy. The driver runs ASHA
(asynchronous successive halving): a trial that finishes a rung is promoted
to the next rung (`eta` times more steps) once it is in the top 1/eta of the
trials that finished that rung; the others stop early. Whichever trial
finishes first frees its slot (`ac.wait`), so no slot waits for a whole rung.

Run: python examples/hyperparameter_search.py [--small] [--address etcd://host:2379/NAME]
"""

import argparse
import time

import numpy as np

import actorcore as ac

STEPS_PER_UNIT, ETA = 50, 3


def circles(n, seed):
    """Points labelled by whether they fall inside a circle (not linearly separable)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, (n, 2))
    r = np.hypot(x[:, 0], x[:, 1]) + 0.1 * rng.standard_normal(n)
    return x, (r < 0.9).astype(float)


@ac.remote
class Trial:
    def __init__(self, config, seed):
        self.lr, self.batch = config["lr"], config["batch"]
        rng = np.random.default_rng(seed)
        self.w1 = rng.standard_normal((2, config["hidden"]))
        self.b1 = np.zeros(config["hidden"])
        self.w2 = rng.standard_normal(config["hidden"]) / np.sqrt(config["hidden"])
        self.b2 = 0.0
        self.x, self.y = circles(4000, seed=1)
        self.x_val, self.y_val = circles(2000, seed=2)
        self.rng = rng

    def _forward(self, x):
        h = np.tanh(x @ self.w1 + self.b1)
        return h, 1 / (1 + np.exp(-(h @ self.w2 + self.b2)))

    def train(self, units):
        for _ in range(units * STEPS_PER_UNIT):
            i = self.rng.integers(0, len(self.y), self.batch)
            h, p = self._forward(self.x[i])
            err = (p - self.y[i]) / len(i)
            dh = np.outer(err, self.w2) * (1 - h**2)
            self.w2 -= self.lr * h.T @ err
            self.b2 -= self.lr * err.sum()
            self.w1 -= self.lr * self.x[i].T @ dh
            self.b1 -= self.lr * dh.sum(axis=0)
        return float(((self._forward(self.x_val)[1] > 0.5) == self.y_val).mean())


def sample_config(rng):
    return {
        "lr": float(10 ** rng.uniform(-3, 1)),
        "hidden": int(rng.choice([2, 4, 8, 16, 32])),
        "batch": int(rng.choice([8, 32, 128])),
    }


def asha(configs, rungs, slots):
    """Run ASHA; returns per trial: config, rung reached, last accuracy."""
    trials = [{"config": c, "rung": -1, "acc": 0.0, "actor": None} for c in configs]
    done_at = [[] for _ in range(rungs)]  # per rung: (accuracy, trial index)
    promoted = [set() for _ in range(rungs)]
    fresh, busy = list(range(len(trials)))[::-1], {}

    def next_job():
        for k in reversed(range(rungs - 1)):  # promote first, deepest rung first
            best = sorted(done_at[k], reverse=True)[: len(done_at[k]) // ETA]
            for _, i in best:
                if i not in promoted[k]:
                    promoted[k].add(i)
                    return i, k + 1
        return (fresh.pop(), 0) if fresh else None

    while True:
        while len(busy) < slots and (job := next_job()) is not None:
            i, k = job
            t = trials[i]
            t["actor"] = t["actor"] or Trial.remote(t["config"], seed=i)
            units = ETA**k - (ETA ** (k - 1) if k else 0)  # steps on top of what it has done
            busy[t["actor"].train.remote(units)] = (i, k)
        if not busy:
            return trials
        [ref], _ = ac.wait(list(busy))
        i, k = busy.pop(ref)
        trials[i].update(rung=k, acc=ac.get(ref))
        done_at[k].append((trials[i]["acc"], i))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=None, help="etcd://host:2379/NAME to join a cluster")
    ap.add_argument("--trials", type=int, default=54)
    ap.add_argument("--rungs", type=int, default=4, help="the last trains ETA**(rungs-1) units")
    ap.add_argument("--slots", type=int, default=0, help="trials training at once (2 per CPU)")
    ap.add_argument("--small", action="store_true", help="a quick run for CI")
    args = ap.parse_args()
    if args.small:
        args.trials, args.rungs = 18, 3

    ac.init(address=args.address)
    slots = args.slots or 2 * int(ac.cluster_resources().get("CPU", 1))
    rng = np.random.default_rng(0)
    configs = [sample_config(rng) for _ in range(args.trials)]
    t0 = time.perf_counter()
    trials = asha(configs, args.rungs, slots)
    dt = time.perf_counter() - t0

    print(f"{'trial':>5} {'lr':>8} {'hidden':>6} {'batch':>5} {'steps':>6} {'val acc':>7}")
    ranked = sorted(range(len(trials)), key=lambda i: (trials[i]["rung"], trials[i]["acc"]))[::-1]
    for i in ranked[:10]:
        t, c = trials[i], trials[i]["config"]
        steps = ETA ** t["rung"] * STEPS_PER_UNIT
        print(
            f"{i:>5} {c['lr']:>8.4f} {c['hidden']:>6} {c['batch']:>5} {steps:>6} {t['acc']:>7.3f}"
        )
    print(f"  ... {len(trials) - 10} more, stopped early" if len(trials) > 10 else "")
    used = sum(ETA ** t["rung"] for t in trials) * STEPS_PER_UNIT
    full = len(trials) * ETA ** (args.rungs - 1) * STEPS_PER_UNIT
    best = trials[ranked[0]]
    print(
        f"{len(trials)} trials in {dt:.1f} s on {slots} slots: {used:,} training steps, "
        f"{used / full:.0%} of what training every trial fully takes"
    )
    found = best["rung"] == args.rungs - 1 and best["acc"] >= 0.9
    print(f"RESULT best_trial={ranked[0]} best_accuracy={best['acc']:.3f} best_found={found}")
    ac.shutdown()
    if not found:
        raise SystemExit("no trial reached 0.9 validation accuracy")


if __name__ == "__main__":
    main()
