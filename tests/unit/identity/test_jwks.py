"""Key sources: JWKS documents and files, PEM files, and a JWKS URL served by a real local HTTP
server (initial fetch, refresh throttling, outages keep the last good set, no fetch per request)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tenantwatch.config.constants import MIN_REFRESH_SECONDS
from tenantwatch.identity import jwks as jwks_module
from tenantwatch.identity.jwks import (
    MAX_JWKS_BYTES,
    MAX_KEYS,
    JwksError,
    JwksUrlSource,
    KeySet,
    VerifyKey,
    load_jwks_file,
    load_pem_file,
    oct_jwk,
    parse_jwks,
    parse_pem,
)
from tests.unit.identity.jwt_helpers import (
    Clock,
    bearer,
    claims,
    ec_key,
    ed_key,
    jwks,
    public_jwk,
    public_pem,
    rsa_key,
    sign,
    verifier,
)

# --- JWKS documents --------------------------------------------------------------------------


def test_parse_jwks_keeps_only_usable_keys_of_the_family(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    doc = jwks(
        public_jwk(rsa_key(), "rsa"),
        public_jwk(ec_key(), "ec"),
        oct_jwk(b"secret", "hmac"),
        public_jwk(rsa_key(1), "enc", use="enc"),
        public_jwk(rsa_key(1), "ps", alg="PS256"),
        public_jwk(rsa_key(1), "hs", alg="HS256"),
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not a key",
        public_jwk(rsa_key(1), kid=None),
    )
    with caplog.at_level(logging.WARNING):
        keys = parse_jwks(doc, "RSA", ("RS256",))
    assert [k.kid for k in keys.keys] == ["rsa", None]
    assert all(k.family == "RSA" for k in keys.keys)
    assert caplog.text.count("skipped 7 JWK(s)") == 1  # one line, not one per key


def test_parse_jwks_allows_pinned_alg_in_the_list() -> None:
    keys = parse_jwks(jwks(public_jwk(rsa_key(), "ps", alg="PS256")), "RSA", ("RS256", "PS256"))
    assert keys.keys[0].alg == "PS256"


def test_oct_keys_only_for_hmac() -> None:
    doc = jwks(oct_jwk(b"s" * 32, "h"), public_jwk(rsa_key(), "r"))
    keys = parse_jwks(doc, "oct")
    assert [(k.kid, k.key) for k in keys.keys] == [("h", b"s" * 32)]
    with pytest.raises(JwksError, match="no usable oct key"):
        parse_jwks(jwks(public_jwk(rsa_key())), "oct")
    with pytest.raises(JwksError, match="no usable"):
        parse_jwks(jwks({"kty": "oct", "k": ""}), "oct")


@pytest.mark.parametrize("doc", [[], {}, {"keys": "x"}, {"keys": []}, "keys", None])
def test_parse_jwks_rejects_documents_without_keys(doc: Any) -> None:
    with pytest.raises(JwksError):
        parse_jwks(doc, "RSA")


def test_parse_jwks_bounds_the_number_of_keys() -> None:
    doc = jwks(*[public_jwk(rsa_key(), f"k{i}") for i in range(MAX_KEYS + 5)])
    assert len(parse_jwks(doc, "RSA").keys) == MAX_KEYS


def test_other_families_parse() -> None:
    assert parse_jwks(jwks(public_jwk(ec_key())), "EC").keys[0].family == "EC"
    assert parse_jwks(jwks(public_jwk(ed_key())), "OKP").keys[0].family == "OKP"


def test_candidates() -> None:
    a, b, anon = (VerifyKey("a", "RSA", None, 1), VerifyKey("b", "RSA", None, 2),
                  VerifyKey(None, "RSA", None, 3))
    assert KeySet((a, b)).candidates("a") == (a,)
    assert KeySet((a, b)).candidates("c") == ()
    assert KeySet((a, b)).candidates(None) == (a, b)
    assert KeySet((a, anon)).candidates("c") == (anon,)


def test_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(public_jwk(rsa_key()))))
    assert load_jwks_file(str(path), "RSA").keys[0].kid == "k1"
    with pytest.raises(JwksError, match="cannot read"):
        load_jwks_file(str(tmp_path / "missing.json"), "RSA")
    path.write_text("{not json")
    with pytest.raises(JwksError, match="not JSON"):
        load_jwks_file(str(path), "RSA")
    path.write_bytes(b" " * (MAX_JWKS_BYTES + 1))
    with pytest.raises(JwksError, match="larger than"):
        load_jwks_file(str(path), "RSA")


# --- PEM -------------------------------------------------------------------------------------


def certificate_pem() -> bytes:
    import datetime

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.example")])
    now = datetime.datetime(2026, 1, 1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(rsa_key().public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .sign(rsa_key(), hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_pem_public_keys_and_certificates(tmp_path: Path) -> None:
    path = tmp_path / "keys.pem"
    path.write_bytes(public_pem(rsa_key()) + b"\n" + certificate_pem() + public_pem(rsa_key(1)))
    keys = load_pem_file(str(path), "RSA")
    assert len(keys.keys) == 3
    assert all(k.kid is None for k in keys.keys)
    v = verifier(keys)
    assert v.verify(bearer(sign(claims(), rsa_key(1), kid="anything"))).tenant == "acme"


def test_pkcs1_rsa_public_key() -> None:
    pem = rsa_key().public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.PKCS1)
    assert pem.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    assert len(parse_pem(pem, "RSA").keys) == 1


def test_pem_refuses_private_keys_wrong_families_and_hmac() -> None:
    private = rsa_key().private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    with pytest.raises(JwksError, match="private key"):
        parse_pem(private, "RSA")
    with pytest.raises(JwksError, match="does not fit"):
        parse_pem(public_pem(ec_key()), "RSA")
    with pytest.raises(JwksError, match="does not fit"):
        parse_pem(public_pem(rsa_key()), "OKP")
    with pytest.raises(JwksError, match="HS"):
        parse_pem(public_pem(rsa_key()), "oct")
    with pytest.raises(JwksError, match="no PEM public key"):
        parse_pem(b"hello", "RSA")
    with pytest.raises(JwksError, match="no END"):
        parse_pem(public_pem(rsa_key())[:-30], "RSA")
    assert len(parse_pem(public_pem(ec_key()), "EC").keys) == 1
    assert len(parse_pem(public_pem(ed_key()), "OKP").keys) == 1


def test_missing_pem_file(tmp_path: Path) -> None:
    with pytest.raises(JwksError, match="cannot read"):
        load_pem_file(str(tmp_path / "nope.pem"), "RSA")


# --- JWKS URL: a real HTTP server on 127.0.0.1 -----------------------------------------------


class JwksServer(ThreadingHTTPServer):
    """Serves ``body`` with ``status``; counts the requests it answered."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body: bytes = json.dumps(jwks(public_jwk(rsa_key()))).encode()
        self.status = 200
        self.hits = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/.well-known/jwks.json"

    def serve(self, doc: Any) -> None:
        self.body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()


class _Handler(BaseHTTPRequestHandler):
    server: JwksServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.hits += 1
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def sources() -> Iterator[list[JwksUrlSource]]:
    started: list[JwksUrlSource] = []
    yield started
    for s in started:
        s.stop()


def url_source(server: JwksServer, started: list[JwksUrlSource], **kw: Any) -> JwksUrlSource:
    kw.setdefault("timeout_seconds", 2.0)
    s = JwksUrlSource(server.url, "RSA", ("RS256",), **kw)
    started.append(s)
    return s


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_initial_fetch_in_the_background(server: JwksServer, sources: list) -> None:
    source = url_source(server, sources)
    v = verifier(source=source)
    assert v.verify(bearer(sign(claims()))).reason == "no_keys"  # nothing fetched yet
    assert server.hits == 0
    v.start()
    assert source.loaded.wait(5)
    assert server.hits == 1
    assert v.verify(bearer(sign(claims(jti="2")))).tenant == "acme"
    v.stop()
    assert source._thread is None
    v.stop()  # idempotent


def test_refresh_is_throttled(server: JwksServer, sources: list) -> None:
    source = url_source(server, sources, refresh_seconds=0.3, early_refresh_seconds=100)
    source.start()
    assert source.loaded.wait(5)
    time.sleep(1.0)
    source.stop()
    # about 1 + 1.0 / 0.3 fetches: periodic, and never more often than refresh_seconds
    assert 2 <= server.hits <= 5, server.hits
    slow = url_source(server, sources, refresh_seconds=10)
    before = server.hits
    slow.start()
    assert slow.loaded.wait(5)
    time.sleep(0.5)
    assert server.hits - before == 1


def test_unknown_kid_does_not_fetch_per_request(server: JwksServer, sources: list) -> None:
    source = url_source(server, sources, refresh_seconds=3600, early_refresh_seconds=3600)
    v = verifier(source=source)
    v.start()
    assert source.loaded.wait(5)
    for i in range(200):
        token = sign(claims(jti=str(i)), rsa_key(1), kid=f"made-up-{i}")
        assert v.verify(bearer(token)).reason == "unknown_kid"
    time.sleep(0.3)
    assert server.hits == 1
    assert v.counts()["unknown_kid"] == 200


def test_unknown_kid_brings_one_early_refresh(server: JwksServer, sources: list) -> None:
    clock = Clock()
    source = url_source(server, sources, refresh_seconds=3600, early_refresh_seconds=0.5)
    v = verifier(source=source, clock=clock)
    v.start()
    assert source.loaded.wait(5)
    server.serve(jwks(public_jwk(rsa_key()), public_jwk(rsa_key(1), "next")))  # rotation
    raw = bearer(sign(claims(), rsa_key(1), kid="next"))
    time.sleep(0.6)
    for i in range(100):  # a burst: at most one early fetch
        v.verify(bearer(sign(claims(jti=str(i)), rsa_key(1), kid="next")))
    assert wait_for(lambda: server.hits == 2)
    time.sleep(0.3)
    assert server.hits == 2
    assert wait_for(lambda: v.verify(raw).tenant == "acme")  # new set: the cache is stale


def test_outage_keeps_the_last_good_set(server: JwksServer, sources: list,
                                        caplog: pytest.LogCaptureFixture) -> None:
    source = url_source(server, sources, refresh_seconds=3600)
    assert source.refresh()
    good = source.current()
    assert good is not None
    with caplog.at_level(logging.WARNING):
        server.status = 500
        assert not source.refresh()
        server.status = 200
        for bad in (b"<html>oops</html>", {"keys": []}, {"keys": [public_jwk(ec_key())]},
                    b"[" * 100000, b" " * (MAX_JWKS_BYTES + 1)):
            server.serve(bad)
            assert not source.refresh()
            assert source.current() is good
    assert caplog.text.count("JWKS fetch failed") == 1  # once per outage, not per attempt
    assert "keeping the last good key set" in caplog.text
    server.shutdown()
    server.server_close()
    assert not source.refresh()  # connection refused
    assert source.current() is good
    v = verifier(source=source)
    assert v.verify(bearer(sign(claims()))).tenant == "acme"


def test_recovery_and_change(server: JwksServer, sources: list,
                             caplog: pytest.LogCaptureFixture) -> None:
    source = url_source(server, sources, refresh_seconds=3600)
    server.status = 503
    with caplog.at_level(logging.WARNING):
        assert not source.refresh()
    assert "no key set yet" in caplog.text
    assert source.current() is None
    server.status = 200
    assert source.refresh()
    first = source.current()
    assert source.refresh()
    assert source.current() is first  # same document: same set, cached answers stay valid
    server.serve(jwks(public_jwk(rsa_key(1), "k2")))
    assert source.refresh()
    assert source.current() is not first
    assert [k.kid for k in source.current().keys] == ["k2"]  # type: ignore[union-attr]


def test_failed_fetch_retries_sooner(server: JwksServer, sources: list) -> None:
    server.status = 500
    source = url_source(server, sources, refresh_seconds=3600, retry_seconds=0.2)
    source.start()
    assert wait_for(lambda: server.hits >= 3, timeout=3)
    server.status = 200
    assert source.loaded.wait(3)
    hits = server.hits
    time.sleep(0.5)
    assert server.hits == hits  # back to refresh_seconds once it works


def test_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        JwksUrlSource("file:///etc/passwd", "RSA")


def test_constants_are_sane() -> None:
    assert MIN_REFRESH_SECONDS == 10
    assert jwks_module.DEFAULT_REFRESH_SECONDS == 300
    assert jwks_module.EARLY_REFRESH_SECONDS >= MIN_REFRESH_SECONDS
