"""Property tests (Hypothesis) for the user-space parsers of attacker-controlled input: the
identity resolver, config loading, the HTTP/2 frame splitter, JWT verification and the ELF
reader.

Every run is seeded (``derandomize``: the same examples each run, so a failure reproduces) and
every generated input has a time bound (``deadline``).  What each one proves:

- the resolver never raises, never gives a label outside the pattern except the reserved ones,
  never gives an unverified or malformed value a tenant, and is deterministic;
- config loading gives a Config or a ConfigError, nothing else;
- the frame splitter gives the same frames however a byte stream is cut into reads, and never
  buffers more than one frame;
- the JWT verifier refuses every token it cannot verify with a named reason, never raises;
- the ELF reader accepts a file or raises ElfError, nothing else, within its bounds.
"""

from __future__ import annotations

import re
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantwatch.config import DEFAULT_PATTERN, JwtSettings, Source, Tenancy, parse_config
from tenantwatch.errors import ConfigError
from tenantwatch.h2.frames import FRAME_HEADER_LEN, FrameSplitter
from tenantwatch.identity import INVALID, OTHER, UNATTRIBUTED, IdentityResolver, Trust
from tenantwatch.kernel.elf import ElfError, ElfImage
from tenantwatch.kernel.records import Side, ValueFlag
from tests.unit.identity.jwt_helpers import bearer, verifier

PROPERTY = settings(derandomize=True, database=None, deadline=500, max_examples=300,
                    suppress_health_check=[HealthCheck.too_slow])
RESERVED = {INVALID, OTHER, UNATTRIBUTED, "common"}
SOURCES = (
    Source("header", "x-tenant-id", Side.SERVER, False),
    Source("header", "x-tenant-context", Side.CLIENT, True),
    Source("host", "host", None, False, host_template="{tenant}.api.example.com"),
    Source("jwt", "authorization", None, False, jwt=JwtSettings(claim="tenant_id")),
)
FLAGS = st.sampled_from(list(ValueFlag)).map(ValueFlag) | st.integers(0, 0x1FF).map(ValueFlag)


def resolver() -> IdentityResolver:
    return IdentityResolver(Tenancy(sources=SOURCES, pattern=DEFAULT_PATTERN, tenants=(),
                                    max_tenants=50, default="common"), cache_size=256)


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.none() | st.binary(max_size=600),
                          st.integers(-1, 3), FLAGS, st.sampled_from(list(Side))),
                max_size=40))
def test_the_resolver_never_raises_and_labels_stay_in_bounds(calls) -> None:
    r, again = resolver(), resolver()
    pattern = re.compile(DEFAULT_PATTERN)
    for key, raw, source, flags, side in calls:
        got = r.resolve(key, raw, source, flags, side)
        assert got.tenant in RESERVED or pattern.fullmatch(got.tenant), got
        assert len(got.tenant) <= 64
        if flags & (ValueFlag.BAD_BYTE | ValueFlag.TOO_LONG | ValueFlag.COLLISION):
            assert got.tenant in RESERVED, (flags, got)
        if got.trust is Trust.TRUSTED:
            assert source == 1, got  # only the trusted header, never a claim
        assert again.resolve(key, raw, source, flags, side) == got  # deterministic
    assert len(r.tenants()) <= 50


CONFIG_LEAVES = st.none() | st.booleans() | st.integers(-2**40, 2**40) | \
    st.floats(allow_nan=True) | st.text(max_size=40)
CONFIG_KEYS = st.sampled_from(["listen", "targets", "tenancy", "enforcement", "capture",
                               "detection", "otel", "log_format", "log_level", "sources",
                               "process", "header", "side", "trusted", "mode", "cgroup",
                               "quotas", "jwt", "host", "pattern", "max_tenants", "x"])
CONFIG_DOCS = st.recursive(
    CONFIG_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(CONFIG_KEYS, inner, max_size=5),
    max_leaves=25)


@PROPERTY
@given(CONFIG_DOCS)
def test_config_loading_gives_a_config_or_a_config_error(doc) -> None:
    try:
        parse_config(doc, env={})
    except ConfigError:
        pass


@PROPERTY
@given(st.dictionaries(st.sampled_from(["listen", "tenancy", "enforcement", "capture"]),
                       CONFIG_DOCS, max_size=3))
def test_config_sections_of_any_shape_give_a_config_or_a_config_error(sections) -> None:
    try:
        parse_config({"targets": [{"process": "nginx"}], **sections}, env={})
    except ConfigError:
        pass


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + \
        (sid & 0x7FFFFFFF).to_bytes(4, "big") + payload


FRAMES = st.lists(st.tuples(st.sampled_from([1, 3, 4, 6, 8, 9]), st.integers(0, 255),
                            st.integers(0, 2**31 - 1), st.binary(max_size=300)), max_size=12)


@PROPERTY
@given(FRAMES, st.lists(st.integers(1, 200), max_size=30), st.binary(max_size=30))
def test_the_frame_splitter_does_not_depend_on_where_reads_are_cut(frames, cuts, tail) -> None:
    stream = b"".join(frame(*f) for f in frames) + tail
    whole = FrameSplitter(1024).feed(stream)
    split, s, pos = [], FrameSplitter(1024), 0
    for n in cuts:
        split += s.feed(stream[pos:pos + n])
        pos += n
        assert s.buffered <= FRAME_HEADER_LEN + 1024
    split += s.feed(stream[pos:])
    assert split == whole


TOKEN_PART = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=",
                     max_size=120)


@PROPERTY
@given(st.one_of(
    st.binary(max_size=400),
    st.tuples(TOKEN_PART, TOKEN_PART, TOKEN_PART).map(lambda t: bearer(".".join(t))),
    st.text(max_size=200).map(lambda t: b"Bearer " + t.encode("utf-8", "surrogatepass")),
))
def test_the_jwt_verifier_refuses_what_it_cannot_verify_with_a_reason(authorization) -> None:
    result = verifier().verify(authorization)
    assert not result.ok
    assert isinstance(result.reason, str) and result.reason


@PROPERTY
@given(st.binary(max_size=4096))
def test_the_elf_reader_accepts_a_file_or_raises_elf_error(data) -> None:
    try:
        ElfImage(data)
    except ElfError:
        pass


@PROPERTY
@given(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1), st.integers(0, 2**64 - 1),
       st.integers(0, 2**64 - 1), st.binary(min_size=64, max_size=2048))
def test_the_elf_reader_survives_any_header_counts_and_offsets(shnum, phnum, shoff, phoff,
                                                              body) -> None:
    data = bytearray(body)
    data[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QQ", data, 32, phoff, shoff)
    struct.pack_into("<HHHH", data, 54, 56, phnum, 64, shnum)
    try:
        ElfImage(bytes(data))
    except ElfError:
        pass
