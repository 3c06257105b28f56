"""Keys, tokens and fakes shared by the JWT tests (keys made once per test session)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tenantwatch.config import DEFAULT_PATTERN, JwtSettings, Source, Tenancy
from tenantwatch.identity import IdentityResolver
from tenantwatch.identity.jwks import KeySet, StaticKeySource, parse_jwks, parse_pem
from tenantwatch.identity.jwt_verifier import JwtVerifier

NOW = 1_800_000_000.0  # the fake wall clock's start (2027-01-15)
ISSUER = "https://issuer.example"
AUDIENCE = "tenantwatch"


class Clock:
    """A settable clock, shared by a verifier (wall time) and a resolver in the tests."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    """RSA 2048 private key number ``n`` (generated once per session)."""
    return _rsa_key(n)


@functools.cache
def _rsa_key(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def public_jwk(key: Any, kid: str | None = "k1", **extra: Any) -> dict[str, Any]:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
    jwk.pop("key_ops", None)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def jwks(*jwk: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(jwk)}


def claims(**kw: Any) -> dict[str, Any]:
    """Good claims for acme, valid from NOW - 60 for an hour; kw overrides (None removes)."""
    out: dict[str, Any] = {"tenant_id": "acme", "iss": ISSUER, "aud": AUDIENCE,
                           "iat": int(NOW) - 60, "nbf": int(NOW) - 60, "exp": int(NOW) + 3600}
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = None, alg: str = "RS256",
         kid: str | None = "k1", **headers: Any) -> str:
    hdr = dict(headers)
    if kid is not None:
        hdr["kid"] = kid
    return jwt.encode(payload, key if key is not None else rsa_key(), algorithm=alg,
                      headers=hdr)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: Any, signature: bytes = b"") -> str:
    """A token assembled by hand (no library check on the key or algorithm)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64(json.dumps(header).encode())}.{b64(body)}.{b64(signature)}"


def forge_hmac(header: dict[str, Any], payload: Any, secret: bytes) -> str:
    """A token MACed with ``secret`` by hand (pyjwt refuses a PEM-looking HMAC secret)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


def rsa_keys() -> KeySet:
    return parse_jwks(jwks(public_jwk(rsa_key())), "RSA")


def verifier(keys: KeySet | None = None, algorithms: tuple[str, ...] = ("RS256",),
             clock: Clock | None = None, source: Any = None, **kw: Any) -> JwtVerifier:
    """A verifier of RS256 tokens from rsa_key() (kid k1), with iss and aud checked."""
    kw.setdefault("issuer", ISSUER)
    kw.setdefault("audience", AUDIENCE)
    src = source if source is not None else StaticKeySource(
        keys if keys is not None else rsa_keys())
    return JwtVerifier(src, algorithms, clock=clock or Clock(), **kw)


def pem_verifier(clock: Clock | None = None) -> JwtVerifier:
    return verifier(parse_pem(public_pem(rsa_key()), "RSA"), clock=clock)


JWT_SOURCE = Source("jwt", "authorization", None, False,
                    jwt=JwtSettings(claim="tenant_id", jwks_file="/etc/tenantwatch/jwks.json"))


def resolver_with(v: JwtVerifier, clock: Clock | None = None, **tenancy: Any
                  ) -> IdentityResolver:
    """A resolver whose only source (index 0) is a jwt source verified by ``v``."""
    args: dict[str, Any] = {"sources": (JWT_SOURCE,), "pattern": DEFAULT_PATTERN,
                            "tenants": (), "max_tenants": 1000, "default": "common",
                            "idle_seconds": 300.0}
    args.update(tenancy)
    return IdentityResolver(Tenancy(**args), clock=clock or Clock(), verifiers={0: v})
