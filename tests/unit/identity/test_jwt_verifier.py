"""JwtVerifier: algorithms, claims, the token cache, key set changes, pyjwt version checks, the
resolver integration and the jwt_verify_total counter."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import jwt
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tenantwatch.config import parse_config
from tenantwatch.exporters import TenantCollector
from tenantwatch.identity import INVALID, OTHER, IdentityResolver, TenantIdentity, Trust
from tenantwatch.identity import jwt_verifier as jv
from tenantwatch.identity.jwks import JwksError, KeySet, StaticKeySource, oct_jwk, parse_jwks
from tenantwatch.identity.jwt_verifier import (
    CACHE_SECONDS,
    RETRY_SECONDS,
    VERIFY_RESULTS,
    JwtSupportError,
    VerifyResult,
    build_verifiers,
    total_counts,
)
from tenantwatch.kernel.records import Side, ValueFlag
from tests.unit.identity.jwt_helpers import (
    AUDIENCE,
    ISSUER,
    JWT_SOURCE,
    NOW,
    Clock,
    bearer,
    claims,
    ec_key,
    ed_key,
    jwks,
    public_jwk,
    resolver_with,
    rsa_key,
    rsa_keys,
    sign,
    verifier,
)

F = ValueFlag.NONE


def test_genuine_token() -> None:
    v = verifier()
    result = v.verify(bearer(sign(claims())))
    assert result == VerifyResult("acme", "ok", CACHE_SECONDS)  # exp is an hour away
    assert result.ok
    assert v.counts() == {**dict.fromkeys(VERIFY_RESULTS, 0), "ok": 1}


def test_str_value_and_scheme_case() -> None:
    v = verifier()
    token = sign(claims())
    assert v.verify(f"bearer  {token} ").tenant == "acme"
    assert v.verify(f"BEARER {token}").tenant == "acme"


@pytest.mark.parametrize(("alg", "key", "family"), [
    ("RS256", rsa_key, "RSA"), ("RS512", rsa_key, "RSA"), ("PS256", rsa_key, "RSA"),
    ("ES256", ec_key, "EC"), ("EdDSA", ed_key, "OKP"),
])
def test_asymmetric_families(alg: str, key: Any, family: str) -> None:
    keys = parse_jwks(jwks(public_jwk(key())), family)
    v = verifier(keys, algorithms=(alg,))
    assert v.verify(bearer(sign(claims(), key(), alg))).tenant == "acme"


def test_hmac_from_oct_key() -> None:
    secret = b"0123456789abcdef" * 4  # 64 bytes: what HS512 needs
    v = verifier(parse_jwks(jwks(oct_jwk(secret, "k1")), "oct"), algorithms=("HS256", "HS512"))
    assert v.verify(bearer(sign(claims(), secret, "HS512"))).tenant == "acme"
    assert v.verify(bearer(sign(claims(), b"another secret".ljust(64, b"."), "HS256"))
                    ).reason == "bad_signature"


def test_mixed_families_refused() -> None:
    with pytest.raises(ValueError, match="one family"):
        verifier(algorithms=("RS256", "HS256"))
    with pytest.raises(ValueError, match="one family"):
        verifier(algorithms=("RS256", "none"))
    with pytest.raises(ValueError, match="one family"):
        verifier(algorithms=())


def test_pinned_jwk_alg() -> None:
    keys = parse_jwks(jwks(public_jwk(rsa_key(), alg="RS256")), "RSA")
    v = verifier(keys, algorithms=("RS256", "RS384"))
    assert v.verify(bearer(sign(claims()))).tenant == "acme"
    assert v.verify(bearer(sign(claims(), alg="RS384"))).reason == "algorithm"


def test_token_without_kid_tries_each_key() -> None:
    keys = parse_jwks(jwks(public_jwk(rsa_key(1), "old"), public_jwk(rsa_key(), "new")), "RSA")
    v = verifier(keys)
    assert v.verify(bearer(sign(claims(), kid=None))).tenant == "acme"
    assert v.verify(bearer(sign(claims(), kid="new"))).tenant == "acme"
    assert v.verify(bearer(sign(claims(), kid="old"))).reason == "bad_signature"


def test_checks_are_optional() -> None:
    v = verifier(issuer=None, audience=None)
    assert v.verify(bearer(sign(claims(iss="anyone", aud="anything")))).tenant == "acme"
    assert v.verify(bearer(sign(claims(iss=None, aud=None, exp=None, nbf=None, iat=None)))
                    ) == VerifyResult("acme", "ok", CACHE_SECONDS)


def test_custom_claim() -> None:
    v = verifier(claim="org")
    assert v.verify(bearer(sign(claims(org="globex")))).tenant == "globex"
    assert v.verify(bearer(sign(claims()))).reason == "claim"


def test_leeway() -> None:
    v = verifier(leeway_seconds=30)
    assert v.verify(bearer(sign(claims(exp=int(NOW) - 29)))) == VerifyResult("acme", "ok", 1.0)
    assert v.verify(bearer(sign(claims(exp=int(NOW) - 30)))).reason == "expired"
    assert v.verify(bearer(sign(claims(nbf=int(NOW) + 30)))).tenant == "acme"
    assert v.verify(bearer(sign(claims(nbf=int(NOW) + 31)))).reason == "not_yet_valid"


# --- the cache -------------------------------------------------------------------------------


def test_each_token_verified_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    v = verifier(clock=clock)
    calls = []
    real = v._decode
    monkeypatch.setattr(v, "_decode", lambda *a: calls.append(1) or real(*a))
    raw = bearer(sign(claims()))
    for _ in range(100):
        assert v.verify(raw).tenant == "acme"
    assert len(calls) == 1
    assert v.counts()["ok"] == 1
    clock.now += 100
    assert v.verify(raw) == VerifyResult("acme", "ok", CACHE_SECONDS - 100)
    clock.now += CACHE_SECONDS  # the entry's at most CACHE_SECONDS: verified again
    assert v.verify(raw).tenant == "acme"
    assert len(calls) == 2


def test_cache_entry_ends_at_exp() -> None:
    clock = Clock()
    v = verifier(clock=clock)
    raw = bearer(sign(claims(exp=int(NOW) + 60)))
    assert v.verify(raw) == VerifyResult("acme", "ok", 60.0)
    clock.now += 59.5
    assert v.verify(raw) == VerifyResult("acme", "ok", 0.5)
    clock.now += 0.5
    assert v.verify(raw) == VerifyResult(None, "expired", math.inf)
    assert v.counts()["ok"] == 1 and v.counts()["expired"] == 1


def test_cache_is_bounded() -> None:
    v = verifier(cache_size=3)
    for i in range(10):
        assert v.verify(bearer(sign(claims(jti=str(i))))).tenant == "acme"
    assert len(v._cache) == 3


def test_failures_are_cached_too(monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier()
    raw = bearer(sign(claims(aud="other")))
    assert v.verify(raw).reason == "audience"
    monkeypatch.setattr(v, "_check", lambda *a: pytest.fail("verified twice"))
    assert v.verify(raw) == VerifyResult(None, "audience", math.inf)
    assert v.counts()["audience"] == 1


def test_key_set_change_makes_the_cache_stale() -> None:
    source = StaticKeySource(rsa_keys())
    v = verifier(source=source)
    raw = bearer(sign(claims()))
    assert v.verify(raw).tenant == "acme"
    source._keys = parse_jwks(jwks(public_jwk(rsa_key(1), "k2")), "RSA")  # k1 revoked
    assert v.verify(raw).reason == "unknown_kid"


def test_no_keys_until_loaded() -> None:
    source = StaticKeySource(loader=rsa_keys)
    v = verifier(source=source)
    raw = bearer(sign(claims()))
    assert v.verify(raw) == VerifyResult(None, "no_keys", RETRY_SECONDS)
    v.start()
    assert v.verify(raw).tenant == "acme"
    assert v.counts()["no_keys"] == 1


def test_unknown_kid_asks_the_source_once_per_token() -> None:
    class Source(StaticKeySource):
        asked = 0

        def request_refresh(self) -> None:
            Source.asked += 1

    v = verifier(source=Source(rsa_keys()))
    raw = bearer(sign(claims(), kid="new"))
    for _ in range(50):
        assert v.verify(raw).reason == "unknown_kid"
    assert Source.asked == 1


def test_counts_list_every_result() -> None:
    assert set(verifier().counts()) == set(VERIFY_RESULTS)
    a, b = verifier(), verifier()
    a.verify(bearer(sign(claims())))
    b.verify(b"Basic x")
    b.verify(bearer(sign(claims())))
    assert total_counts({0: a, 3: b}) == {**dict.fromkeys(VERIFY_RESULTS, 0), "ok": 2,
                                          "malformed": 1}


# --- pyjwt and cryptography ------------------------------------------------------------------


def test_installed_pyjwt_is_new_enough() -> None:
    assert jv.pyjwt_problem() is None, jv.pyjwt_problem()
    assert jv._version_tuple(jwt.__version__) >= (2, 10, 1)


@pytest.mark.parametrize("version", ["2.6.0", "2.10.0", "2.4.0", "1.7.1"])
def test_old_pyjwt_is_refused(version: str, monkeypatch: pytest.MonkeyPatch,
                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(jwt, "__version__", version)
    assert "older than 2.10.1" in (jv.pyjwt_problem() or "")
    with caplog.at_level(logging.ERROR):
        v = verifier()
    assert "JWT verification disabled" in caplog.text
    assert v.verify(bearer(sign(claims()))).reason == "no_keys"
    with pytest.raises(JwtSupportError, match="older than 2.10.1"):
        v.start()


def test_version_parsing() -> None:
    assert jv._version_tuple("2.10.1") == (2, 10, 1)
    assert jv._version_tuple("2.10.1rc1") == (2, 10, 1)
    assert jv._version_tuple("2.11") == (2, 11)
    assert jv._version_tuple("2.11") >= jv.MIN_PYJWT


# --- building from the configuration ---------------------------------------------------------


def config_with(jwt_settings: dict[str, Any]) -> Any:
    return parse_config({"targets": [{"process": "nginx"}], "tenancy": {"sources": [
        {"header": "X-Tenant-ID"}, {"jwt": jwt_settings}]}}, env={})


def test_build_verifiers_from_config(tmp_path: Path) -> None:
    import json

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(public_jwk(rsa_key()))))
    c = config_with({"jwks_file": str(path), "issuer": ISSUER, "audience": AUDIENCE,
                     "leeway_seconds": 5})
    verifiers = build_verifiers(c.tenancy.sources)
    assert list(verifiers) == [1]
    v = verifiers[1]
    assert v.name == "tenancy.sources[1].jwt"
    v.start()
    raw = bearer(sign(claims(exp=int(__import__("time").time()) + 60,
                             nbf=None, iat=None)))
    assert v.verify(raw).tenant == "acme"
    r = IdentityResolver(c.tenancy, verifiers=verifiers)
    assert r.resolve(9, raw, 1, F, Side.SERVER) == TenantIdentity("acme", Trust.TRUSTED)


def test_build_verifiers_without_keys() -> None:
    assert build_verifiers(config_with({"claim": "tenant_id"}).tenancy.sources) == {}


def test_missing_key_file_names_the_field(tmp_path: Path) -> None:
    c = config_with({"pem_file": str(tmp_path / "missing.pem")})
    v = build_verifiers(c.tenancy.sources)[1]
    with pytest.raises(JwksError, match=r"tenancy\.sources\[1\]\.jwt: cannot read"):
        v.start()


def test_jwks_url_settings() -> None:
    c = config_with({"jwks_url": "https://idp.example/jwks", "jwks_refresh_seconds": 60,
                     "algorithms": ["ES256"]})
    v = build_verifiers(c.tenancy.sources)[1]
    assert v.family == "EC"
    assert v.keys.url == "https://idp.example/jwks"  # type: ignore[attr-defined]
    assert v.keys._refresh == 60  # type: ignore[attr-defined]


# --- the resolver ----------------------------------------------------------------------------


def test_resolver_trusts_a_verified_token_and_keeps_the_bounds() -> None:
    clock = Clock()
    r = resolver_with(verifier(clock=clock), clock=clock, max_tenants=1, tenants=("acme", "b"))
    assert r.resolve(1, bearer(sign(claims())), 0, F, Side.SERVER) == \
        TenantIdentity("acme", Trust.TRUSTED)
    assert r.resolve(1, None, 0, F, Side.CLIENT) == TenantIdentity("acme", Trust.TRUSTED)
    assert r.resolve(2, bearer(sign(claims(tenant_id="b"))), 0, F, Side.SERVER) == \
        TenantIdentity(OTHER, Trust.NONE, "max_tenants")
    assert r.resolve(3, bearer(sign(claims(tenant_id="zzz"))), 0, F, Side.SERVER) == \
        TenantIdentity(INVALID, Trust.NONE, "not_allowed")
    assert r.resolve(4, bearer(sign(claims(tenant_id="no spaces"))), 0, F, Side.SERVER) == \
        TenantIdentity(INVALID, Trust.NONE, "pattern")
    assert r.resolve(5, bearer(sign(claims(tenant_id="__other__"))), 0, F, Side.SERVER) == \
        TenantIdentity(INVALID, Trust.NONE, "pattern")


def test_resolver_from_cache_path_rechecks() -> None:
    """A kernel key the aggregator resolves without a source (CPU, slow spans) re-verifies."""
    clock = Clock()
    r = resolver_with(verifier(clock=clock), clock=clock)
    assert r.resolve(1, bearer(sign(claims(exp=int(NOW) + 50))), 0, F, Side.SERVER).trust \
        is Trust.TRUSTED
    assert r.resolve(1, None, -1, F, Side.SERVER) == TenantIdentity("acme", Trust.TRUSTED)
    clock.now += 50
    assert r.resolve(1, None, -1, F, Side.SERVER) == TenantIdentity(INVALID, Trust.NONE, "jwt")


def test_resolver_retries_a_token_with_an_unknown_kid() -> None:
    clock = Clock()
    source = StaticKeySource(rsa_keys())
    r = resolver_with(verifier(clock=clock, source=source), clock=clock)
    raw = bearer(sign(claims(), rsa_key(1), kid="next"))
    assert r.resolve(1, raw, 0, F, Side.SERVER) == TenantIdentity(INVALID, Trust.NONE, "jwt")
    source._keys = KeySet(rsa_keys().keys + parse_jwks(
        jwks(public_jwk(rsa_key(1), "next")), "RSA").keys)  # the rotated set arrives
    assert r.resolve(1, None, 0, F, Side.SERVER).tenant == INVALID  # retried later, not now
    clock.now += RETRY_SECONDS
    assert r.resolve(1, None, 0, F, Side.SERVER) == TenantIdentity("acme", Trust.TRUSTED)


def test_resolver_pending_tokens_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from tenantwatch.identity import resolver as resolver_module

    monkeypatch.setattr(resolver_module, "MAX_PENDING_TOKENS", 4)
    clock = Clock()
    r = resolver_with(verifier(clock=clock), clock=clock)
    for key in range(10):
        raw = bearer(sign(claims(jti=str(key)), rsa_key(1), kid=f"made-up-{key}"))
        assert r.resolve(key, raw, 0, F, Side.SERVER).tenant == INVALID
    assert len(r._pending) == 4
    clock.now += RETRY_SECONDS
    assert r.resolve(0, None, 0, F, Side.SERVER) == TenantIdentity(INVALID, Trust.NONE, "jwt")


def test_resolver_needs_a_verifier_for_a_keyed_source() -> None:
    from tenantwatch.config import DEFAULT_PATTERN, Tenancy

    tenancy = Tenancy(sources=(JWT_SOURCE,), pattern=DEFAULT_PATTERN, tenants=(),
                      max_tenants=10, default=None)
    with pytest.raises(ValueError, match="no verifier"):
        IdentityResolver(tenancy)
    with pytest.raises(ValueError, match="not a jwt source"):
        IdentityResolver(tenancy, verifiers={0: verifier(), 1: verifier()})


def test_resolver_non_ascii_token_counts_as_malformed() -> None:
    v = verifier()
    r = resolver_with(v)
    assert r.resolve(1, b"Bearer \xff", 0, F, Side.SERVER) == \
        TenantIdentity(INVALID, Trust.NONE, "jwt")
    assert v.counts()["malformed"] == 1


# --- the metric ------------------------------------------------------------------------------


def test_jwt_verify_total_on_metrics() -> None:
    from tests.unit.exporters.snapshots import make_snapshot as snapshot

    v = verifier()
    v.verify(bearer(sign(claims())))
    v.verify(bearer(sign(claims(aud="x"))))
    v.verify(bearer(sign(claims(aud="y"))))
    registry = CollectorRegistry()
    registry.register(TenantCollector(snapshot, {"version": "t"},
                                      jwt_counts=lambda: total_counts({0: v})))
    text = generate_latest(registry).decode()
    assert "# TYPE tenantwatch_jwt_verify_total counter" in text
    samples = {s.labels["result"]: s.value
               for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "tenantwatch_jwt_verify_total"}
    assert samples == {**dict.fromkeys(VERIFY_RESULTS, 0.0), "ok": 1.0, "audience": 2.0}


def test_no_jwt_samples_without_verifiers() -> None:
    from tests.unit.exporters.snapshots import make_snapshot as snapshot

    registry = CollectorRegistry()
    registry.register(TenantCollector(snapshot, {"version": "t"}))
    assert "tenantwatch_jwt_verify_total{" not in generate_latest(registry).decode()
