"""kernel/ringbuf.py on buffers laid out as the kernel lays out a BPF ring buffer: committed
records in order, a reserved (BUSY) record stops the reading until it is committed, discarded
records are skipped, the padding to 8 bytes, a record that wraps past the end of the data area
(the kernel maps that area twice in a row, done here by writing both copies), and the consumer
position.  tests/kernel/test_h2.py wraps a real ring."""

from __future__ import annotations

import mmap
import struct

import pytest

from tenantwatch.kernel.ringbuf import BUSY_BIT, DISCARD_BIT, RingReader

PAGE = 4096
SIZE = 256  # the data area (a power of two)


class Ring:
    """A stand-in ring: page 0 the consumer position; page 1 the producer's, then the data
    area twice (both copies written, as the kernel's double mapping shows them)."""

    def __init__(self) -> None:
        self.consumer = mmap.mmap(-1, PAGE)
        self.rest = mmap.mmap(-1, PAGE + 2 * SIZE)
        self.prod = 0

    def put(self, payload: bytes, flags: int = 0) -> int:
        """Append a record at the producer position; returns where its header is."""
        at = self.prod
        raw = struct.pack("<II", len(payload) | flags, 0) + payload
        raw += b"\0" * (-len(raw) % 8)
        for i, byte in enumerate(raw):
            off = (at + i) % SIZE
            self.rest[PAGE + off] = self.rest[PAGE + SIZE + off] = byte
        self.prod += len(raw)
        struct.pack_into("<Q", self.rest, 0, self.prod)
        return at

    def commit(self, at: int, length: int) -> None:
        for base in (PAGE, PAGE + SIZE):
            struct.pack_into("<I", self.rest, base + at % SIZE, length)

    def reader(self) -> RingReader:
        return RingReader(self.consumer, self.rest, SIZE, PAGE)

    @property
    def cons(self) -> int:
        return struct.unpack_from("<Q", self.consumer, 0)[0]


def test_records_come_in_order_and_the_consumer_position_moves_past_them() -> None:
    ring = Ring()
    r = ring.reader()
    assert r.read() == [] and ring.cons == 0
    ring.put(b"abc")
    ring.put(b"12345678")  # a multiple of 8: no padding
    ring.put(b"")
    assert r.read() == [b"abc", b"12345678", b""]
    assert ring.cons == ring.prod == 16 + 16 + 8 == r.consumed
    assert r.read() == []


def test_a_reserved_record_stops_the_reading_until_it_is_committed() -> None:
    ring = Ring()
    r = ring.reader()
    ring.put(b"first")
    busy = ring.put(b"second", BUSY_BIT)
    ring.put(b"third")
    assert r.read() == [b"first"]
    assert ring.cons == busy  # not past the reserved record
    ring.commit(busy, len(b"second"))
    assert r.read() == [b"second", b"third"]
    assert ring.cons == ring.prod


def test_a_discarded_record_is_skipped() -> None:
    ring = Ring()
    r = ring.reader()
    ring.put(b"kept")
    ring.put(b"dropped!", DISCARD_BIT)
    ring.put(b"kept too")
    assert r.read() == [b"kept", b"kept too"]
    assert ring.cons == ring.prod


def test_a_record_that_wraps_past_the_end_reads_as_one_piece() -> None:
    ring = Ring()
    r = ring.reader()
    payloads = [bytes([65 + i % 26]) * (17 + 5 * i) for i in range(40)]  # about 18 laps
    got = []
    for p in payloads:
        ring.put(p)
        got += r.read()  # the ring holds 256 bytes: read as the kernel would need it
    assert got == payloads
    assert ring.cons == ring.prod > 8 * SIZE


def test_the_data_area_is_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        RingReader(bytearray(PAGE), bytearray(PAGE + 600), 300, PAGE)


def test_close_unmaps_the_ring() -> None:
    consumer, rest = mmap.mmap(-1, PAGE), mmap.mmap(-1, PAGE + 2 * SIZE)
    r = RingReader(consumer, rest, SIZE, PAGE, maps=(consumer, rest))
    r.read()
    r.close()  # its views released first: an mmap with views on it cannot be closed
    assert consumer.closed and rest.closed
