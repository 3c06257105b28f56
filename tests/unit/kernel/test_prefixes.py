"""struct tw_pfx: the word compare bpf/http.c does at each header line's start, done here on
the words the loader writes (tw_line_candidate, in Python)."""

from __future__ import annotations

from tenantwatch.kernel import abi
from tenantwatch.kernel.loader import prefixes

NAMES = [("content-length", abi.NAME_CONTENT_LENGTH, (-1, -1)),
         ("transfer-encoding", abi.NAME_TRANSFER_ENCODING, (-1, -1)),
         ("x-tenant-context", abi.NAME_IDENTITY, (-1, 0)),
         ("x-tenant-id", abi.NAME_IDENTITY, (1, -1)),
         ("x-a-header-name-of-thirty-bytes", abi.NAME_IDENTITY, (2, -1))]
NONE, SLOW = 0xFF, 0xFE


def candidate(x: abi.Pfx, line: bytes) -> int:
    """bpf/http.c tw_line_candidate: the first matching candidate (NONE, SLOW)."""
    raw = (line + b"\0" * 24)[:24]
    words = [int.from_bytes(raw[i:i + 8], "little") for i in (0, 8, 16)]
    for i in range(abi.NPFX):
        if all(((words[w] | x.fold[i][w]) & x.mask[i][w]) == x.want[i][w] for w in range(3)):
            return i if x.exact[i] else SLOW
    return NONE


def test_names_match_exactly_and_case_insensitively():
    x = prefixes(NAMES)
    assert candidate(x, b"Content-Length: 12\r\n") == 0
    assert candidate(x, b"TRANSFER-ENCODING: chunked\r\n") == 1
    assert candidate(x, b"x-Tenant-Context: acme\r\n") == 2
    assert candidate(x, b"X-Tenant-ID:acme\r\n") == 3


def test_other_lines_match_nothing():
    """Unused candidates must not match: all-zero words would match any line."""
    x = prefixes(NAMES)
    for line in (b"Cookie: a=b; c=d\r\n", b"X-Tenant-IDs: a\r\n", b"X-Tenant-ID : a\r\n",
                 b"Content-Type: text/plain\r\n", b"X-Tenant-Contextual: a\r\n",
                 b"x\rtenant-id: a\r\n", b"Host: example.com\r\n", b"A: b\r\n"):
        assert candidate(x, line) == NONE, line


def test_a_name_longer_than_the_words_goes_byte_by_byte():
    x = prefixes(NAMES)
    assert candidate(x, b"X-A-Header-Name-Of-Thirty-Bytes: v\r\n") == SLOW
    assert not x.exact[4]


def test_where_each_name_applies():
    x = prefixes(NAMES)
    server_req, server_resp = x.use[abi.SIDE_SERVER * 2 + 1], x.use[abi.SIDE_SERVER * 2]
    client_req = x.use[abi.SIDE_CLIENT * 2 + 1]
    assert server_resp == 0b11  # framing only: identities are read from requests
    assert server_req == 0b11011  # x-tenant-id and the long name, not x-tenant-context
    assert client_req == 0b00111


def passes_filter(x: abi.Pfx, ui: int, line: bytes) -> bool:
    """bpf/parse.c: (filter[ui] >> TW_NAME_BIT(first word)) & 1, before any candidate."""
    return bool((x.filter[ui] >> abi.name_bit(line[:4])) & 1)


def test_the_filter_never_drops_a_name_that_applies():
    x = prefixes(NAMES)
    for ui in range(4):
        for i, (name, _, _) in enumerate(NAMES):
            if not (x.use[ui] >> i) & 1:
                continue
            for spelled in (name, name.upper(), name.title(), name.swapcase()):
                assert passes_filter(x, ui, spelled.encode() + b": v\r\n"), (ui, spelled)


def test_the_filter_drops_most_browser_lines():
    x = prefixes(NAMES)
    ui = abi.SIDE_SERVER * 2 + 1
    lines = [b"Host: a", b"User-Agent: b", b"Accept: c", b"Accept-Language: d",
             b"Accept-Encoding: e", b"Referer: f", b"Cookie: g", b"X-Request-ID: h",
             b"Connection: keep-alive", b"Cache-Control: no-cache", b"Origin: i",
             b"Sec-Fetch-Mode: cors", b"Authorization: Bearer j"]
    passed = [line for line in lines if passes_filter(x, ui, line)]
    assert len(passed) <= 2, passed


def test_a_name_under_four_bytes_sets_every_bit():
    x = prefixes(NAMES + [("ab", abi.NAME_IDENTITY, (3, -1))])
    assert x.filter[abi.SIDE_SERVER * 2 + 1] == (1 << 64) - 1
    assert x.filter[abi.SIDE_SERVER * 2] != (1 << 64) - 1  # responses: framing names only
