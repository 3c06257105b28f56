"""IdentityPicker: which source wins, value flags, keys."""

from __future__ import annotations

from tenantwatch.config import JwtSettings, Source
from tenantwatch.h2.identity import H2_UNATTRIBUTED_KEY, KEY_TOP_BIT, IdentityPicker
from tenantwatch.kernel.records import Side, ValueFlag

F = ValueFlag
SOURCES = (
    Source("header", "x-tenant-context", Side.CLIENT, True),
    Source("header", "x-tenant-id", Side.SERVER, False),
    Source("jwt", "authorization", None, False, jwt=JwtSettings(claim="tenant_id")),
    Source("host", "host", None, False, host_template="{tenant}.api.example.com"),
)


def pick(found: dict[bytes, list[bytes]], side: Side = Side.SERVER, secret: bytes = b"k"):
    return IdentityPicker(SOURCES, secret).pick(found, side)


def test_first_configured_source_present_wins_per_side() -> None:
    found = {b"x-tenant-context": [b"ctx"], b"x-tenant-id": [b"t1"], b":authority": [b"a.b"]}
    assert pick(found, Side.SERVER)[1:] == (b"t1", 1, F.NONE)
    assert pick(found, Side.CLIENT)[1:] == (b"ctx", 0, F.NONE)
    assert pick({b"authorization": [b"Bearer x"], b":authority": [b"h"]})[1:] == (
        b"Bearer x", 2, F.NONE)
    assert pick({b":authority": [b"acme.api.example.com"]})[1:] == (
        b"acme.api.example.com", 3, F.NONE)


def test_host_falls_back_to_host_header() -> None:
    assert pick({b"host": [b"h1"]})[1:] == (b"h1", 3, F.NONE)
    assert pick({b":authority": [b"h1"], b"host": [b"h1"]})[1:] == (b"h1", 3, F.NONE)
    # :authority and a different Host: which one routes is ambiguous
    assert pick({b":authority": [b"h1"], b"host": [b"h2"]})[1:] == (b"h1", 3, F.DUPLICATE)


def test_flags() -> None:
    assert pick({b"x-tenant-id": [b"a", b"b"]})[1:] == (b"a", 1, F.DUPLICATE)
    for bad in (b"a\x00b", b"a\rb", b"a\nb", b"a\x7f", b"\x1b[31m"):
        assert pick({b"x-tenant-id": [bad]}).flags == F.BAD_BYTE
    assert pick({b"x-tenant-id": [b"a\tb"]}).flags == F.NONE  # HTAB is fine, as in the kernel
    assert pick({b"x-tenant-id": [b"x" * 128]}).flags == F.NONE
    long = pick({b"x-tenant-id": [b"x" * 129]})
    assert long.flags == F.TOO_LONG and long.raw_value == b"x" * 128
    assert pick({b"authorization": [b"t" * 4094]})[1:] == (b"t" * 4094, 2, F.NONE)
    assert pick({b"authorization": [b"t" * 4095]}).flags == F.TOO_LONG
    both = pick({b"x-tenant-id": [b"\x01" * 200, b"y"]})
    assert both.flags == F.DUPLICATE | F.BAD_BYTE | F.TOO_LONG


def test_no_source() -> None:
    ident = pick({}, Side.CLIENT)
    assert ident[1:] == (b"", -1, F.NO_IDENTITY)


def test_keys_are_keyed_hashes_with_the_top_bit() -> None:
    a = pick({b"x-tenant-id": [b"t1"]})
    assert a.key & KEY_TOP_BIT and a.key not in (1, 2, 3, H2_UNATTRIBUTED_KEY)
    assert pick({b"x-tenant-id": [b"t1"]}).key == a.key
    assert pick({b"x-tenant-id": [b"t1"]}, secret=b"other").key != a.key
    assert pick({b"x-tenant-id": [b"t2"]}).key != a.key
    assert pick({b"x-tenant-id": [b"t1", b"t1"]}).key != a.key  # flags are in the key
    assert pick({b"authorization": [b"t1"]}).key != a.key  # so is the source
    assert IdentityPicker(SOURCES).pick({b"x-tenant-id": [b"t1"]}, Side.SERVER).key != \
        IdentityPicker(SOURCES).pick({b"x-tenant-id": [b"t1"]}, Side.SERVER).key  # random secret
