"""Forged, stale and malformed bearer tokens: none may give a trusted identity for the tenant it
claims.  Each goes through the IdentityResolver with a verified jwt source (JWKS keys and PEM
keys), must resolve to __invalid__ "jwt", and must count under the right verify result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tenantwatch.identity import INVALID, TenantIdentity, Trust
from tenantwatch.identity.jwks import oct_jwk, parse_jwks
from tenantwatch.identity.jwt_verifier import MAX_TOKEN_BYTES, JwtVerifier
from tenantwatch.kernel.records import Side, ValueFlag
from tests.unit.identity.jwt_helpers import (
    AUDIENCE,
    ISSUER,
    NOW,
    Clock,
    b64,
    bearer,
    claims,
    ec_key,
    forge,
    forge_hmac,
    jwks,
    pem_verifier,
    public_jwk,
    public_pem,
    resolver_with,
    rsa_key,
    sign,
    verifier,
)

REJECTED = TenantIdentity(INVALID, Trust.NONE, "jwt")


def rs_jwk_json() -> bytes:
    return json.dumps(public_jwk(rsa_key())).encode()


# (id, the Authorization value, the verify result it must count under)
ATTACKS: list[tuple[str, Callable[[], bytes], str]] = [
    ("alg-none", lambda: bearer(forge({"alg": "none", "kid": "k1"}, claims())), "algorithm"),
    ("alg-None", lambda: bearer(forge({"alg": "None", "kid": "k1"}, claims())), "algorithm"),
    ("alg-none-with-sig", lambda: bearer(forge({"alg": "none"}, claims(), b"x" * 32)),
     "algorithm"),
    ("alg-missing", lambda: bearer(forge({"kid": "k1"}, claims())), "malformed"),
    ("hs256-rsa-pem-secret", lambda: bearer(forge_hmac(
        {"alg": "HS256", "kid": "k1"}, claims(), public_pem(rsa_key()))), "algorithm"),
    ("hs256-rsa-pem-secret-no-kid", lambda: bearer(forge_hmac(
        {"alg": "HS256"}, claims(), public_pem(rsa_key()))), "algorithm"),
    ("hs256-rsa-jwk-secret", lambda: bearer(forge_hmac(
        {"alg": "HS256", "kid": "k1"}, claims(), rs_jwk_json())), "algorithm"),
    ("rs256-header-hmac-signature", lambda: bearer(forge_hmac(
        {"alg": "RS256", "kid": "k1"}, claims(), public_pem(rsa_key()))), "bad_signature"),
    ("other-rsa-key-same-kid", lambda: bearer(sign(claims(), rsa_key(1))), "bad_signature"),
    ("embedded-jwk-header", lambda: bearer(sign(claims(), rsa_key(1), kid=None,
                                                 jwk=public_jwk(rsa_key(1), kid=None))),
     "bad_signature"),
    ("jku-header", lambda: bearer(sign(claims(), rsa_key(1), jku="https://evil.example/jwks")),
     "bad_signature"),
    ("tampered-payload", lambda: bearer(_tampered()), "bad_signature"),
    ("es256-instead-of-rs256", lambda: bearer(sign(claims(), ec_key(), "ES256")), "algorithm"),
    ("expired", lambda: bearer(sign(claims(exp=int(NOW) - 1))), "expired"),
    ("expired-long-ago", lambda: bearer(sign(claims(exp=1))), "expired"),
    ("not-yet-valid", lambda: bearer(sign(claims(nbf=int(NOW) + 600))), "not_yet_valid"),
    ("wrong-aud", lambda: bearer(sign(claims(aud="other-service"))), "audience"),
    ("wrong-aud-list", lambda: bearer(sign(claims(aud=["a", "b"]))), "audience"),
    ("no-aud", lambda: bearer(sign(claims(aud=None))), "audience"),
    ("iss-superstring", lambda: bearer(sign(claims(iss=ISSUER + ".evil"))), "issuer"),
    ("iss-prefix", lambda: bearer(sign(claims(iss="https://issuer.exampl"))), "issuer"),
    ("iss-substring-in", lambda: bearer(sign(claims(iss="issuer"))), "issuer"),
    ("iss-list", lambda: bearer(sign_raw(json.dumps(claims(iss=[ISSUER])).encode())),
     "issuer"),
    ("no-iss", lambda: bearer(sign(claims(iss=None))), "issuer"),
    ("unknown-kid", lambda: bearer(sign(claims(), rsa_key(1), kid="k-attacker")), "unknown_kid"),
    ("16k-token", lambda: bearer(sign(claims(pad="x" * 16384))), "too_long"),
    ("16k-garbage", lambda: b"Bearer " + b"A" * 16384, "too_long"),
    ("bad-base64-payload", lambda: b"Bearer eyJhbGciOiJSUzI1NiJ9.!!!.c2ln", "malformed"),
    ("bad-base64-header", lambda: b"Bearer %%%." + b64(b"{}").encode() + b".c2ln",
     "malformed"),
    ("header-not-json", lambda: bearer(f"{b64(b'nope')}.{b64(b'{}')}.c2ln"), "malformed"),
    ("two-parts", lambda: b"Bearer eyJhbGciOiJSUzI1NiJ9.e30", "malformed"),
    ("four-parts", lambda: bearer(sign(claims())) + b".x", "malformed"),
    ("not-bearer", lambda: b"Basic YWNtZTpwdw==", "malformed"),
    ("bearer-only", lambda: b"Bearer", "malformed"),
    ("non-ascii", lambda: b"Bearer \xff\xfe.a.b", "malformed"),
    ("payload-not-object", lambda: bearer(sign_raw(b'["acme"]')), "malformed"),
    ("kid-not-string", lambda: bearer(sign_raw(json.dumps(claims()).encode(), kid=7)),
     "malformed"),
    ("exp-not-number", lambda: bearer(sign(claims(exp="tomorrow"))), "malformed"),
    ("tenant-number", lambda: bearer(sign(claims(tenant_id=42))), "claim"),
    ("tenant-list", lambda: bearer(sign(claims(tenant_id=["acme"]))), "claim"),
    ("tenant-object", lambda: bearer(sign(claims(tenant_id={"id": "acme"}))), "claim"),
    ("tenant-missing", lambda: bearer(sign(claims(tenant_id=None))), "claim"),
    ("tenant-null-bool", lambda: bearer(sign(claims(tenant_id=True))), "claim"),
]


def _tampered() -> str:
    header, _, sig = sign(claims(tenant_id="globex")).split(".")
    return f"{header}.{b64(json.dumps(claims()).encode())}.{sig}"


def sign_raw(payload: bytes, kid: Any = "k1") -> str:
    """A genuine RS256 signature over any header and payload, made without pyjwt's checks."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{b64(json.dumps({'alg': 'RS256', 'kid': kid}).encode())}.{b64(payload)}"
    sig = rsa_key().sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(sig)}"


VERIFIERS: dict[str, Callable[[Clock], JwtVerifier]] = {
    "jwks": lambda clock: verifier(clock=clock),
    "pem": lambda clock: pem_verifier(clock=clock),
}


def resolve_attack(make_verifier: Callable[[Clock], JwtVerifier], raw: bytes
                   ) -> tuple[TenantIdentity, JwtVerifier]:
    clock = Clock()
    v = make_verifier(clock)
    r = resolver_with(v, clock=clock)
    return r.resolve(1, raw, 0, ValueFlag.NONE, Side.SERVER), v


def test_the_genuine_token_is_trusted() -> None:
    """The control: without this, every attack below could pass by rejecting everything."""
    for make in VERIFIERS.values():
        identity, v = resolve_attack(make, bearer(sign(claims())))
        assert identity == TenantIdentity("acme", Trust.TRUSTED)
        assert v.counts()["ok"] == 1


@pytest.mark.parametrize("kind", sorted(VERIFIERS))
@pytest.mark.parametrize(("raw", "reason"), [pytest.param(f, r, id=i) for i, f, r in ATTACKS])
def test_attack_is_not_trusted(kind: str, raw: Callable[[], bytes], reason: str) -> None:
    if reason == "unknown_kid" and kind == "pem":
        reason = "bad_signature"  # PEM keys have no kid: every token is tried against them
    identity, v = resolve_attack(VERIFIERS[kind], raw())
    assert identity == REJECTED
    assert not (identity.tenant == "acme" or identity.trust is Trust.TRUSTED)
    counts = v.counts()
    assert counts[reason] == 1, counts
    assert sum(counts.values()) == 1, counts


@pytest.mark.parametrize(("raw", "reason"), [pytest.param(f, r, id=i) for i, f, r in ATTACKS])
def test_attack_stays_rejected_from_the_cache(raw: Callable[[], bytes], reason: str) -> None:
    """The same kernel key seen again (value None) and the same token again: still rejected."""
    clock = Clock()
    v = verifier(clock=clock)
    r = resolver_with(v, clock=clock)
    value = raw()
    assert r.resolve(1, value, 0, ValueFlag.NONE, Side.SERVER) == REJECTED
    clock.now += 11  # past the retry of the reasons that may pass later
    assert r.resolve(1, None, 0, ValueFlag.NONE, Side.SERVER) == REJECTED
    assert r.resolve(2, value, 0, ValueFlag.NONE, Side.SERVER) == REJECTED
    assert "acme" not in r.tenants()


def test_too_long_token_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier()

    def boom(*_a: Any) -> Any:
        raise AssertionError("a too long token was parsed")

    monkeypatch.setattr(v, "_check", boom)
    monkeypatch.setattr("hashlib.sha256", boom)
    assert v.verify(bearer(sign(claims(pad="x" * MAX_TOKEN_BYTES)))).reason == "too_long"


def test_longest_allowed_token_verifies() -> None:
    pad = ""
    while len(token := sign(claims(pad=pad + "x"))) <= MAX_TOKEN_BYTES:
        pad += "x" * max(1, (MAX_TOKEN_BYTES - len(token)) * 3 // 4)
    token = sign(claims(pad=pad))
    assert MAX_TOKEN_BYTES - 8 <= len(token) <= MAX_TOKEN_BYTES
    assert verifier().verify(bearer(token)).tenant == "acme"


def test_hs_verifier_rejects_rsa_public_key_as_secret() -> None:
    """Even with HS256 allowed (an oct secret configured), the public key is not the secret."""
    secret = b"s" * 32
    v = verifier(parse_jwks(jwks(oct_jwk(secret, "k1")), "oct"), algorithms=("HS256",))
    assert v.verify(bearer(sign(claims(), secret, "HS256"))).tenant == "acme"
    for forged_secret in (public_pem(rsa_key()), rs_jwk_json()):
        token = forge_hmac({"alg": "HS256", "kid": "k1"}, claims(), forged_secret)
        assert v.verify(bearer(token)).reason == "bad_signature"
    assert v.verify(bearer(sign(claims()))).reason == "algorithm"  # RS256 token, HS verifier


def test_an_expiring_token_stops_being_trusted() -> None:
    clock = Clock()
    v = verifier(clock=clock)
    r = resolver_with(v, clock=clock)
    raw = bearer(sign(claims(exp=int(NOW) + 100)))
    assert r.resolve(1, raw, 0, ValueFlag.NONE, Side.SERVER) == TenantIdentity("acme",
                                                                                  Trust.TRUSTED)
    clock.now += 99
    assert r.resolve(1, None, 0, ValueFlag.NONE, Side.SERVER).trust is Trust.TRUSTED
    clock.now += 1  # exp reached
    assert r.resolve(1, None, 0, ValueFlag.NONE, Side.SERVER) == REJECTED
    assert r.resolve(1, raw, 0, ValueFlag.NONE, Side.SERVER) == REJECTED
    assert v.counts()["expired"] == 1


def test_audience_list_in_config_any_match() -> None:
    v = verifier(audience=("a", AUDIENCE))
    assert v.verify(bearer(sign(claims(aud=["x", AUDIENCE])))).tenant == "acme"
    assert v.verify(bearer(sign(claims(aud=["x", "y"])))).reason == "audience"
