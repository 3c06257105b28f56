"""HTTP/2 frame splitter for one direction of a connection whose DATA payloads were elided.

Takes the bytes of one direction in pieces cut anywhere (H2Event.data) and gives whole frames:
type, flags, stream id and, for the frames that carry a header block fragment (HEADERS,
PUSH_PROMISE, CONTINUATION), the fragment with padding and priority fields removed.  DATA frames
arrive as their 9-byte header only (the kernel drops the payload), so the splitter never waits
for DATA payload bytes.  Payloads of every other frame type are skipped as they stream by: only
a header-carrying frame is ever buffered whole, and only up to ``max_fragment`` bytes (a longer
one streams by too, its fragment given as None).
"""

from __future__ import annotations

from typing import Final

FRAME_HEADER_LEN: Final = 9

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

FLAG_END_STREAM: Final = 0x1
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8
FLAG_PRIORITY: Final = 0x20

_BLOCK_TYPES: Final = frozenset((HEADERS, PUSH_PROMISE, CONTINUATION))


class Frame:
    """One frame; ``fragment`` is the header block fragment (empty for other types).

    A plain class, not a NamedTuple: compiled (tenantwatch/h2/compiled.py), its construction is
    a C call, where a NamedTuple's runs its generated ``__new__`` in the interpreter; a
    request is about three frames."""

    __slots__ = ("flags", "fragment", "length", "stream_id", "type")

    def __init__(self, type: int, flags: int, stream_id: int, length: int,
                 fragment: bytes | None = b"") -> None:
        self.type = type
        self.flags = flags
        self.stream_id = stream_id
        self.length = length  # the length field, as sent (DATA: the elided payload's length)
        # the header block fragment (b"" for other types); None when it cannot be had: longer
        # than the splitter keeps (length > max_fragment) or its padding does not fit
        self.fragment = fragment

    def _fields(self) -> tuple[int, int, int, int, bytes | None]:
        return (self.type, self.flags, self.stream_id, self.length, self.fragment)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        t, f, sid, n, fragment = self._fields()
        return f"Frame(type={t}, flags={f:#x}, stream_id={sid}, length={n}, fragment={fragment!r})"


def header_fragment(ftype: int, flags: int, payload: bytes) -> bytes | None:
    """The header block fragment inside a HEADERS, PUSH_PROMISE or CONTINUATION payload, or
    None when the padding does not fit."""
    if ftype == CONTINUATION:
        return payload
    start, pad = 0, 0
    if flags & FLAG_PADDED:
        if not payload:
            return None
        start, pad = 1, payload[0]
    if ftype == HEADERS and flags & FLAG_PRIORITY:
        start += 5  # stream dependency (4) + weight (1)
    elif ftype == PUSH_PROMISE:
        start += 4  # promised stream id
    end = len(payload) - pad
    if end < start:
        return None
    return payload[start:end]


class FrameSplitter:
    """Incremental splitter for one direction (see the module docstring).

    ``keep_headers`` False: header block frames are skipped like any other (their fragments are
    not needed once the connection's HPACK state is gone), so nothing is buffered at all.
    """

    __slots__ = ("_buf", "_max", "_need", "_skip", "keep_headers")

    def __init__(self, max_fragment: int) -> None:
        self._buf = bytearray()  # the start of an incomplete frame
        self._need = FRAME_HEADER_LEN  # bytes _buf must hold before a frame can be cut
        self._skip = 0  # payload bytes of a frame already passed on, still to drop
        self._max = max_fragment
        self.keep_headers = True

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``, in order."""
        frames: list[Frame] = []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return frames
            data = data[self._skip:]
            self._skip = 0
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return frames
            data = bytes(buf)
            buf.clear()
        self._need = FRAME_HEADER_LEN
        pos, end = 0, len(data)
        while end - pos >= FRAME_HEADER_LEN:
            # byte by byte, not int.from_bytes of slices: compiled, an index is a load
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            ftype = data[pos + 3]
            flags = data[pos + 4]
            sid = (((data[pos + 5] & 0x7F) << 24) | (data[pos + 6] << 16)
                   | (data[pos + 7] << 8) | data[pos + 8])
            body = pos + FRAME_HEADER_LEN
            if ftype == DATA:  # payload elided by the kernel
                frames.append(Frame(DATA, flags, sid, length))
                pos = body
            elif ftype in _BLOCK_TYPES and self.keep_headers and length <= self._max:
                if end - body < length:
                    self._need = FRAME_HEADER_LEN + length
                    break
                payload = data[body:body + length]
                frames.append(Frame(ftype, flags, sid, length,
                                    header_fragment(ftype, flags, payload)))
                pos = body + length
            else:  # its payload is not needed (or too long to keep): let it stream by
                fragment = None if ftype in _BLOCK_TYPES and self.keep_headers else b""
                frames.append(Frame(ftype, flags, sid, length, fragment))
                if end - body >= length:
                    pos = body + length
                else:
                    self._skip = length - (end - body)
                    pos = end
        if pos < end:
            buf += data[pos:]
        return frames
