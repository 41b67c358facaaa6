"""The shortest path through the product: a task, an actor, put/get."""

import pytest


@pytest.mark.timeout(60)
def test_task_actor_put(runtime):
    ac = runtime

    @ac.remote
    def add(a, b):
        return a + b

    @ac.remote
    class Counter:
        def __init__(self, start=0):
            self.n = start

        def incr(self, k=1):
            self.n += k
            return self.n

    assert ac.get(add.remote(1, 2), timeout=30) == 3
    c = Counter.remote(5)
    assert ac.get(c.incr.remote(2), timeout=30) == 7
    assert ac.get(ac.put([1, 2])) == [1, 2]


@pytest.mark.timeout(60)
async def test_await_from_a_running_loop(runtime):
    ac = runtime

    @ac.remote
    async def double(x):
        return 2 * x

    assert await double.remote(21) == 42
