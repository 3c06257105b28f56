"""FrameSplitter: frames cut anywhere, elided DATA payloads, padding, priority, skipped payloads."""

from __future__ import annotations

import random

from tenantwatch.h2.frames import (
    CONTINUATION,
    DATA,
    HEADERS,
    PING,
    PUSH_PROMISE,
    SETTINGS,
    Frame,
    FrameSplitter,
)

from .conv import frame


def stream() -> tuple[bytes, list[Frame]]:
    """A direction's bytes as the kernel sends them, and the frames in it."""
    parts = [
        (frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x64"), Frame(SETTINGS, 0, 0, 6)),
        (frame(HEADERS, 0x4, 1, b"abc"), Frame(HEADERS, 0x4, 1, 3, b"abc")),
        # DATA: the length says 1000, no payload follows (the kernel removed it)
        (b"\x00\x03\xe8\x00\x00\x00\x00\x00\x01", Frame(DATA, 0, 1, 1000)),
        (frame(HEADERS, 0x8 | 0x20, 3, b"\x02" + b"PPPPP" + b"block" + b"\x00\x00"),
         Frame(HEADERS, 0x28, 3, 13, b"block")),
        (frame(HEADERS, 0x1, 5, b"first"), Frame(HEADERS, 0x1, 5, 5, b"first")),
        (frame(CONTINUATION, 0x4, 5, b"second"), Frame(CONTINUATION, 0x4, 5, 6, b"second")),
        (frame(PING, 0, 0, b"12345678"), Frame(PING, 0, 0, 8)),
        (frame(PUSH_PROMISE, 0x4 | 0x8, 5, b"\x01" + b"\x00\x00\x00\x02" + b"pp" + b"\x00"),
         Frame(PUSH_PROMISE, 0xC, 5, 8, b"pp")),
        (b"\x00\x00\x00\x00\x01\x00\x00\x00\x07", Frame(DATA, 1, 7, 0)),
    ]
    return b"".join(p for p, _ in parts), [f for _, f in parts]


def test_whole_stream_at_once() -> None:
    data, want = stream()
    assert FrameSplitter(1024).feed(data) == want


def test_every_cut_point_and_byte_by_byte() -> None:
    data, want = stream()
    for cut in range(len(data) + 1):
        s = FrameSplitter(1024)
        assert s.feed(data[:cut]) + s.feed(data[cut:]) == want, cut
    s = FrameSplitter(1024)
    got = []
    for i in range(len(data)):
        got += s.feed(data[i:i + 1])
    assert got == want and s.buffered == 0


def test_random_pieces() -> None:
    data, want = stream()
    rng = random.Random(7)
    for _ in range(200):
        s = FrameSplitter(1024)
        got, pos = [], 0
        while pos < len(data):
            n = rng.randint(1, 20)
            got += s.feed(data[pos:pos + n])
            pos += n
        assert got == want


def test_long_header_frame_streams_by_unbuffered() -> None:
    big = frame(HEADERS, 0x4, 1, b"x" * 5000) + frame(PING, 0, 0, b"12345678")
    s = FrameSplitter(4096)
    got = []
    for i in range(0, len(big), 100):
        got += s.feed(big[i:i + 100])
        assert s.buffered < 100
    assert got == [Frame(HEADERS, 0x4, 1, 5000, None), Frame(PING, 0, 0, 8)]


def test_bad_padding_gives_no_fragment() -> None:
    s = FrameSplitter(1024)
    assert s.feed(frame(HEADERS, 0x4 | 0x8, 1, b"\x09abc")) == [
        Frame(HEADERS, 0xC, 1, 4, None)]


def test_keep_headers_off_buffers_nothing() -> None:
    s = FrameSplitter(1024)
    s.keep_headers = False
    data = frame(HEADERS, 0x4, 1, b"y" * 300)
    assert s.feed(data[:100]) == [Frame(HEADERS, 0x4, 1, 300)]
    assert s.buffered == 0
    assert s.feed(data[100:]) == []
