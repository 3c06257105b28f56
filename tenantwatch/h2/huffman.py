"""HPACK's Huffman code (RFC 7541 Appendix B), decoded a byte at a time.

A state is an internal node of the code's tree (256 of them; the root is 0).  For each state and
input byte the tables hold where the walk of those 8 bits ends and the symbols it emitted, or
-1 when the bits reach EOS (a decoding error).  A string ends well only in an accepting state:
the root, or a node reached from the root by at most 7 one-bits (the padding: the most
significant bits of EOS).  One table lookup per input byte, half the work of the nibble table
the `hpack` package walks; the table is built once, from the package's code list, on first use
(about 30 ms).

`decode()` keeps up to MAX_ENTRIES strings of at most MAX_CODED_BYTES in a cache: HPACK sends
a value coded once per connection, so the same strings (a client's user-agent, a tenant's bearer
token) come again on every new connection.  A plain dict, emptied when full: functools'
lru_cache keys a bytes argument by a tuple built and hashed at each call, which cost more than
the decoding it saved for short strings.  A client churning values empties it often; that is
bounded like any other decoding work (the tracker's budget).
"""

from __future__ import annotations

from typing import Final

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

EOS: Final = 256
MAX_ENTRIES: Final = 4096
MAX_CODED_BYTES: Final = 4096


class HuffmanError(ValueError):
    """Not a valid HPACK Huffman string (EOS inside, or padding longer than 7 bits or not ones)."""


# per (state << 8 | input byte): the state the walk ends in (-1: it reached EOS, an error),
# and the symbols it emitted; two flat lists, so that a step is two list loads (compiled, no
# tuple to unpack)
_next: list[int] = []
_emit: list[bytes] = []
_accepting: list[bool] = []


def _tree() -> list[list[int]]:
    """children[node] = [child for bit 0, child for bit 1]; a leaf is -(symbol + 1)."""
    children: list[list[int]] = [[0, 0]]
    for sym in range(EOS + 1):
        code, length = REQUEST_CODES[sym], REQUEST_CODES_LENGTH[sym]
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = -(sym + 1)
            else:
                if children[node][bit] == 0:
                    children.append([0, 0])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    return children


def _build() -> None:
    global _next, _emit, _accepting
    children = _tree()
    n = len(children)
    # per (state, nibble): (next state, emitted bytes) or None (EOS)
    nibble: list = [None] * (n * 16)
    for s in range(n):
        for v in range(16):
            node, out, ok = s, bytearray(), True
            for i in (3, 2, 1, 0):
                c = children[node][(v >> i) & 1]
                if c < 0:
                    if -c - 1 == EOS:
                        ok = False
                        break
                    out.append(-c - 1)
                    node = 0
                else:
                    node = c
            nibble[s * 16 + v] = (node, bytes(out)) if ok else None
    nxt = [-1] * (n * 256)
    emit = [b""] * (n * 256)
    for s in range(n):
        for b in range(256):
            hi = nibble[s * 16 + (b >> 4)]
            if hi is None:
                continue
            lo = nibble[hi[0] * 16 + (b & 15)]
            if lo is not None:
                nxt[(s << 8) | b] = lo[0]
                emit[(s << 8) | b] = hi[1] + lo[1]
    accepting = [False] * n
    node, depth = 0, 0
    accepting[0] = True
    while depth < 7:  # the padding: up to 7 one-bits from the root
        node = children[node][1]
        if node < 0:
            break
        depth += 1
        accepting[node] = True
    _accepting = accepting
    _emit = emit
    _next = nxt


def decode_uncached(data: bytes) -> bytes:
    """The decoded string; raises HuffmanError."""
    if not _next:
        _build()
    nxt, emit = _next, _emit
    state = 0
    out: list[bytes] = []
    for i in range(len(data)):
        e = (state << 8) | data[i]
        state = nxt[e]
        if state < 0:
            raise HuffmanError("EOS inside a Huffman string")
        sym = emit[e]
        if sym:
            out.append(sym)
    if not _accepting[state]:
        raise HuffmanError("bad padding at the end of a Huffman string")
    return b"".join(out)


_cache: dict[bytes, bytes] = {}


def decode(data: bytes) -> bytes:
    """decode_uncached() behind the cache of recent strings (errors are not cached)."""
    plain = _cache.get(data)
    if plain is not None:
        return plain
    plain = decode_uncached(data)
    if len(data) <= MAX_CODED_BYTES:
        if len(_cache) >= MAX_ENTRIES:
            _cache.clear()
        _cache[data] = plain
    return plain
