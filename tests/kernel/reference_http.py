"""A reference HTTP/1.x request-head parser in Python, with the kernel parser's rules.

tests/kernel/test_differential.py sends generated traffic through the kernel parser on a real
socket and compares what the kernel counted with what this parser reads from the same bytes.
It is written from the rules (docs/pipeline.md, "What the parser takes from a head"), not from
bpf/http.c, and shares no code with it.

The rules, for one configured identity header on the side being parsed:

- a message starts after any CR/LF; the request line is METHOD SP TARGET SP HTTP/1.x;
- a header line is NAME ':' VALUE; the name is compared case-insensitively; a line that
  starts with SP or HTAB continues the previous one (obs-fold): after an identity line it
  flags the identity FOLDED;
- the value is what follows the ':' and any SP/HTAB, up to the LF; one CR right before the LF
  is not part of it; any other CR is dropped and flags it BAD_BYTE, as does any other control
  byte (kept); the first VALUE_MAX bytes are kept; one more flags it TOO_LONG, and the
  rest of the line is not looked at;
- the first identity line wins; another one flags it DUPLICATE;
- a head without the header counts under the empty value, flagged NO_IDENTITY;
- Content-Length gives the body's length; Transfer-Encoding whose last coding is "chunked"
  gives a chunked body (chunk-size [; ext] CRLF, data, CRLF ..., 0 CRLF, trailers, CRLF).
"""

from __future__ import annotations

from dataclasses import dataclass

VALUE_MAX = 128
DUPLICATE, FOLDED, BAD_BYTE, TOO_LONG, NO_IDENTITY = 1, 2, 4, 8, 64


@dataclass(frozen=True)
class Request:
    value: bytes
    flags: int


def _value(raw: bytes) -> tuple[bytes, int]:
    flags = 0
    raw = raw.lstrip(b" \t")
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    out = bytearray()
    cr = False
    for b in raw:
        if b == 0x0D:
            cr = True
            continue
        if cr:
            flags |= BAD_BYTE
            cr = False
        if (b < 0x20 and b != 0x09) or b == 0x7F:
            flags |= BAD_BYTE
        if len(out) == VALUE_MAX:
            flags |= TOO_LONG  # the value ends here: nothing after it is looked at
            break
        out.append(b)
    if cr:
        flags |= BAD_BYTE
    return bytes(out), flags


def parse_requests(stream: bytes, identity_header: str) -> list[Request]:
    """Every request head in a stream of requests (with bodies), in order."""
    want = identity_header.lower().encode()
    out: list[Request] = []
    i = 0
    n = len(stream)
    while i < n:
        while i < n and stream[i] in b"\r\n":
            i += 1
        if i >= n:
            break
        end = stream.index(b"\n", i)  # the request line
        i = end + 1
        best: tuple[bytes, int] | None = None
        prev_identity = False
        clen = 0
        chunked = False
        while True:
            end = stream.index(b"\n", i)
            line = stream[i:end]
            i = end + 1
            if line in (b"", b"\r"):
                break
            if line[:1] in (b" ", b"\t"):
                if prev_identity and best is not None:
                    best = (best[0], best[1] | FOLDED)
                continue
            name, _, raw = line.partition(b":")
            lname = name.lower()
            prev_identity = lname == want
            if lname == want:
                if best is None:
                    best = _value(raw)
                else:
                    best = (best[0], best[1] | DUPLICATE)
            elif lname == b"content-length":
                clen = int(raw.strip())
            elif lname == b"transfer-encoding":
                chunked = raw.strip().lower().endswith(b"chunked")
        out.append(Request(*best) if best is not None else Request(b"", NO_IDENTITY))
        if chunked:
            while True:
                end = stream.index(b"\n", i)
                size = int(stream[i:end].split(b";")[0].strip(), 16)
                i = end + 1
                if size == 0:
                    while True:  # trailers up to the blank line
                        end = stream.index(b"\n", i)
                        line = stream[i:end]
                        i = end + 1
                        if line in (b"", b"\r"):
                            break
                    break
                i += size + 2  # data and its CRLF
        else:
            i += clen
    return out
