"""A BPF ring buffer read straight from its memory map, without a callback per record.

bcc delivers a ring buffer's records through libbpf's ``ring_buffer__consume`` and a ctypes
callback into Python per record: about 4.5 µs a record here (the trampoline, a ctypes cast and
the attribute reads), which is most of what an HTTP/2 event costs before it is decoded.  The
loader reads its event rings here instead (tw_h2_events: thousands of records a second on an
HTTP/2 gateway; the slow-request, token and breach events): the records are sliced out of the
map's shared memory as bytes, under a µs each.

The layout is the kernel's (kernel/bpf/ringbuf.c, and libbpf's ringbuf.c reads it the same way):

- page 0, mapped read-write: the consumer position (u64), advanced by user space;
- page 1, read-only: the producer position (u64), advanced by the kernel;
- from page 2, read-only: the data area of ``max_entries`` bytes (a power of two), mapped twice
  in a row so that a record that wraps past the end reads as one piece.

A record is an 8-byte header (u32 length with the BUSY bit 31 and the DISCARD bit 30, u32 page
offset) and its bytes, padded to 8.  A BUSY record is reserved and not yet committed: reading
stops there and resumes at the next call.  A DISCARD record is skipped.

Memory ordering: the producer position is read before the records, and the consumer position is
written after them, each as one aligned word.  On x86-64 (total store order) plain loads and
stores give that order, so ``usable()`` allows this reader there only; elsewhere the loader keeps
bcc's callback path.
"""

from __future__ import annotations

import mmap
import platform

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8


def usable() -> bool:
    """True where plain loads and stores order the positions as the ring needs (x86-64)."""
    return platform.machine() in ("x86_64", "AMD64")


def map_field(map_fd: int, field: str) -> int:
    """One number of a BPF map as the kernel has it (/proc/self/fdinfo: ``max_entries``, a
    ring buffer's data size in bytes; ``value_size`` ...); OSError when it is not there."""
    with open(f"/proc/self/fdinfo/{map_fd}") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/fdinfo/{map_fd}")


class RingReader:
    """Takes the committed records of one BPF ring buffer.  ``consumer`` is the writable view
    of page 0, ``producer_and_data`` the read-only view from page 1 (producer page, then the
    data area twice); ``size`` the data area's size.  ``open(map_fd)`` maps a real ring;
    tests pass views of their own buffers laid out the same way."""

    def __init__(self, consumer, producer_and_data, size: int, page_size: int = mmap.PAGESIZE,
                 maps: tuple = ()) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"a ring buffer's size is a power of two, not {size}")
        # The positions and the record headers are read and written as whole aligned words
        # (a memoryview of format Q or I loads and stores with one instruction): the kernel
        # reads the consumer position while it is written, and writes the producer position
        # and the headers while they are read.  struct packs and unpacks a byte at a time: a
        # consumer position seen half-written lay ahead of the producer's, and the kernel
        # refused records as if the ring were full (h2_buffer_full, once every few MB).
        self._consumer = memoryview(consumer).cast("B").cast("Q")
        self._words = memoryview(producer_and_data).cast("B").cast("I")
        self._producer = self._words[:2].cast("B").cast("Q")
        self._data = producer_and_data
        self._data_at = page_size
        self._mask = size - 1
        self._maps = maps  # the mmap objects behind the views, closed by close()

    @classmethod
    def open(cls, map_fd: int) -> RingReader:
        size = map_field(map_fd, "max_entries")
        page = mmap.PAGESIZE
        consumer = mmap.mmap(map_fd, page, flags=mmap.MAP_SHARED,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            rest = mmap.mmap(map_fd, page + 2 * size, flags=mmap.MAP_SHARED,
                             prot=mmap.PROT_READ, offset=page)
        except BaseException:
            consumer.close()
            raise
        return cls(consumer, rest, size, page, maps=(consumer, rest))

    @property
    def consumed(self) -> int:
        """Bytes of records (headers and padding included) consumed since the ring was made:
        past its size, reading has wrapped around the data area."""
        return self._consumer[0]

    def read(self) -> list[bytes]:
        """The committed records from the consumer position on, each as its own bytes; the
        consumer position moves past them (and past discarded ones), which frees their space
        for the kernel."""
        cons = self._consumer[0]
        prod = self._producer[0]
        data, words, at, mask = self._data, self._words, self._data_at, self._mask
        out: list[bytes] = []
        while cons < prod:
            off = at + (cons & mask)  # 8-byte aligned: records are padded to 8
            n = words[off >> 2]
            if n & BUSY_BIT:
                break  # reserved, not committed yet: the next read takes it
            length = n & ~(BUSY_BIT | DISCARD_BIT)
            if not n & DISCARD_BIT:
                out.append(data[off + HEADER_SIZE:off + HEADER_SIZE + length])
            cons += (length + HEADER_SIZE + 7) & ~7
        self._consumer[0] = cons
        return out

    def close(self) -> None:
        for view in (self._producer, self._words, self._consumer):
            view.release()
        for m in self._maps:
            m.close()
        self._maps = ()
