"""An HPACK decoder (RFC 7541) that keeps the dynamic table exact and gives only the fields the
caller names.

tenantwatch needs, per header block, a handful of fields (the identity headers, `:status`,
`content-type`, `grpc-status`), but HPACK's dynamic table makes every block depend on all
earlier ones of its direction, so every block must be walked.  This walks it without building
what nobody reads:

- an indexed field costs one table lookup, and a tuple only when its name is wanted;
- a literal that is not added to the table (without indexing, never indexed) whose name is not
  wanted is skipped by its length: its value is never Huffman-decoded;
- a literal added to the table is decoded (its decoded length sets the table's size, which
  decides what the encoder and this decoder evict), through huffman.decode's cache.

It accepts and refuses what the `hpack` package's Decoder does (the differential tests compare
them on generated and recorded streams), with two documented differences: a value this decoder
skips is not checked for a valid Huffman code, and the header-list bound counts a skipped
Huffman value at its longest possible decoded length (8/5 of its coded bytes).
"""

from __future__ import annotations

from typing import Final

from hpack.table import HeaderTable

from tenantwatch.h2.huffman import HuffmanError
from tenantwatch.h2.huffman import decode as huffman

STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
NSTATIC: Final = len(STATIC)
ENTRY_OVERHEAD: Final = 32  # RFC 7541 4.1
_Entry = tuple[bytes, bytes, int]  # name, value, RFC 7541 size
# Shared by every decoder until its first insert: never written (a decoder copies it first).
_STATIC_ENTRIES: Final[list[_Entry]] = [(n, v, len(n) + len(v) + ENTRY_OVERHEAD) for n, v in STATIC]
DEFAULT_TABLE_SIZE: Final = 4096  # SETTINGS_HEADER_TABLE_SIZE's initial value
MAX_INT_BYTES: Final = 5  # as hpack's VARINT_MAX_LENGTH: a prefix and continuation bytes


class HpackError(ValueError):
    """The block cannot be decoded; the direction's HPACK state is lost with it."""


def _integer(data: bytes, i: int, mask: int) -> tuple[int, int]:
    """(value, next index) of an integer whose prefix is data[i] & mask (RFC 7541 5.1)."""
    n = data[i] & mask
    i += 1
    if n < mask:
        return n, i
    shift = 0
    start = i - 1
    while True:
        if i >= len(data):
            raise HpackError("truncated integer")
        b = data[i]
        i += 1
        n += (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7
        if i - start > MAX_INT_BYTES:
            raise HpackError("integer too long")


class LazyDecoder:
    """One direction's HPACK decoding state.

    The static and the dynamic table are one sequence, `_table`: the 61 static entries, then the
    dynamic ones newest first, so that HPACK index i is `_table[i - 1]` for both (an insert is
    a C memmove of at most a few hundred pointers).  Each entry is (name, value, RFC size).
    Until its first insert a decoder shares the static list (an idle connection's two decoders
    cost no table of their own)."""

    __slots__ = ("_size", "_table", "max_allowed_table_size", "max_header_list_size",
                 "table_size")

    def __init__(self, max_header_list_size: int = 65536,
                 max_allowed_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        # the shared static list until the first insert, then a list of its own; typed,
        # so that the compiled decoder unpacks an entry without generic calls
        self._table: list[_Entry] = _STATIC_ENTRIES
        self._size = 0  # of the dynamic entries
        self.table_size = DEFAULT_TABLE_SIZE  # the encoder's current maximum
        self.max_allowed_table_size = max_allowed_table_size
        self.max_header_list_size = max_header_list_size

    @property
    def entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest first (for tests)."""
        return [(n, v) for n, v, _ in self._table[NSTATIC:]]

    def decode(self, data: bytes, wanted: frozenset[bytes] | set[bytes]
               ) -> list[tuple[bytes, bytes]]:
        """The block's fields whose name is in `wanted`, in order; raises HpackError."""
        out: list[tuple[bytes, bytes]] = []
        table = self._table
        inflated = 0
        fields = 0
        i, end = 0, len(data)
        limit = self.max_header_list_size
        while i < end:
            b = data[i]
            if b & 0x80:  # indexed field
                if b != 0xFF:
                    index = b & 0x7F
                    i += 1
                else:
                    index, i = _integer(data, i, 0x7F)
                if not 0 < index <= len(table):
                    raise HpackError(f"invalid table index {index}")
                name, value, size = table[index - 1]
                fields += 1
                inflated += size
                if inflated > limit:
                    raise HpackError("header list too large")
                if name in wanted:
                    out.append((name, value))
                continue
            if b & 0x40:
                mask, index_it = 0x3F, True
            elif b & 0x20:  # dynamic table size update, only before the block's first field
                if fields:
                    raise HpackError("table size update after a field")
                size, i = _integer(data, i, 0x1F)
                if size > self.max_allowed_table_size:
                    raise HpackError("table size update over the allowed maximum")
                self._resize(size)
                table = self._table  # _resize may put the shared static list back
                continue
            else:
                mask, index_it = 0x0F, False
            if b & mask:
                if b & mask != mask:
                    index = b & mask
                    i += 1
                else:
                    index, i = _integer(data, i, mask)
                if not 0 < index <= len(table):
                    raise HpackError(f"invalid table index {index}")
                name = table[index - 1][0]
            else:
                name, i = _string(data, i + 1)
            # the value
            if i >= end:
                raise HpackError("truncated block")
            b = data[i]
            if b & 0x7F != 0x7F:
                length = b & 0x7F
                i += 1
            else:
                length, i = _integer(data, i, 0x7F)
            j = i + length
            if j > end:
                raise HpackError("truncated block")
            if index_it or name in wanted:
                if b & 0x80:
                    try:
                        value = huffman(data[i:j])
                    except HuffmanError as e:
                        raise HpackError(str(e)) from None
                else:
                    value = data[i:j]
                size = len(name) + len(value) + ENTRY_OVERHEAD
                if name in wanted:
                    out.append((name, value))
                if index_it:
                    self._add(name, value, size)
                    table = self._table  # _add may replace it (first insert, or cleared)
            else:  # neither kept nor wanted: skipped, at its longest possible decoded length
                size = len(name) + (length * 8 // 5 if b & 0x80 else length) + ENTRY_OVERHEAD
            i = j
            fields += 1
            inflated += size
            if inflated > limit:
                raise HpackError("header list too large")
        if self.table_size > self.max_allowed_table_size:
            raise HpackError("the encoder did not shrink the table to the allowed maximum")
        return out

    # --- internals ---------------------------------------------------------------------------

    def _add(self, name: bytes, value: bytes, size: int) -> None:
        if size > self.table_size:
            self._table = _STATIC_ENTRIES
            self._size = 0
            return
        if self._table is _STATIC_ENTRIES:  # the shared one: never written
            self._table = list(self._table)
        self._table.insert(NSTATIC, (name, value, size))
        self._size += size
        self._shrink()

    def _resize(self, size: int) -> None:
        old = self.table_size
        self.table_size = size
        if size <= 0:
            self._table = _STATIC_ENTRIES
            self._size = 0
        elif size < old:
            self._shrink()

    def _shrink(self) -> None:
        table, limit = self._table, self.table_size
        while self._size > limit:
            self._size -= table.pop()[2]


def _string(data: bytes, i: int) -> tuple[bytes, int]:
    """(the string at data[i:], its end): a literal name."""
    if i >= len(data):
        raise HpackError("truncated block")
    h = data[i] & 0x80
    length, i = _integer(data, i, 0x7F)
    j = i + length
    if j > len(data):
        raise HpackError("truncated block")
    raw = data[i:j]
    if not h:
        return raw, j
    try:
        return huffman(raw), j
    except HuffmanError as e:
        raise HpackError(str(e)) from None
