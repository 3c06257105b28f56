"""Identity of an HTTP/2 request, picked from its decoded headers the way the kernel picks one
from an HTTP/1 head (bpf/http.c), keyed like a kernel identity key.

Takes the configured sources and a request's header list; gives an Identity: the 64-bit key,
the value bytes as sent, the index of the winning source (-1: none) and the ValueFlag bits the
identity resolver interprets.  Keys are a keyed hash (BLAKE2b, a per-process secret unless one
is given) of (source index, flags, value) with the top bit set, so they never equal the kernel's
reserved keys (1..3) or H2_UNATTRIBUTED_KEY.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from tenantwatch.kernel.records import Side, ValueFlag

if TYPE_CHECKING:
    from tenantwatch.config import Source

# Longest value kept, as in the kernel (TW_VALUE_MAX): longer is TOO_LONG, a prefix is kept.
VALUE_MAX: Final = 128
# Longest bearer token of a jwt source: the kernel's TW_TOKEN_MAX (4096) counts "Authorization:"
# OWS, so a token of at most 4094 bytes passes (docs/limits.md).
TOKEN_MAX: Final = 4094
KEY_TOP_BIT: Final = 1 << 63
# Streams the HTTP/2 decoder counts without a tenant (broken connection): one fixed key, top bit
# clear so no hashed key can equal it, and none of the kernel's reserved keys (1..7 after its +4).
H2_UNATTRIBUTED_KEY: Final = 0x4832_0000_0000_0000  # "H2"

AUTHORITY: Final = b":authority"
HOST: Final = b"host"
AUTHORIZATION: Final = b"authorization"
# Control bytes the kernel flags BAD_BYTE in a value (tenantwatch/kernel/dfa.py C_CTL); CR and
# LF end a line in HTTP/1 and are forbidden in an HTTP/2 value, so they are bad here too.
_BAD_BYTE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Identities remembered by (source, duplicate, value): a client repeats its tenant and token on
# every request, and the keyed hash of a 600-byte token costs more than the rest of pick().
# At most this many (each value at most TOKEN_MAX bytes: 8 MiB at worst); then it starts over.
MAX_CACHED_IDENTITIES: Final = 2048


class Identity(NamedTuple):
    """Who a request is, as IdentityCounts carries it."""

    key: int
    raw_value: bytes | None  # None only for the unattributed entry
    source_index: int  # -1: no source matched
    flags: ValueFlag


class IdentityPicker:
    """Picks a request's identity: the first configured source, of those applying to the side,
    whose header is present wins."""

    def __init__(self, sources: Sequence[Source], secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(16)
        if not 0 < len(self._secret) <= 64:
            raise ValueError("secret must be 1..64 bytes")
        # per side: (source index, header names in preference order, longest value)
        self._by_side: dict[Side, tuple[tuple[int, tuple[bytes, ...], int], ...]] = {}
        names: set[bytes] = set()
        for side in Side:
            picks = []
            for i, s in enumerate(sources):
                if s.side is not None and s.side != side:
                    continue
                if s.kind == "host":
                    hnames: tuple[bytes, ...] = (AUTHORITY, HOST)
                elif s.kind == "jwt":
                    hnames = (AUTHORIZATION,)
                else:
                    hnames = (s.header.lower().encode("ascii"),)
                picks.append((i, hnames, TOKEN_MAX if s.kind == "jwt" else VALUE_MAX))
                names.update(hnames)
            self._by_side[side] = tuple(picks)
        self.names = frozenset(names)  # header names pick() looks at
        self._cache: dict[tuple[int, bool, bytes], Identity] = {}
        self._none = {side: self._identity(-1, ValueFlag.NO_IDENTITY, b"") for side in Side}

    def pick(self, found: dict[bytes, list[bytes]], side: Side) -> Identity:
        """``found``: the request's values of the headers in ``names`` (lowercase name -> values
        in order of appearance)."""
        for index, hnames, limit in self._by_side[side]:
            values = found.get(hnames[0])
            if values is None and len(hnames) > 1:
                values = found.get(hnames[1])
            if values is None:
                continue
            value = values[0]
            # :authority and a different Host are ambiguous too
            dup = len(values) > 1 or (len(hnames) > 1 and hnames[0] in found
                                      and hnames[1] in found and found[hnames[1]] != [value])
            ident = self._cache.get((index, dup, value))
            if ident is not None:
                return ident
            flags = ValueFlag.DUPLICATE if dup else ValueFlag.NONE
            if _BAD_BYTE.search(value):
                flags |= ValueFlag.BAD_BYTE
            kept = value
            if len(value) > limit:
                flags |= ValueFlag.TOO_LONG
                kept = value[:VALUE_MAX]
            ident = self._identity(index, flags, kept)
            if len(self._cache) >= MAX_CACHED_IDENTITIES:
                self._cache.clear()
            self._cache[(index, dup, value)] = ident
            return ident
        return self._none[side]

    def _identity(self, index: int, flags: ValueFlag, value: bytes) -> Identity:
        h = hashlib.blake2b(struct.pack("<hH", index, int(flags)) + value, digest_size=8,
                            key=self._secret)
        key = int.from_bytes(h.digest(), "little") | KEY_TOP_BIT
        return Identity(key, value, index, flags)
