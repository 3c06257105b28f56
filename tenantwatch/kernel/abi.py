"""ctypes mirrors of bpf/include/tw_abi.h, and the name/value hashes the kernel computes.

tests/kernel/test_load.py checks these sizes against the compiled program's maps.
"""

from __future__ import annotations

import ctypes as ct
import re
from pathlib import Path

from tenantwatch.kernel.paths import bpf_dir_candidates, find_bpf_dir

_BPF = find_bpf_dir()
if _BPF is None:
    raise ImportError("bpf/include/tw_abi.h not found: set TENANTWATCH_BPF_DIR "
                      "(searched: " + ", ".join(str(c) for c in bpf_dir_candidates()) + ")")
ABI_HEADER = _BPF / "include" / "tw_abi.h"


def _defines(path: Path) -> dict:
    out = {}
    for m in re.finditer(r"^#define\s+(TW_\w+)\s+\(?(\d+)(?:u|ull)?\s*(?:<<\s*(\d+))?\)?",
                         path.read_text(), re.MULTILINE):
        value = int(m.group(2))
        if m.group(3):
            value <<= int(m.group(3))
        out[m.group(1)] = value
    return out


_D = _defines(ABI_HEADER)
VALUE_MAX: int = _D["TW_VALUE_MAX"]
TOKEN_MAX: int = _D["TW_TOKEN_MAX"]
MAX_SOURCES: int = _D["TW_MAX_SOURCES"]
NAME_MAX: int = _D["TW_NAME_MAX"]
MAX_BUCKETS: int = _D["TW_MAX_BUCKETS"]
NCLASS: int = _D["TW_NCLASS"]
MAX_COMMS: int = _D["TW_MAX_COMMS"]
COMM_LEN: int = _D["TW_COMM_LEN"]
KEY_COLLISION: int = _D["TW_KEY_COLLISION"]
KEY_OVERFLOW: int = _D["TW_KEY_OVERFLOW"]
KEY_UNATTRIBUTED: int = _D["TW_KEY_UNATTRIBUTED"]
RUNQ_BUCKETS: int = _D["TW_RUNQ_BUCKETS"]
CPU_H2: int = _D["TW_CPU_H2"]  # tw_cpu_key.side bit: an HTTP/2 stream's key
VALUE_UNKNOWN = 0xFFFFFFFF
SIDE_SERVER = 0
SIDE_CLIENT = 1

# tenantwatch_events_lost_total{reason}: index in tw_lost -> reason label.
LOST_REASONS: tuple = tuple(
    name[len("TW_LOST_"):].lower()
    for name, _ in sorted(
        ((k, v) for k, v in _D.items() if k.startswith("TW_LOST_") and k != "TW_LOST_MAX"),
        key=lambda kv: kv[1],
    )
)

FNV_PRIME1 = 0x100000001B3
MASK64 = (1 << 64) - 1


def hash_name(name: str, seed1: int) -> int:
    """The kernel's hash of a header name: seeded FNV-1a over the lowercased bytes."""
    h = seed1
    for b in name.lower().encode("ascii"):
        h = ((h ^ b) * FNV_PRIME1) & MASK64
    return h


class CpuKey(ct.Structure):
    _fields_ = [("key", ct.c_uint64), ("tgid", ct.c_uint32), ("cpu", ct.c_uint16),
                ("side", ct.c_uint8), ("gen", ct.c_uint8)]


class SlowEvent(ct.Structure):
    _fields_ = [("key", ct.c_uint64), ("start_ns", ct.c_uint64), ("latency_ns", ct.c_uint64),
                ("method", ct.c_uint64), ("tgid", ct.c_uint32), ("side", ct.c_uint32),
                ("status", ct.c_uint32), ("_pad", ct.c_uint32)]


class TokenEvent(ct.Structure):
    """A bearer token sent whole, once per distinct token (struct tw_token_event)."""

    _fields_ = [("key", ct.c_uint64), ("len", ct.c_uint32), ("side", ct.c_uint32),
                ("b", ct.c_uint8 * TOKEN_MAX)]


H2_CHUNK: int = _D["TW_H2_CHUNK"]
H2_F_CLOSED: int = _D["TW_H2_F_CLOSED"]
H2_F_MIDSTREAM: int = _D["TW_H2_F_MIDSTREAM"]


class H2EventHead(ct.Structure):
    """The fixed part of struct tw_h2_event (its bytes follow)."""

    _fields_ = [("conn", ct.c_uint64), ("ts_ns", ct.c_uint64), ("seq", ct.c_uint32),
                ("len", ct.c_uint32), ("side", ct.c_uint8), ("is_req", ct.c_uint8),
                ("flags", ct.c_uint8), ("_pad", ct.c_uint8 * 5)]


class AggKey(ct.Structure):
    _fields_ = [("key", ct.c_uint64), ("side", ct.c_uint32), ("_pad", ct.c_uint32)]


class AggVal(ct.Structure):
    _fields_ = [
        ("req_by_class", ct.c_uint64 * NCLASS),
        ("heads", ct.c_uint64),
        ("rx_bytes", ct.c_uint64),
        ("tx_bytes", ct.c_uint64),
        ("lat_buckets", ct.c_uint64 * (MAX_BUCKETS + 1)),
        ("lat_sum_ns", ct.c_uint64),
        ("conn_opened", ct.c_uint64),
        ("conn_closed", ct.c_uint64),
        ("conn_dur_ns", ct.c_uint64),
        ("hash2", ct.c_uint64),
        ("value_len", ct.c_uint32),
        ("source", ct.c_int32),
        ("flags", ct.c_uint32),
        ("lost", ct.c_uint32),
        ("value", ct.c_uint8 * VALUE_MAX),
    ]


class ConnHead(ct.Structure):
    """The prefix of a tw_conns value (struct tw_conn_head)."""

    _fields_ = [("cur_key", ct.c_uint64), ("conn_key", ct.c_uint64), ("side", ct.c_uint32),
                ("opened", ct.c_uint32), ("open_ns", ct.c_uint64)]


# The response-side tenant check: tw_iso[side * ISO_N + index], by outcome.
ISO_N: int = _D["TW_ISO_N"]
ISO_OUTCOMES: dict = {name[len("TW_ISO_"):].lower(): v for name, v in _D.items()
                      if name.startswith("TW_ISO_") and name != "TW_ISO_N"}
TARGET_BYTES: int = _D["TW_TARGET_BYTES"]


class BreachKey(ct.Structure):
    _fields_ = [("req_key", ct.c_uint64), ("served_h1", ct.c_uint64), ("side", ct.c_uint32),
                ("gen", ct.c_uint32)]


class BreachVal(ct.Structure):
    _fields_ = [("count", ct.c_uint64), ("served_len", ct.c_uint32), ("_pad", ct.c_uint32),
                ("served", ct.c_uint8 * VALUE_MAX)]


class BreachEvent(ct.Structure):
    _fields_ = [("ts_ns", ct.c_uint64), ("req_key", ct.c_uint64), ("served_h1", ct.c_uint64),
                ("method", ct.c_uint64), ("target", ct.c_uint64 * 4), ("tgid", ct.c_uint32),
                ("fd", ct.c_uint32), ("side", ct.c_uint32), ("status", ct.c_uint32),
                ("target_len", ct.c_uint32), ("served_len", ct.c_uint32),
                ("served", ct.c_uint8 * VALUE_MAX)]


NAME_IDENTITY: int = _D["TW_NAME_IDENTITY"]
SRC_SERVED: int = _D["TW_SRC_SERVED"]


def name_sources(slots: tuple[int, int], served: int) -> tuple[int, int, int, int]:
    """struct tw_name's source by [side * 2 + is_req]: the identity source on requests (slots,
    by side), SRC_SERVED on the responses of the sides in `served` (bits by side)."""
    out = []
    for side in (SIDE_SERVER, SIDE_CLIENT):
        out += [SRC_SERVED if (served >> side) & 1 else -1, slots[side]]
    return tuple(out)
NAME_CONTENT_LENGTH: int = _D["TW_NAME_CONTENT_LENGTH"]
NAME_TRANSFER_ENCODING: int = _D["TW_NAME_TRANSFER_ENCODING"]


class Name(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("len", ct.c_uint32), ("source", ct.c_int32 * 4)]


NPFX: int = MAX_SOURCES + 2
PFX_WORDS: int = _D["TW_PFX_WORDS"]
PFX_BYTES: int = 8 * PFX_WORDS


class Pfx(ct.Structure):
    """struct tw_pfx: the header names the parser acts on, as word prefixes."""

    _fields_ = [
        ("want", (ct.c_uint64 * PFX_WORDS) * NPFX),
        ("mask", (ct.c_uint64 * PFX_WORDS) * NPFX),
        ("fold", (ct.c_uint64 * PFX_WORDS) * NPFX),
        ("source", (ct.c_int32 * 4) * NPFX),
        ("kind", ct.c_uint32 * NPFX),
        ("len", ct.c_uint32 * NPFX),
        ("exact", ct.c_uint32 * NPFX),
        ("use", ct.c_uint32 * 4),
        ("filter", ct.c_uint64 * 4),
    ]


def name_bit(first: bytes) -> int:
    """TW_NAME_BIT: the filter bit of a header line whose first 4 bytes are `first`."""
    v = int.from_bytes(first[:4], "little") | 0x20202020
    return ((v * 0x9E3779B1) & 0xFFFFFFFF) >> 26


def name_filter(name: str) -> int:
    """The filter bits a header name sets: one, or all when name and ':' are under 4 bytes."""
    raw = name.lower().encode("ascii") + b":"
    return (1 << name_bit(raw)) if len(raw) >= 4 else (1 << 64) - 1


def pfx_words(name: str) -> tuple[list[int], list[int], list[int], bool]:
    """(want, mask, fold) words of a header name and its ':', and whether they hold it whole."""
    raw = name.lower().encode("ascii") + b":"
    exact = len(raw) <= PFX_BYTES
    raw = raw[:PFX_BYTES]
    want, mask, fold = [0] * PFX_WORDS, [0] * PFX_WORDS, [0] * PFX_WORDS
    for i, b in enumerate(raw):
        w, shift = divmod(i, 8)
        want[w] |= b << (8 * shift)
        mask[w] |= 0xFF << (8 * shift)
        if 0x61 <= b <= 0x7A:
            fold[w] |= 0x20 << (8 * shift)
    return want, mask, fold, exact


class Ctl(ct.Structure):
    _fields_ = [
        ("seed1", ct.c_uint64),
        ("seed2", ct.c_uint64),
        ("bounds_ns", ct.c_uint64 * MAX_BUCKETS),
        ("active", ct.c_uint32),
        ("nsources", ct.c_uint32),
        ("nbuckets", ct.c_uint32),
        ("ncomms", ct.c_uint32),
        ("name_first", ct.c_uint32 * (NAME_MAX + 1)),
        ("nrunq", ct.c_uint32),
        ("runq_bounds_ns", ct.c_uint64 * RUNQ_BUCKETS),
        ("slow_ns", ct.c_uint64),
        ("slow_per_cpu_per_sec", ct.c_uint32),
        ("token_sources", ct.c_uint32),
        ("token_per_cpu_per_sec", ct.c_uint32),
        ("check_sides", ct.c_uint32),
        ("check_sources", ct.c_uint32),
        ("breach_per_cpu_per_sec", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("comms", (ct.c_uint8 * COMM_LEN) * MAX_COMMS),
    ]
