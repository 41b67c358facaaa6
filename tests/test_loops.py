"""The runtime's own loops: uvloop by default, the default asyncio loop on request."""

import pytest


@pytest.mark.timeout(60)
def test_runtime_on_the_default_asyncio_loop(fresh_runtime):
    """Driver, daemon and workers can run their own loops on asyncio instead of uvloop."""
    import actorcore as ac

    fresh_runtime(num_cpus=1, loop="asyncio")

    @ac.remote
    class Echo:
        async def echo(self, x):
            return x

    @ac.remote
    def inc(x):
        return x + 1

    e = Echo.remote()
    assert ac.get([e.echo.remote(i) for i in range(100)], timeout=30) == list(range(100))
    assert ac.get(inc.remote(inc.remote(1)), timeout=30) == 3
