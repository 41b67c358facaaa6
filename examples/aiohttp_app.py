"""actorcore inside an aiohttp application that already runs an event loop.

Run: python examples/aiohttp_app.py --port 8080   then   curl 127.0.0.1:8080/
Each request is counted by an actor and answered with a task's result.
"""

import argparse

from aiohttp import web

import actorcore as ac


@ac.remote
class Hits:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


@ac.remote
def shout(text):
    return text.upper()


HITS = web.AppKey("hits", ac.ActorHandle)


async def on_startup(app: web.Application) -> None:
    await ac.init()  # on the app's running loop: awaited, never blocking it
    app[HITS] = Hits.remote()


async def on_cleanup(app: web.Application) -> None:
    await ac.shutdown()


async def handler(request: web.Request) -> web.Response:
    n = await request.app[HITS].incr()  # an actor call is awaitable
    word = await shout.remote(request.query.get("say", "hello"))  # so is a task
    return web.Response(text=f"{word} (hit {n})\n")


def make_app() -> web.Application:
    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/", handler)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
