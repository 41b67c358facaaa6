"""Reinforcement learning with simulators as actors: evolution strategies on cart-pole.

Each simulator actor runs a batch of cart-pole environments at once
(vectorized numpy physics). A linear policy (push right when
`obs @ w + b > 0`) is improved by evolution strategies: every iteration the
driver asks for rollouts of many random perturbations of the policy (each
perturbation named by a seed, so only seeds travel), hands the next chunk of
work to whichever simulator finished first (`ac.wait`), and moves the policy
towards the perturbations that scored best.

Run: python examples/rl_rollouts.py [--small] [--address etcd://host:2379/NAME]
"""

import argparse
import time

import numpy as np

import actorcore as ac

MAX_STEPS = 500
PARAMS = 4  # weights of the observation (x, x_dot, theta, theta_dot)


def run_cartpole(policies, rng):
    """Steps balanced by each row of `policies` from a random start (the classic physics)."""
    n = len(policies)
    x, x_dot, theta, theta_dot = rng.uniform(-0.05, 0.05, (4, n))
    alive, reward = np.ones(n, bool), np.zeros(n)
    for _ in range(MAX_STEPS):
        obs = np.stack([x, x_dot, theta, theta_dot], axis=1)
        force = np.where(np.einsum("ij,ij->i", obs, policies) > 0, 10.0, -10.0)
        cos, sin = np.cos(theta), np.sin(theta)
        temp = (force + 0.05 * theta_dot**2 * sin) / 1.1
        theta_acc = (9.8 * sin - cos * temp) / (0.5 * (4 / 3 - 0.1 * cos**2 / 1.1))
        x_acc = temp - 0.05 * theta_acc * cos / 1.1
        x, x_dot = x + 0.02 * x_dot, x_dot + 0.02 * x_acc
        theta, theta_dot = theta + 0.02 * theta_dot, theta_dot + 0.02 * theta_acc
        reward += alive
        alive &= (np.abs(x) < 2.4) & (np.abs(theta) < 0.2095)
        if not alive.any():
            break
    return reward


@ac.remote(num_cpus=1)
class Simulator:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def rollouts(self, w, seeds, sigma, episodes):
        """Mean reward of w + sigma*eps and w - sigma*eps for the eps of each seed."""
        eps = np.stack([np.random.default_rng(s).standard_normal(PARAMS) for s in seeds])
        policies = np.concatenate([w + sigma * eps, w - sigma * eps]).repeat(episodes, axis=0)
        r = run_cartpole(policies, self.rng).reshape(2, len(seeds), episodes).mean(axis=2)
        return list(zip(seeds, r[0], r[1], strict=True))

    def evaluate(self, w, episodes):
        return float(run_cartpole(np.tile(w, (episodes, 1)), self.rng).mean())


def gather_rollouts(sims, w, seeds, chunk, sigma, episodes):
    """Spread chunks of seeds over the simulators, refilling whichever finishes first."""
    work = [seeds[i : i + chunk] for i in range(0, len(seeds), chunk)]
    w_ref = ac.put(w)  # one copy of the policy for all calls
    busy = {sim.rollouts.remote(w_ref, work.pop(), sigma, episodes): sim for sim in sims if work}
    results = []
    while busy:
        [done], _ = ac.wait(list(busy), num_returns=1)
        sim = busy.pop(done)
        results += ac.get(done)
        if work:
            busy[sim.rollouts.remote(w_ref, work.pop(), sigma, episodes)] = sim
    return sorted(results)  # by seed: the update does not depend on who finished first


def es_step(w, results, sigma, lr):
    seeds, r_plus, r_minus = zip(*results, strict=True)
    eps = np.stack([np.random.default_rng(s).standard_normal(PARAMS) for s in seeds])
    ranks = np.argsort(np.argsort(np.concatenate([r_plus, r_minus]))) / (2 * len(seeds) - 1) - 0.5
    weight = ranks[: len(seeds)] - ranks[len(seeds) :]  # centred ranks: robust to reward scale
    return w + lr / (len(seeds) * sigma) * weight @ eps, float(np.mean([r_plus, r_minus]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=None, help="etcd://host:2379/NAME to join a cluster")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--population", type=int, default=64, help="perturbations per iteration")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per perturbation")
    ap.add_argument("--simulators", type=int, default=0, help="default: one per CPU")
    ap.add_argument("--small", action="store_true", help="a quick run for CI")
    args = ap.parse_args()
    if args.small:
        args.iterations, args.population, args.episodes = 5, 24, 2

    ac.init(address=args.address)
    n_sims = args.simulators or int(ac.cluster_resources().get("CPU", 1))
    sims = [Simulator.remote(seed) for seed in range(n_sims)]
    chunk = max(1, args.population // (4 * n_sims))
    rng, w, sigma, lr = np.random.default_rng(0), np.zeros(PARAMS), 0.1, 0.02
    print(f"cart-pole ES: {n_sims} simulators, {args.population} perturbations per iteration")
    rewards = [ac.get(sims[0].evaluate.remote(w, 20))]
    print(f"iter  0: policy reward {rewards[0]:6.1f}")
    t0, episodes = time.perf_counter(), 0
    for it in range(1, args.iterations + 1):
        seeds = [int(s) for s in rng.integers(0, 2**31, args.population)]
        results = gather_rollouts(sims, w, seeds, chunk, sigma, args.episodes)
        w, pop_mean = es_step(w, results, sigma, lr)
        evals = [s.evaluate.remote(w, 20 // n_sims + 1) for s in sims]
        rewards.append(float(np.mean(ac.get(evals))))
        episodes += 2 * args.population * args.episodes
        print(f"iter {it:2d}: population reward {pop_mean:6.1f}, policy reward {rewards[-1]:6.1f}")
    dt = time.perf_counter() - t0
    print(f"{episodes:,} training episodes in {dt:.1f} s ({episodes / dt:,.0f} episodes/s)")
    improved = rewards[-1] > 2 * rewards[0] and rewards[-1] >= 100
    first, last = rewards[0], rewards[-1]
    print(f"RESULT first_reward={first:.1f} last_reward={last:.1f} reward_improved={improved}")
    ac.shutdown()
    if not improved:
        raise SystemExit("the policy did not improve")


if __name__ == "__main__":
    main()
