"""RFC 6455 pieces the tests and the harness's Backend share: the handshake's accept key, a frame,
and (un)masking. Both ends are here: `RecordingBackend` (harness/backend.py) echoes frames with
them, tests/e2e/test_websocket.py is a client with them."""

from __future__ import annotations

import base64
import hashlib
import struct

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
WS_MAX_FRAME = 16 * 1024 * 1024


def websocket_accept(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(sha1(key + GUID))."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode("latin-1")).digest()).decode()


def websocket_frame(opcode: int, payload: bytes, mask: bytes | None = None,
                    fin: bool = True) -> bytes:
    """One RFC 6455 frame; `mask` (4 bytes) masks the payload, as a client must."""
    head = bytearray([(0x80 if fin else 0) | (opcode & 0x0F)])
    mbit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + websocket_mask(payload, mask)


def websocket_mask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte masking key (masking and unmasking are the same)."""
    if not payload:
        return b""
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
        len(payload), "big")
