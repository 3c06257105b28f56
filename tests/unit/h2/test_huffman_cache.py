"""The Huffman cache in front of hpack's decoder gives the same bytes, bounded."""

from __future__ import annotations

import os

from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman

from tenantwatch.h2 import huffman_cache

ENCODER = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def test_cached_decode_equals_the_original_for_bytes_and_memoryviews() -> None:
    calls = []

    def counting(data: bytes) -> bytes:
        calls.append(len(data))
        return decode_huffman(data)

    dec = huffman_cache.cached(counting)
    for _ in range(50):
        plain = os.urandom(40).hex().encode()
        coded = ENCODER.encode(plain)
        assert dec(coded) == plain
        assert dec(memoryview(b"xx" + coded)[2:]) == plain  # hpack passes slices
    assert len(calls) == 50  # the second decode of each came from the cache


def test_long_strings_bypass_the_cache() -> None:
    calls = []

    def counting(data: bytes) -> bytes:
        calls.append(len(data))
        return decode_huffman(data)

    dec = huffman_cache.cached(counting)
    plain = b"a" * (huffman_cache.MAX_CODED_BYTES * 2)
    coded = ENCODER.encode(plain)
    assert len(coded) > huffman_cache.MAX_CODED_BYTES
    assert dec(coded) == plain and dec(coded) == plain
    assert len(calls) == 2
    assert dec.cache_info().currsize == 0
