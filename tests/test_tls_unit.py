"""TlsSocket on a socket pair: what OpenSSL demands of non-blocking writes (a write
that could not finish is offered again, byte for byte) while the caller's queue
changes between calls, and the refusal of a peer whose certificate another CA
signed. Certificates come from the ``openssl`` command."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl

import pytest

from actorcore._tls import TlsContexts, TlsOptions, tls_accept, tls_connect, wait_io
from actorcore.testing import make_tls_certificates

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    ours = make_tls_certificates(d, ("a", "b"))
    theirs = make_tls_certificates(d, ("x",))

    def load(s):
        return TlsContexts.load(TlsOptions(s["tls_cert"], s["tls_key"], s["tls_ca"]))

    return load(ours["a"]), load(ours["b"]), load(theirs["x"])


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)  # writes block often
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.setblocking(False)
    return a, b


def test_frames_queued_while_a_write_waits_arrive_whole_and_in_order(contexts):
    server_ctx, client_ctx, _ = contexts
    rng = __import__("random").Random(7)
    frames = [os.urandom(rng.choice((5, 300, 70_000, 3 << 20))) for _ in range(60)]
    want = b"".join(frames)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = _pair()
        srv, cli = await asyncio.gather(
            tls_accept(loop, a, server_ctx), tls_connect(loop, b, client_ctx)
        )

        async def write() -> None:
            out: list[memoryview] = []
            pending = list(frames)
            while pending or out:
                while pending and len(out) < 8:  # more frames join the queue between calls
                    out.append(memoryview(pending.pop(0)))
                try:
                    n = cli.sendmsg(out)
                except BlockingIOError:
                    await wait_io(loop, cli.fileno(), True)
                    continue
                while n:  # drop what was taken, as the transports do
                    if n >= out[0].nbytes:
                        n -= out[0].nbytes
                        out.pop(0)
                    else:
                        out[0] = out[0][n:]
                        n = 0

        async def read() -> bytes:
            got = bytearray(len(want))
            view, filled = memoryview(got), 0
            while filled < len(want):
                try:
                    n = srv.recv_into(view[filled:])
                except BlockingIOError:
                    await wait_io(loop, srv.fileno(), False)
                    continue
                assert n, "the writer closed early"
                filled += n
            return bytes(got)

        _, got = await asyncio.gather(write(), read())
        srv.close()
        cli.close()
        return got

    assert asyncio.run(main()) == want


def test_a_certificate_of_another_ca_is_refused_on_both_sides(contexts):
    server_ctx, _, stranger = contexts

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = _pair()
        results = await asyncio.gather(
            tls_accept(loop, a, server_ctx), tls_connect(loop, b, stranger), return_exceptions=True
        )
        assert isinstance(results[0], ssl.SSLError), results  # the server refuses it
        for r in results:
            if not isinstance(r, BaseException):
                r.close()

    asyncio.run(asyncio.wait_for(main(), 30))
