"""IdentityResolver: every resolution rule, forged values, idle expiry and the memory bounds."""

from __future__ import annotations

import base64
import json
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tenantwatch.config import DEFAULT_PATTERN, JwtSettings, Source, Tenancy
from tenantwatch.identity import (
    INVALID,
    OTHER,
    UNATTRIBUTED,
    IdentityResolver,
    TenantIdentity,
    Trust,
)
from tenantwatch.identity import resolver as resolver_module
from tenantwatch.kernel.records import Side, ValueFlag

F = ValueFlag
CLAIMED_SRC = 0  # X-Tenant-ID, server, claimed
TRUSTED_SRC = 1  # X-Tenant-Context, client, trusted
HOST_SRC = 2  # {tenant}.api.example.com, both sides
JWT_SRC = 3  # bearer claim tenant_id, both sides

SOURCES = (
    Source("header", "x-tenant-id", Side.SERVER, False),
    Source("header", "x-tenant-context", Side.CLIENT, True),
    Source("host", "host", None, False, host_template="{tenant}.api.example.com"),
    Source("jwt", "authorization", None, False, jwt=JwtSettings(claim="tenant_id")),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tenancy(**kw: Any) -> Tenancy:
    args: dict = {"sources": SOURCES, "pattern": DEFAULT_PATTERN, "tenants": (),
                  "max_tenants": 1000, "default": "common", "idle_seconds": 300.0}
    args.update(kw)
    return Tenancy(**args)


def resolver(cache_size: int = 65536, clock: Clock | None = None, **kw: Any
             ) -> IdentityResolver:
    return IdentityResolver(tenancy(**kw), cache_size=cache_size, clock=clock or Clock())


def claimed(r: IdentityResolver, key: int, value: bytes | None, flags: F = F.NONE
            ) -> TenantIdentity:
    return r.resolve(key, value, CLAIMED_SRC, flags, Side.SERVER)


def invalid(reason: str) -> TenantIdentity:
    return TenantIdentity(INVALID, Trust.NONE, reason)


def bearer(payload: Any) -> bytes:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    header = b64(b'{"alg":"RS256"}')
    return f"Bearer {header}.{b64(body)}.c2ln".encode()


# --- valid values and trust ------------------------------------------------------------------


def test_claimed_header_value() -> None:
    r = resolver()
    assert claimed(r, 10, b"acme") == TenantIdentity("acme", Trust.CLAIMED)
    assert r.tenants() == ("acme",)


def test_trusted_source_gives_trusted() -> None:
    r = resolver()
    assert r.resolve(11, b"acme", TRUSTED_SRC, F.NONE, Side.CLIENT) == \
        TenantIdentity("acme", Trust.TRUSTED)


def test_a_trusted_source_on_an_adopted_connection_is_only_claimed() -> None:
    """A connection first met mid-stream may carry anybody's request-like bytes (a WebSocket
    frame): its values never become trusted, also when the key comes back without a value."""
    r = resolver()
    assert r.resolve(12, b"acme", TRUSTED_SRC, F.ADOPTED, Side.CLIENT) == \
        TenantIdentity("acme", Trust.CLAIMED)
    assert r.resolve(12, None, TRUSTED_SRC, F.NONE, Side.CLIENT) == \
        TenantIdentity("acme", Trust.CLAIMED)
    assert r.resolve(13, b"acme", TRUSTED_SRC, F.NONE, Side.CLIENT) == \
        TenantIdentity("acme", Trust.TRUSTED)
    assert claimed(r, 14, b"beta", F.ADOPTED) == TenantIdentity("beta", Trust.CLAIMED)


@pytest.mark.parametrize("raw", [b"acme ", b"acme\t", b"acme \t \t"])
def test_trailing_whitespace_is_stripped(raw: bytes) -> None:
    assert claimed(resolver(), 1, raw) == TenantIdentity("acme", Trust.CLAIMED)


def test_cached_key_resolves_without_value() -> None:
    r = resolver()
    claimed(r, 7, b"acme")
    assert claimed(r, 7, None) == TenantIdentity("acme", Trust.CLAIMED)


def test_value_less_entry_resolves_through_the_key_it_was_learned_with() -> None:
    # The kernel mixes source and flags into the key, so a key names one (value, source);
    # entries it creates without the value (a response in a later tick) carry source -1.
    r = resolver()
    r.resolve(7, b"acme", TRUSTED_SRC, F.NONE, Side.CLIENT)
    assert r.resolve(7, None, -1, F.NONE, Side.CLIENT) == TenantIdentity("acme", Trust.TRUSTED)
    claimed(r, 8, b"acme")
    assert r.resolve(8, None, -1, F.NONE, Side.SERVER) == TenantIdentity("acme", Trust.CLAIMED)


def test_value_less_entry_of_a_host_source_keeps_the_host_reading() -> None:
    r = resolver()
    assert r.resolve(5, b"acme.api.example.com", HOST_SRC, F.NONE, Side.SERVER).tenant == "acme"
    assert r.resolve(5, None, -1, F.NONE, Side.SERVER).tenant == "acme"


def test_value_less_entry_of_a_no_identity_key_is_the_default() -> None:
    r = resolver()
    r.resolve(3, b"", -1, F.NO_IDENTITY, Side.SERVER)
    assert r.resolve(3, None, -1, F.NONE, Side.SERVER) == TenantIdentity("common", Trust.NONE)


def test_unknown_key_without_value() -> None:
    r = resolver()
    assert claimed(r, 99, None) == TenantIdentity(UNATTRIBUTED, Trust.NONE, "unknown_key")
    assert r.tenants() == ()


# --- kernel flags ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag,reason", [
    (F.DUPLICATE, "duplicate"), (F.FOLDED, "folded"), (F.BAD_BYTE, "bad_byte"),
    (F.TOO_LONG, "too_long"), (F.COLLISION, "collision"),
])
def test_flagged_values_are_invalid(flag: F, reason: str) -> None:
    r = resolver()
    assert claimed(r, 1, b"acme", flag) == invalid(reason)
    assert claimed(r, 2, None, flag) == invalid(reason)
    assert r.tenants() == ()


def test_overflow_goes_to_other_whatever_else_is_set() -> None:
    r = resolver()
    expected = TenantIdentity(OTHER, Trust.NONE, "kernel_overflow")
    assert claimed(r, 2, None, F.OVERFLOW) == expected
    assert claimed(r, 2, b"acme", F.OVERFLOW | F.DUPLICATE | F.NO_IDENTITY) == expected
    assert claimed(r, 2, None) == TenantIdentity(UNATTRIBUTED, Trust.NONE, "unknown_key")


def test_several_flags_report_the_first_in_bit_order() -> None:
    assert claimed(resolver(), 1, b"a", F.TOO_LONG | F.FOLDED) == invalid("folded")
    assert claimed(resolver(), 1, b"a", F.COLLISION | F.BAD_BYTE) == invalid("bad_byte")


def test_bad_value_flags_stick_to_the_key() -> None:
    r = resolver()
    claimed(r, 3, b"acme-with-a-very-long-prefix", F.TOO_LONG)
    assert claimed(r, 3, None) == invalid("too_long")
    claimed(r, 4, b"ac", F.BAD_BYTE)
    assert claimed(r, 4, None) == invalid("bad_byte")
    assert r.tenants() == ()


def test_duplicate_or_folded_key_stays_invalid_when_seen_again_without_value() -> None:
    # The kernel mixes the flags into the key: a key learned as a duplicate is a duplicate.
    r = resolver()
    assert claimed(r, 5, b"acme", F.DUPLICATE) == invalid("duplicate")
    assert r.resolve(5, None, -1, F.NONE, Side.SERVER) == invalid("duplicate")
    assert claimed(r, 6, b"globex", F.FOLDED) == invalid("folded")
    assert r.resolve(6, None, -1, F.NONE, Side.SERVER).tenant == "__invalid__"


def test_collision_does_not_overwrite_the_first_value() -> None:
    r = resolver()
    claimed(r, 8, b"acme")
    assert claimed(r, 8, b"evil", F.COLLISION) == invalid("collision")
    assert claimed(r, 8, None).tenant == "acme"
    assert claimed(r, 9, b"evil", F.COLLISION) == invalid("collision")
    assert claimed(r, 9, None).rejected_reason == "unknown_key"


def test_value_less_entry_of_a_flagged_key_stays_invalid() -> None:
    r = resolver()
    assert r.resolve(12, b"acme", 0, F.DUPLICATE, Side.SERVER) == invalid("duplicate")
    assert r.resolve(12, None, -1, F.NONE, Side.SERVER).tenant == "__invalid__"


# --- no identity -----------------------------------------------------------------------------


def test_no_identity_gives_the_default() -> None:
    r = resolver()
    common = TenantIdentity("common", Trust.NONE)
    assert claimed(r, 0, None, F.NO_IDENTITY) == common
    assert r.resolve(0, b"acme", -1, F.NONE, Side.SERVER) == common
    assert r.resolve(0, None, -1, F.NONE, Side.CLIENT) == common
    assert r.tenants() == ()


def test_no_identity_without_default_is_unattributed() -> None:
    r = resolver(default=None)
    assert claimed(r, 0, None, F.NO_IDENTITY) == TenantIdentity(UNATTRIBUTED, Trust.NONE)
    assert r.resolve(0, None, -1, F.NONE, Side.SERVER) == TenantIdentity(UNATTRIBUTED, Trust.NONE)


@pytest.mark.parametrize("index,side", [(4, Side.SERVER), (-2, Side.SERVER), (99, Side.CLIENT),
                                        (CLAIMED_SRC, Side.CLIENT), (TRUSTED_SRC, Side.SERVER)])
def test_source_the_config_does_not_have_is_invalid(index: int, side: Side) -> None:
    r = resolver()
    assert r.resolve(1, b"acme", index, F.NONE, side) == invalid("bad_source")
    assert r.tenants() == ()


# --- forged and malformed values -------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"",
    b" \t ",
    b" acme",  # the kernel skips leading whitespace; anything left is part of the value
    b"ac\x00me",
    b"acme\x00",
    b"acme\r",
    b"acme\r\n",
    b"ac me",
    b"acme;x",
    b"-acme",
    b"_acme",
    b"a" * 64,
    "acmé".encode(),
    "ａｃｍｅ".encode(),  # fullwidth letters
    "acme".encode("utf-16"),
    b"\xff\xfe",
    b"acme\x7f",
    b"../../etc",
    b"__other__",
])
def test_malformed_values_are_invalid(raw: bytes) -> None:
    r = resolver()
    assert claimed(r, 1, raw) == invalid("pattern")
    assert r.tenants() == ()


def test_longest_valid_value() -> None:
    assert claimed(resolver(), 1, b"a" * 63).tenant == "a" * 63


def test_reserved_labels_are_refused_even_by_a_permissive_pattern() -> None:
    r = resolver(pattern=r".+")  # config refuses this pattern; the resolver does not rely on it
    for label in (OTHER, INVALID, UNATTRIBUTED):
        assert claimed(r, 1, label.encode()) == invalid("pattern")
    assert claimed(r, 2, b"x y").tenant == "x y"


def test_allow_list() -> None:
    r = resolver(tenants=("acme", "globex"))
    assert claimed(r, 1, b"acme").tenant == "acme"
    assert claimed(r, 2, b"initech") == invalid("not_allowed")
    assert claimed(r, 3, b"bad value") == invalid("pattern")
    assert r.tenants() == ("acme",)


# --- host sources ----------------------------------------------------------------------------


def host(r: IdentityResolver, key: int, raw: bytes | None, side: Side = Side.SERVER
         ) -> TenantIdentity:
    return r.resolve(key, raw, HOST_SRC, F.NONE, side)


@pytest.mark.parametrize("raw,tenant", [
    (b"acme.api.example.com", "acme"),
    (b"ACME.Api.Example.com", "acme"),
    (b"acme.api.example.com:8443", "acme"),
    (b"acme.api.example.com. ", "acme"),
])
def test_host_source(raw: bytes, tenant: str) -> None:
    assert host(resolver(), 1, raw, Side.CLIENT) == TenantIdentity(tenant, Trust.CLAIMED)


@pytest.mark.parametrize("raw", [b"api.example.com", b"acme.example.com", b"a.b.api.example.com",
                                 b"acme.api.example.com.evil", b"acme.api.example.com:x",
                                 b"", b"acme.api.example.com\x00"])
def test_host_mismatch(raw: bytes) -> None:
    assert host(resolver(), 1, raw) == invalid("host_mismatch")


def test_host_match_still_needs_the_pattern() -> None:
    assert host(resolver(), 1, b"_x.api.example.com") == invalid("pattern")
    assert host(resolver(), 1, ("é" + ".api.example.com").encode()) == invalid("pattern")


# --- jwt sources (claim read without verification: never trusted) ----------------------------


def jwt(r: IdentityResolver, raw: bytes) -> TenantIdentity:
    return r.resolve(1, raw, JWT_SRC, F.NONE, Side.SERVER)


def test_jwt_claim() -> None:
    assert jwt(resolver(), bearer({"tenant_id": "acme"})) == TenantIdentity("acme", Trust.CLAIMED)
    assert jwt(resolver(), bearer({"tenant_id": "acme"}).replace(b"Bearer", b"bearer")).tenant \
        == "acme"


@pytest.mark.parametrize("raw", [
    bearer({"sub": "acme"}),
    bearer({"tenant_id": 42}),
    bearer({"tenant_id": ["acme"]}),
    bearer(["acme"]),
    bearer(b"not json"),
    bearer(b"\xff\xfe"),
    bearer(b"[" * 40),
    b"Basic YWNtZTpwdw==",
    b"Bearer",
    b"Bearer a.b",
    b"Bearer a.!!!.c",
    b"acme",
])
def test_jwt_malformed(raw: bytes) -> None:
    assert jwt(resolver(), raw) == invalid("jwt")


def test_jwt_claim_still_needs_the_pattern() -> None:
    assert jwt(resolver(), bearer({"tenant_id": "bad value"})) == invalid("pattern")


# --- cardinality and idle expiry -------------------------------------------------------------


def test_max_tenants_folds_new_tenants_into_other() -> None:
    r = resolver(max_tenants=2)
    assert claimed(r, 1, b"a").tenant == "a"
    assert claimed(r, 2, b"b").tenant == "b"
    assert claimed(r, 3, b"c") == TenantIdentity(OTHER, Trust.NONE, "max_tenants")
    assert claimed(r, 4, b"a").tenant == "a"  # another key for an admitted tenant
    assert claimed(r, 0, None, F.NO_IDENTITY).tenant == "common"  # default takes no slot
    assert claimed(r, 5, b"common") == TenantIdentity("common", Trust.CLAIMED)
    assert r.tenants() == ("a", "b")


def test_expire_forgets_idle_tenants_and_frees_slots() -> None:
    clock = Clock()
    r = resolver(clock=clock, max_tenants=2)
    claimed(r, 1, b"a")
    clock.now += 100
    claimed(r, 2, b"b")
    clock.now += 150
    claimed(r, 1, None)  # a cache hit counts as activity
    clock.now += 200  # a idle 200 s, b idle 350 s
    assert r.expire() == ("b",)
    assert r.tenants() == ("a",)
    assert claimed(r, 3, b"c").tenant == "c"
    assert claimed(r, 4, b"d").tenant == OTHER
    clock.now += 300
    assert r.expire() == ("a", "c")
    assert r.expire() == ()
    assert r.tenants() == ()


def test_expired_tenant_comes_back_from_the_cache_only_if_there_is_room() -> None:
    clock = Clock()
    r = resolver(clock=clock, max_tenants=1)
    claimed(r, 1, b"a")
    clock.now += 301
    assert r.expire() == ("a",)
    claimed(r, 2, b"b")
    assert claimed(r, 1, None) == TenantIdentity(OTHER, Trust.NONE, "max_tenants")
    clock.now += 301
    r.expire()
    assert claimed(r, 1, None) == TenantIdentity("a", Trust.CLAIMED)


def test_a_key_refused_for_max_tenants_is_admitted_once_there_is_room() -> None:
    clock = Clock()
    r = resolver(clock=clock, max_tenants=1)
    claimed(r, 1, b"a")
    assert claimed(r, 2, b"b").tenant == OTHER
    clock.now += 301
    r.expire()
    assert claimed(r, 2, None).tenant == "b"


def test_rejections_do_not_refresh_idle_time() -> None:
    clock = Clock()
    r = resolver(clock=clock, max_tenants=1)
    claimed(r, 1, b"a")
    clock.now += 301
    claimed(r, 1, b"a", F.DUPLICATE)  # not a resolve that returned "a"
    assert r.expire() == ("a",)


# --- memory bounds ---------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used_key() -> None:
    r = resolver(cache_size=2)
    claimed(r, 1, b"a")
    claimed(r, 2, b"b")
    claimed(r, 1, None)  # 1 is now the most recent
    claimed(r, 3, b"c")
    assert claimed(r, 2, None).rejected_reason == "unknown_key"
    assert claimed(r, 1, None).tenant == "a"
    assert claimed(r, 3, None).tenant == "c"


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        resolver(cache_size=0)


def sizes(r: IdentityResolver) -> tuple[int, int]:
    return len(r._cache), len(r._last_seen)


def test_flood_of_distinct_values_stays_within_bounds() -> None:
    r = resolver(cache_size=1000, max_tenants=50)
    folded = 0
    for i in range(200_000):
        identity = claimed(r, i + 1000, b"t%d" % i)
        folded += identity.tenant == OTHER
        if i == 5000:
            assert sizes(r) == (1000, 50)
    assert sizes(r) == (1000, 50)
    assert folded == 200_000 - 50
    assert len(r.tenants()) == 50
    assert claimed(r, 1000, None).rejected_reason == "unknown_key"  # evicted long ago


def test_flood_memory_does_not_grow() -> None:
    r = resolver(cache_size=1000, max_tenants=50)
    tracemalloc.start()
    try:
        for i in range(5000):  # fill the cache and the tenant slots
            claimed(r, i, b"warm%d" % i)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            claimed(r, 10_000 + i, b"flood%d" % i)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16 * 1024, grown


def test_deterministic() -> None:
    def run() -> list:
        r = resolver(max_tenants=3, cache_size=5)
        return [claimed(r, i % 7, b"t%d" % (i % 11) if i % 3 else None) for i in range(100)]

    assert run() == run()



def test_every_reason_given_is_listed() -> None:
    source = Path(resolver_module.__file__).read_text()
    pattern = r'TenantIdentity\((?:INVALID|OTHER|UNATTRIBUTED), Trust\.NONE, "(\w+)"\)'
    given = set(re.findall(pattern, source))
    given |= {reason for _, reason in resolver_module._FLAG_REASONS}
    assert given == set(resolver_module.REJECT_REASONS)


# --- one admission per tenant and tick -------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_a_tick_admits_each_tenant_once_with_the_same_answers(seed: int) -> None:
    """Between begin_tick() and end_tick() a tenant is admitted by its first key only; every
    answer, the admitted tenants and their expiry are what resolving outside ticks gives."""
    import random
    rng = random.Random(seed)
    ticked, plain = (resolver(clock=Clock(), max_tenants=5, idle_seconds=3.0) for _ in range(2))
    keys: dict[int, tuple[bytes, int, Side, F]] = {}
    for _ in range(40):  # ticks
        ticked.begin_tick()
        for _ in range(rng.randrange(1, 30)):
            key = rng.randrange(60)
            if key not in keys or rng.random() < 0.1:  # a (re)learned value: adopted or not
                src, side = rng.choice([(CLAIMED_SRC, Side.SERVER), (TRUSTED_SRC, Side.CLIENT)])
                keys[key] = (f"t{rng.randrange(9)}".encode(), src, side,
                             F.ADOPTED if rng.random() < 0.2 else F.NONE)
                value, src, side, flags = keys[key]
                args: tuple = (key, value, src, flags, side)
            else:  # the key alone, as the kernel sends it after the first tick
                args = (key, None, -1, F.NONE, keys[key][2])
            assert ticked.resolve(*args) == plain.resolve(*args), args
        ticked.end_tick()
        step = rng.choice([0.5, 1.0, 2.0])
        for r in (ticked, plain):
            r._clock.now += step  # type: ignore[attr-defined]
        for key in rng.sample(sorted(keys), min(len(keys), 2)):  # outside a tick: admitted
            args = (key, None, -1, F.NONE, keys[key][2])
            assert ticked.resolve(*args) == plain.resolve(*args), args
        # the same tenants expire; among those a tick saw, the order may differ (a tick
        # dates a tenant by its first key, not its last: the same time here)
        assert sorted(ticked.expire()) == sorted(plain.expire())
        assert ticked.tenants() == plain.tenants()


def test_a_tick_keeps_each_keys_own_trust() -> None:
    """The tenant's second key in a tick gets its own source's trust, adopted or not."""
    r = resolver()
    assert r.resolve(1, b"a", CLAIMED_SRC, F.NONE, Side.SERVER).tenant == "a"
    assert r.resolve(2, b"a", TRUSTED_SRC, F.NONE, Side.CLIENT).trust is Trust.TRUSTED
    assert r.resolve(3, b"a", TRUSTED_SRC, F.ADOPTED, Side.CLIENT).trust is Trust.CLAIMED
    r.begin_tick()
    answers = [r.resolve(k, None, -1, F.NONE, s) for k, s in
               ((1, Side.SERVER), (2, Side.CLIENT), (3, Side.CLIENT), (2, Side.CLIENT))]
    r.end_tick()
    assert [(i.tenant, i.trust) for i in answers] == [
        ("a", Trust.CLAIMED), ("a", Trust.TRUSTED), ("a", Trust.CLAIMED), ("a", Trust.TRUSTED)]
