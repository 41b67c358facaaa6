"""ac.util: ActorPool and Queue, on a real node."""

import pytest


@pytest.mark.timeout(60)
def test_actor_pool_map_keeps_order_and_uses_every_actor(runtime):
    ac = runtime

    @ac.remote
    class Doubler:
        def double(self, v):
            import os

            return 2 * v, os.getpid()

    pool = ac.util.ActorPool([Doubler.remote(), Doubler.options(num_cpus=1).remote()])
    out = list(pool.map(lambda a, v: a.double.remote(v), range(20)))
    assert [v for v, _ in out] == [2 * i for i in range(20)]
    assert len({pid for _, pid in out}) == 2
    unordered = sorted(v for v, _ in pool.map_unordered(lambda a, v: a.double.remote(v), range(10)))
    assert unordered == [2 * i for i in range(10)]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()


@pytest.mark.timeout(60)
def test_queue_between_a_task_and_the_driver(runtime):
    ac = runtime
    q = ac.util.Queue(maxsize=2)

    @ac.remote
    def producer(queue, n):
        for i in range(n):
            queue.put(i)
        return n

    ref = producer.remote(q, 5)
    got = [q.get(timeout=10) for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]
    assert ac.get(ref, timeout=10) == 5
    assert q.empty()
    with pytest.raises(ac.util.Empty):
        q.get_nowait()
    q.put(1)
    q.put(2)
    assert q.full()
    with pytest.raises(ac.util.Full):
        q.put(3, timeout=0.2)
    q.shutdown()


@pytest.mark.timeout(60)
async def test_queue_async_forms(runtime):
    q = runtime.util.Queue()
    await q.put_async("a")
    assert await q.get_async(timeout=5) == "a"
    with pytest.raises(runtime.util.Empty):
        await q.get_async(timeout=0.1)
