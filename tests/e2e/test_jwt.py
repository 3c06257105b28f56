"""Verified JWT tenancy through the real gateway: each distinct token verified once, forgeries
never count for the tenant they claim.

The daemon's FIRST source is a `jwt` source (claim tenant_id, a JWKS file written here with an
RS256 key made here, kid pinned), then the usual X-Tenant-Context (client side, trusted) and
X-Tenant-ID (server side).  The jwt source has no `side`, so it applies on both sides: nginx
forwards `Authorization` upstream, and the client side (nginx -> Backend) is attributed by the
token too, even when nginx's X-Tenant-Context says something else.

Tokens are realistic (about 0.9-1.4 KB: extra claims) and made with pyjwt; each valid token is
used several times, so `tenantwatch_jwt_verify_total{result="ok"}` must grow by the number of
DISTINCT tokens, not requests (the kernel sends each distinct token once, user space verifies
it once).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness.client import WireClient
from harness.metrics import Metrics
from tests.e2e.conftest import NGINX_COMM, Baseline, delta
from tests.e2e.test_tls import TlsClient, make_cert, start_tls_gateway

HOST = "127.0.0.1"
KID = "tw-e2e-k1"
ISSUER = "https://idp.tw-e2e.example/"
VERIFY = "tenantwatch_jwt_verify_total"

CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: {process}}}]
tenancy:
  sources:
    - jwt: {{claim: tenant_id, jwks_file: {jwks}, algorithms: [RS256]}}
    - {{header: X-Tenant-Context, side: client, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
"""


# ---------------------------------------------------------------------------- keys and tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An RS256 key pair (kid KID), its JWKS, and token makers, valid and forged."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.serial = 0

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": KID, "alg": "RS256", "use": "sig"})
        return {"keys": [jwk]}

    def claims(self, tenant: str, exp_in: float = 3600) -> dict:
        """Realistic access-token claims: ~0.9-1.4 KB once signed."""
        self.serial += 1
        now = int(time.time())
        return {
            "iss": ISSUER, "aud": ["api.tw-e2e.example", "billing.tw-e2e.example"],
            "sub": f"user-{self.serial:06d}@{tenant}.example", "tenant_id": tenant,
            "iat": now, "nbf": now - 5, "exp": int(now + exp_in),
            "jti": hashlib.sha256(f"{tenant}{self.serial}".encode()).hexdigest(),
            "scope": " ".join(f"{r}:{a}" for r in ("orders", "invoices", "users", "reports",
                                                   "catalog", "payments")[:3 + self.serial % 4]
                              for a in ("read", "write", "admin")),
            "roles": [f"role-{tenant}-{i}" for i in range(4 + self.serial % 5)],
            "session": {"ip": "203.0.113.7", "ua": "tw-e2e/1.0 " + "x" * (self.serial % 7 * 20),
                        "mfa": True},
        }

    def token(self, tenant: str, **kw) -> str:
        return jwt.encode(self.claims(tenant, **kw), self.key, algorithm="RS256",
                          headers={"kid": KID})

    # -- forgeries, all claiming `tenant`

    def alg_none(self, tenant: str) -> str:
        head = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": KID}).encode())
        return f"{head}.{b64url(json.dumps(self.claims(tenant)).encode())}."

    def hs256_with_public_pem(self, tenant: str) -> str:
        """Algorithm confusion: HMAC keyed with the RSA public key's PEM."""
        head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
        body = b64url(json.dumps(self.claims(tenant)).encode())
        sig = hmac.new(self.public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64url(sig)}"

    def expired(self, tenant: str) -> str:
        return self.token(tenant, exp_in=-3600)

    def other_key(self, tenant: str) -> str:
        """Signed by a key not in the JWKS, under the JWKS's kid."""
        return jwt.encode(self.claims(tenant), self.other, algorithm="RS256",
                          headers={"kid": KID})

    def tampered(self, tenant: str, to: str) -> str:
        """A valid token of `tenant` whose payload was edited to claim `to` (signature kept)."""
        head, _, sig = self.token(tenant).split(".")
        claims = self.claims(to)
        return f"{head}.{b64url(json.dumps(claims).encode())}.{sig}"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def e2e_gateway(tmp_path_factory, e2e_backend, nginx_binary, tls_cert):
    cert, key = tls_cert
    gw = start_tls_gateway(tmp_path_factory.mktemp("gw"), e2e_backend.port, nginx_binary,
                           cert, key)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def daemon(daemon_factory, e2e_gateway, issuer, tmp_path_factory):
    """The module's daemon: the jwt source first (overrides conftest's standard daemon)."""
    jwks = tmp_path_factory.mktemp("keys") / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    d = daemon_factory(start=False)
    d.config_text = CONFIG.format(port=d.port, process=NGINX_COMM, jwks=jwks)
    return d.start()


@pytest.fixture
def base(daemon):
    """Counts before the test, every label (the module's daemon is this module's alone)."""
    b = Baseline(daemon, "")
    yield b
    if not b.settled:
        daemon.wait_ticks(2)


def verify_delta(b: Baseline) -> Counter:
    return delta(Counter({lab["result"]: int(v) for lab, v in b.last.samples(VERIFY)}),
                 Counter({lab["result"]: int(v) for lab, v in b.before.samples(VERIFY)}))


def trusted_of(daemon, tenant: str) -> dict[str, bool]:
    """{side: trusted} of `tenant` in /api/v1/tenants."""
    return {e["side"]: e["trusted"] for e in daemon.tenants_json()["tenants"]
            if e["tenant"] == tenant}


# ---------------------------------------------------------------------------- tests


def test_token_sizes_are_realistic(issuer):
    sizes = [len(issuer.token(t)) for t in ("acme", "globex") for _ in range(6)]
    assert 600 <= min(sizes) and max(sizes) <= 1500, sizes


def test_verified_tenants_exact_each_token_verified_once(e2e_gateway, fresh_backend, daemon,
                                                         base, issuer):
    acme = [issuer.token("acme") for _ in range(3)]
    globex = [issuer.token("globex") for _ in range(2)]
    assert len(set(acme + globex)) == 5
    results: Counter = Counter()
    with WireClient(HOST, e2e_gateway.listen_port) as c1, \
            WireClient(HOST, e2e_gateway.listen_port) as c2:
        for rnd in range(4):
            for i, tok in enumerate(acme):
                cl = (c1, c2)[(rnd + i) % 2]
                # the token wins over a contradicting X-Tenant-ID (which nginx then also sends
                # upstream as X-Tenant-Context): the claim is verified, the header is not
                hdr = "globex" if rnd == 3 else None
                results[("acme", cl.request(hdr, headers=bearer(tok)))] += 1
        for rnd in range(5):
            for i, tok in enumerate(globex):
                path = "/status/404" if rnd == 4 and i == 0 else "/"
                results[("globex", (c1, c2)[i].request(None, path, headers=bearer(tok)))] += 1
        assert c1.connects == 1 and c2.connects == 1
    assert results == Counter({("acme", 200): 12, ("globex", 200): 9, ("globex", 404): 1})

    expected = Counter()
    for (t, status), n in results.items():
        for side in ("server", "client"):
            expected[(side, t, f"{status // 100}xx")] += n
    got = base.settle(expected)
    assert got == expected
    # what the Backend saw: nginx's X-Tenant-Context, "globex" for the acme requests that
    # claimed it in X-Tenant-ID; tenantwatch counted them under their verified token
    assert fresh_backend.received == Counter({"common": 19, "globex": 3})
    assert verify_delta(base) == Counter({"ok": 5}), "each distinct token verified once"
    assert base.rejected() == Counter()
    assert base.lost() == Counter()
    assert trusted_of(daemon, "acme") == {"server": True, "client": True}
    assert trusted_of(daemon, "globex") == {"server": True, "client": True}


def test_forged_tokens_are_invalid_never_the_claimed_tenant(e2e_gateway, fresh_backend, daemon,
                                                             base, issuer):
    forged = {
        "alg_none": (issuer.alg_none("acme"), "algorithm"),
        "hs256_public_pem": (issuer.hs256_with_public_pem("acme"), "algorithm"),
        "expired": (issuer.expired("acme"), "expired"),
        "other_key": (issuer.other_key("acme"), "bad_signature"),
        "tampered": (issuer.tampered("globex", "acme"), "bad_signature"),
    }
    uses = 3
    with WireClient(HOST, e2e_gateway.listen_port) as cl:
        for _ in range(uses):
            for tok, _ in forged.values():
                # X-Tenant-ID agrees with the forged claim: no fallback to it either
                assert cl.request("acme", headers=bearer(tok)) == 200
    n = uses * len(forged)
    expected = Counter({("server", "__invalid__", "2xx"): n, ("client", "__invalid__", "2xx"): n})
    got = base.settle(expected)
    assert got == expected, "a forged token never counts for acme (nor globex)"
    assert fresh_backend.received == Counter({"acme": n})  # nginx's map trusted the header
    want = Counter()
    for _, reason in forged.values():
        want[reason] += 1
    assert verify_delta(base) == want, "each distinct forged token verified (and rejected) once"
    assert base.rejected() == Counter({"jwt": 2 * n}), "one rejection per request and side"
    assert base.lost() == Counter()
    m: Metrics = base.last
    assert m.requests("server", "acme") == base.before.requests("server", "acme")


def test_verified_tokens_over_tls(e2e_gateway, fresh_backend, daemon, base, issuer, tls_cert):
    cert, _ = tls_cert
    toks = [issuer.token("acme"), issuer.token("globex")]
    with TlsClient(HOST, e2e_gateway.tls_port, cert) as cl:
        for _ in range(3):
            for tok in toks:
                assert cl.request(None, headers=bearer(tok)) == 200
        bad = issuer.other_key("acme")
        assert cl.request("acme", headers=bearer(bad)) == 200
    expected = Counter()
    for side in ("server", "client"):
        expected.update({(side, "acme", "2xx"): 3, (side, "globex", "2xx"): 3,
                         (side, "__invalid__", "2xx"): 1})
    got = base.settle(expected)
    assert got == expected
    assert verify_delta(base) == Counter({"ok": 2, "bad_signature": 1})
    assert base.lost() == Counter()
