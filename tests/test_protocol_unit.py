"""Frames and typed messages, bytes in and out (no sockets)."""

import struct

import msgpack
import pytest

from actorcore import _protocol as P
from actorcore.errors import ProtocolError


def decoder(max_header=1 << 20, max_frame=1 << 24):
    return P.FrameDecoder(max_header, max_frame)


def test_every_message_class_has_a_unique_tag_and_round_trips():
    assert len(P.MESSAGES) == len({int(t) for t in P.MESSAGES})
    for tag, cls in P.MESSAGES.items():
        fields = [7 if name == "rid" else b"x" for name in cls._fields]
        msg = cls(*fields)
        frames = decoder().feed(P.encode(msg))
        assert len(frames) == 1
        got, bufs = frames[0]
        assert type(got) is cls and got.TAG == tag and bufs == []
        assert list(got) == fields


def test_frames_split_at_every_byte_reassemble():
    data = P.encode(P.GetObjectMsg(1, b"a")) + P.encode(P.ReplyMsg(2, [1, 2, b"x"]))
    for cut in range(len(data) + 1):
        d = decoder()
        out = d.feed(data[:cut]) + d.feed(data[cut:])
        assert [type(m) for m, _ in out] == [P.GetObjectMsg, P.ReplyMsg]


def test_raw_buffers_travel_outside_msgpack():
    big = bytes(range(256)) * 100
    frame = P.encode(P.LogBatchMsg([]), [big, b"tail"])
    assert isinstance(frame, list) and frame[1] is big  # not copied into the header
    ((_msg, bufs),) = decoder().feed(b"".join(frame))
    assert bufs == [big, b"tail"]


def test_oversized_header_is_refused_before_it_arrives():
    prelude = struct.pack("<IH", 10_000_000, 0)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder(max_header=1 << 20).feed(prelude)


def test_oversized_frame_counts_its_buffers():
    prelude = struct.pack("<IH", 10, 1) + struct.pack("<Q", 1 << 40)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder().feed(prelude)


def test_garbage_header_is_a_protocol_error():
    body = b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    with pytest.raises(ProtocolError):
        decoder().feed(struct.pack("<IH", len(body), 0) + body)


@pytest.mark.parametrize(
    "header",
    [
        [999, [1]],  # unknown tag
        [int(P.Tag.GET_OBJECT), [1]],  # too few fields
        [int(P.Tag.GET_OBJECT), [1, b"a", 3]],  # too many fields
        "not a list",
        [int(P.Tag.REPLY)],
    ],
)
def test_malformed_messages_are_protocol_errors(header):
    body = msgpack.packb(header)
    with pytest.raises(ProtocolError):
        decoder().feed(struct.pack("<IH", len(body), 0) + body)


def test_decoder_keeps_memory_bounded_over_many_frames():
    d = decoder()
    frame = P.encode(P.GetObjectMsg(1, b"a" * 100))
    for _ in range(30_000):
        d.feed(frame)
    assert d.pending_bytes() == 0
    assert len(d._buf) < 2 << 20


def test_too_many_buffers_is_refused():
    with pytest.raises(ProtocolError, match="buffers"):
        decoder().feed(struct.pack("<IH", 10, P.MAX_BUFFERS + 1))


def test_request_tags_are_exactly_the_messages_with_a_rid():
    for tag, cls in P.MESSAGES.items():
        assert (tag in P.REQUESTS) == (cls._fields[:1] == ("rid",))
    assert P.Tag.STEAL_TASKS not in P.REQUESTS and P.Tag.PUSH_TASK in P.REQUESTS


def test_a_limited_feed_leaves_what_follows_undecoded():
    """The handshake decodes one frame at a time: bytes behind a failed AUTH,
    even undecodable ones, are never parsed."""
    auth = P.encode_bytes(P.AuthMsg(P.PROTOCOL_VERSION, "driver", b"i" * 16, b"n" * 16, b"p"))
    garbage = struct.pack("<IH", 12, 0) + b"\xc1" * 12
    d = P.FrameDecoder(4096, 4096)
    frames = d.feed(auth + garbage, 1)
    assert [type(m) for m, _ in frames] == [P.AuthMsg]
    assert d.take_rest() == garbage
    with pytest.raises(ProtocolError):
        P.FrameDecoder(4096, 4096).feed(auth + garbage)  # decoding all of it would fail


def test_the_sender_checks_the_limits():
    from actorcore.errors import MessageTooLargeError

    frame = P.encode(P.ReplyMsg(1, b"x" * 5000))
    assert P.check_size(frame, 8192, 8192) == len(frame)
    with pytest.raises(MessageTooLargeError, match="max_header_bytes"):
        P.check_size(frame, 4096, 1 << 20)
    with_buffers = P.encode(P.ReplyMsg(1, b""), [b"b" * 10_000])
    with pytest.raises(MessageTooLargeError, match="max_frame_bytes"):
        P.check_size(with_buffers, 4096, 8192)
    assert issubclass(MessageTooLargeError, ValueError)


def test_large_buffers_are_received_into_their_own_memory():
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB
    frames = [
        P.encode(P.ReplyMsg(1, "before")),
        P.encode(P.ReplyMsg(2, "big"), [big, b"", b"tail"]),
        P.encode(P.ReplyMsg(3, "after"), [b"small"]),
    ]
    stream = b"".join(f if isinstance(f, bytes) else b"".join(f) for f in frames)
    for chunk in (997, 4096, 65536, 1 << 20, len(stream)):
        d = P.FrameDecoder(1 << 20, 8 << 20)
        got = []
        peak = 0
        for i in range(0, len(stream), chunk):
            got.extend(d.feed(stream[i : i + chunk]))
            peak = max(peak, d.pending_bytes())
        assert [m.rid for m, _ in got] == [1, 2, 3], chunk
        assert got[1][1] == [big, b"", b"tail"]
        assert got[2][1] == [b"small"]
        if chunk < len(big):
            assert peak < 2 * chunk + (1 << 16), "the big buffer went through the decoder"


def test_a_streamed_frame_still_obeys_the_limits():
    from actorcore.errors import MessageTooLargeError

    frame = P.encode(P.ReplyMsg(1, "x"), [b"y" * (2 << 20)])
    d = P.FrameDecoder(1 << 20, 1 << 20)
    with pytest.raises(MessageTooLargeError):
        d.feed(frame[0])


def test_frames_with_buffers_fed_in_pieces_of_any_kind_reassemble():
    """A frame decoded straight from the fed bytes (nothing held back) and one
    reassembled in the buffer give the same messages; memoryviews of any format work."""
    import array

    frame = P.encode(P.LogBatchMsg([]), [b"abc" * 50, b"t"])
    data = (
        b"".join(frame)
        + P.encode(P.ReplyMsg(2, [1, b"x"]))
        + P.encode(P.ActorCallMsg(3, b"a", "m", b"t", b"", [], [b"r"], []))
    )  # (stream, epoch: the defaults)
    for cut in range(0, len(data) + 1, 7):
        d = decoder()
        out = d.feed(memoryview(data[:cut])) + d.feed(bytearray(data[cut:]))
        assert [type(m) for m, _ in out] == [P.LogBatchMsg, P.ReplyMsg, P.ActorCallMsg]
        assert out[0][1] == [b"abc" * 50, b"t"] and out[1][1] == []
        assert out[2][0].epoch == -1 and out[2][0].stream == 0
        assert d.pending_bytes() == 0
    words = array.array("I", data + b"\0" * (-len(data) % 4))
    out = decoder().feed(memoryview(words)[: len(data) // 4 + 1])
    assert [type(m) for m, _ in out] == [P.LogBatchMsg, P.ReplyMsg, P.ActorCallMsg]
