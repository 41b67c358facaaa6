"""A streaming pipeline: Reader -> Featurizer -> sink, each stage a streaming generator.

The Reader actor yields chunks of sensor data one at a time. The Featurizer
actor (an async generator method) consumes the Reader's stream and yields a
feature vector per chunk; the driver, the sink, consumes the Featurizer's
stream and is the slowest stage (it "writes" each result). Each stream has
back-pressure: a stage pauses when the stage after it is `--window` items
behind, so nothing piles up in memory however slow the sink is.

The pipeline runs twice, with and without back-pressure, and prints how far
ahead of the sink each stage ran: bounded by the windows with back-pressure,
the whole stream without.

Run: python examples/streaming_pipeline.py [--small] [--address etcd://host:2379/NAME]
"""

import argparse
import time

import numpy as np

import actorcore as ac

WIDTH, FEATURES = 64, 16


def stream_opts(window):
    opts = {"num_returns": "streaming"}
    if window:
        opts["generator_backpressure"] = window
    return opts


@ac.remote
class Reader:
    def read(self, chunks, rows):
        for i in range(chunks):  # one chunk at a time, as the next stage asks for them
            data = np.random.default_rng(i).standard_normal((rows, WIDTH))
            yield i, time.monotonic(), data


@ac.remote
class Featurizer:
    def __init__(self, reader):
        self.reader = reader
        self.weights = np.random.default_rng(0).standard_normal((WIDTH, FEATURES))

    async def run(self, chunks, rows, window):
        stream = self.reader.read.options(**stream_opts(window)).remote(chunks, rows)
        async for ref in stream:
            i, read_at, data = await ref
            features = np.tanh(data @ self.weights).mean(axis=0)
            yield i, read_at, time.monotonic(), features


def max_lead(made_at, taken_at):
    """Most items a stage had made beyond what the sink had taken, at any take."""
    made = np.sort(np.asarray(made_at))
    return max(
        int(np.searchsorted(made, t, side="right")) - (k + 1) for k, t in enumerate(taken_at)
    )


def run(featurizer, chunks, rows, window, sink_s):
    t0 = time.perf_counter()
    read_at, featurized_at, taken_at, total = [], [], [], np.zeros(FEATURES)
    stream = featurizer.run.options(**stream_opts(window)).remote(chunks, rows, window)
    for ref in stream:
        _i, t_read, t_feat, features = ac.get(ref)
        taken_at.append(time.monotonic())
        read_at.append(t_read)
        featurized_at.append(t_feat)
        total += features
        time.sleep(sink_s)  # the sink is the slow stage (it writes each result somewhere)
    dt = time.perf_counter() - t0
    return dt, max_lead(read_at, taken_at), max_lead(featurized_at, taken_at), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=None, help="etcd://host:2379/NAME to join a cluster")
    ap.add_argument("--chunks", type=int, default=400)
    ap.add_argument("--rows", type=int, default=1000, help="rows per chunk")
    ap.add_argument("--window", type=int, default=4, help="back-pressure of each stream")
    ap.add_argument("--sink-ms", type=float, default=10.0, help="time the sink takes per item")
    ap.add_argument("--small", action="store_true", help="a quick run for CI")
    args = ap.parse_args()
    if args.small:
        args.chunks, args.rows, args.sink_ms = 60, 500, 20.0

    ac.init(address=args.address)
    featurizer = Featurizer.remote(Reader.remote())
    for ref in featurizer.run.options(num_returns="streaming").remote(1, 1, 0):
        ac.get(ref)  # both actors are up
    mb = args.chunks * args.rows * WIDTH * 8 / 1e6
    print(
        f"Reader -> Featurizer -> sink: {args.chunks} chunks of {args.rows}x{WIDTH} ({mb:,.0f} MB)"
    )
    results = {}
    for window in (args.window, 0):
        dt, lead_read, lead_feat, total = run(
            featurizer, args.chunks, args.rows, window, args.sink_ms / 1000
        )
        results[window] = (lead_read, lead_feat, total)
        label = f"back-pressure {window}" if window else "no back-pressure"
        print(
            f"{label:>17}: {args.chunks / dt:,.0f} chunks/s; ahead of the sink at most: "
            f"reader {lead_read} chunks, featurizer {lead_feat}"
        )
    (bounded_read, bounded_feat, a), (free_read, _free_feat, b) = results[args.window], results[0]
    bound = 2 * args.window + 2  # two windows, plus one item in flight in each stage
    ok = bool(
        bounded_read <= bound
        and bounded_feat <= args.window + 1
        and free_read > bound
        and np.allclose(a, b)
    )
    print(
        f"RESULT chunks={args.chunks} window={args.window} bounded_lead={bounded_read} "
        f"unbounded_lead={free_read} featurizer_lead={bounded_feat} ok={ok}"
    )
    ac.shutdown()
    if not ok:
        raise SystemExit("back-pressure did not bound the stages, or the results differ")


if __name__ == "__main__":
    main()
