"""actorcore in one page: tasks, actors, the object store, and async.

Run: python examples/quickstart.py   (starts an embedded node: no cluster needed)
"""

import asyncio
import time

import numpy as np

import actorcore as ac


@ac.remote
def square(x):
    return x * x


@ac.remote
async def slow_double(x):
    await asyncio.sleep(0.1)
    return 2 * x


@ac.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n


@ac.remote
def column_means(matrix):
    return matrix.mean(axis=0)  # `matrix` is a zero-copy view of shared memory


def main() -> None:
    t0 = time.perf_counter()
    ac.init()
    print(f"node up in {time.perf_counter() - t0:.2f} s: {ac.cluster_resources()['CPU']:g} CPUs")

    # tasks: .remote() returns an ObjectRef at once; get() waits for the value
    refs = [square.remote(i) for i in range(10)]
    print("squares:", ac.get(refs))

    # refs as arguments are resolved before the task runs
    print("chained:", ac.get(square.remote(square.remote(3))))

    # actors: stateful services; calls from one caller run in order
    c = Counter.remote(5)
    c.incr.remote(2)
    print("counter:", ac.get(c.incr.remote(3)))

    # large values go through shared memory, without copies
    big = ac.put(np.random.rand(2_000, 500))
    print("means of a 2000x500 matrix, first three:", ac.get(column_means.remote(big))[:3])

    # errors come back as the exception type the task raised
    @ac.remote
    def fails():
        raise ValueError("bad input")

    try:
        ac.get(fails.remote())
    except ValueError as e:
        print("caught:", str(e).splitlines()[0])

    ac.shutdown()

    # the same API inside an event loop: await refs
    async def async_main() -> None:
        await ac.init()
        values = await asyncio.gather(*(slow_double.remote(i) for i in range(5)))
        print("async:", values)
        counter = Counter.remote()
        print("awaited actor call:", await counter.incr(10))
        await ac.shutdown()

    asyncio.run(async_main())


if __name__ == "__main__":
    main()
