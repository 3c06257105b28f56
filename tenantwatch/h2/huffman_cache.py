"""A bounded cache in front of hpack's Huffman decoder (pure Python, most of the decoding cost).

HPACK sends a header value as a Huffman-coded literal the first time on each connection (later
it is an index into that connection's table), so the same strings -- a client's user-agent, a
tenant's bearer token -- are decoded again on every new connection.  Caching the decoded bytes
by the coded bytes turns those into a dict lookup.  Bounds: 4096 entries of at most 4 KiB coded
(at most ~28 MiB with the decoded copies); longer strings are decoded every time.

`install()` replaces the function the hpack decoder calls, once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import hpack.hpack

MAX_ENTRIES = 4096
MAX_CODED_BYTES = 4096

_installed = False


def cached(decode: Callable[[bytes], bytes]) -> Callable[[bytes | memoryview], bytes]:
    """decode, with an LRU cache keyed by the coded bytes (hpack passes memoryview slices)."""
    lookup = lru_cache(maxsize=MAX_ENTRIES)(decode)

    def decode_huffman(data: bytes | memoryview) -> bytes:
        if len(data) > MAX_CODED_BYTES:
            return decode(data)
        return lookup(bytes(data))

    decode_huffman.cache_info = lookup.cache_info  # type: ignore[attr-defined]
    return decode_huffman


def install() -> None:
    """Put the cache in front of hpack's decoder (idempotent)."""
    global _installed
    if not _installed:
        hpack.hpack.decode_huffman = cached(hpack.hpack.decode_huffman)
        _installed = True
