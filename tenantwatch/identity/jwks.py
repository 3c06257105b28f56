"""Key sources for JWT verification: a JWKS file, a JWKS URL, or PEM public keys.

Takes the configured key location and the one algorithm family the allow-list permits; gives a
``KeySet`` (frozen, swapped whole) through ``KeySource.current()``.  Keys of another family are
never loaded, so a key can only ever be used the way its algorithm family reads it: an HMAC
secret comes only from a JWKS ``oct`` key, never from a PEM or public key (the algorithm
confusion of CVE-2022-29217 needs exactly that).

``JwksUrlSource`` fetches in one background thread: at start, then every ``refresh_seconds``; a
verifier that meets an unknown ``kid`` may ask for one early fetch, granted at most once per
``early_refresh_seconds``.  A failed fetch or a bad response keeps the last good set.  Nothing
is fetched on the request path.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from tenantwatch.config.constants import FAMILIES, FAMILY_OF
from tenantwatch.config.records import JwtSettings
from tenantwatch.errors import TenantwatchError

log = logging.getLogger(__name__)

# The algorithm families (FAMILIES, FAMILY_OF) and the shortest jwks_refresh_seconds
# (MIN_REFRESH_SECONDS) are config's, in config/constants.py: the config file is checked
# against them before any key is loaded.

# Identity providers publish 2-4 keys (current, next, one being retired); 32 leaves room for
# several overlapping rotations while bounding what one token without a kid can cost (every
# key of the family is tried once).
MAX_KEYS = 32
# A JWKS document of MAX_KEYS 4096-bit RSA keys is ~30 KB; 1 MiB refuses a runaway response.
MAX_JWKS_BYTES = 1 << 20
FETCH_TIMEOUT_SECONDS = 5.0  # one slow IdP must not hold the fetch thread for long
DEFAULT_REFRESH_SECONDS = JwtSettings.jwks_refresh_seconds  # the one copy is config's
# An unknown kid may bring the next fetch forward, at most once per this: a rotated key is
# picked up within 30 s, and a flood of made-up kids costs the IdP two fetches a minute.
EARLY_REFRESH_SECONDS = 30.0
# After a failed fetch, retry this soon (or at refresh_seconds if that is sooner).
RETRY_SECONDS = 30.0


class JwksError(TenantwatchError):
    """A key file or JWKS document cannot be read, parsed, or holds no usable key."""


@dataclass(frozen=True)
class VerifyKey:
    """One public key (or HMAC secret) with what the JWKS says about it."""

    kid: str | None
    family: str  # "RSA" | "EC" | "OKP" | "oct"
    alg: str | None  # the JWK's "alg": the only algorithm it may verify, when set
    key: Any  # a cryptography public key object, or bytes for an oct key


@dataclass(frozen=True)
class KeySet:
    """The keys of one family that tokens are checked against; replaced whole on refresh."""

    keys: tuple[VerifyKey, ...]

    def candidates(self, kid: str | None) -> tuple[VerifyKey, ...]:
        """The keys a token with ``kid`` may be signed with; empty: unknown kid.

        A token without a kid may be signed with any key; a key without a kid (PEM keys, some
        JWKS) matches any token.
        """
        if kid is None:
            return self.keys
        return tuple(k for k in self.keys if k.kid == kid or k.kid is None)


class KeySource(ABC):
    """Where the current KeySet comes from; ``current()`` is called on the request path."""

    @abstractmethod
    def current(self) -> KeySet | None:
        """The last good key set, or None before one was loaded.  Never blocks."""

    def start(self) -> None:
        """Load the keys or begin fetching them (idempotent); may raise JwksError."""

    def stop(self) -> None:
        """Stop background work (idempotent)."""

    def request_refresh(self) -> None:
        """A token named a kid the set does not have: fetch early if the throttle allows."""


class StaticKeySource(KeySource):
    """A fixed key set, or one loaded by ``loader`` at start (a file): also the test fake."""

    def __init__(self, keys: KeySet | None = None,
                 loader: Callable[[], KeySet] | None = None) -> None:
        self._keys = keys
        self._loader = loader

    def current(self) -> KeySet | None:
        return self._keys

    def start(self) -> None:
        if self._loader is not None and self._keys is None:
            self._keys = self._loader()


class JwksUrlSource(KeySource):
    """A JWKS document fetched over HTTP(S) by one background thread (see the module doc)."""

    def __init__(self, url: str, family: str, algorithms: Sequence[str] = (), *,
                 refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
                 early_refresh_seconds: float = EARLY_REFRESH_SECONDS,
                 retry_seconds: float = RETRY_SECONDS,
                 timeout_seconds: float = FETCH_TIMEOUT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._family = family
        self._algorithms = tuple(algorithms)
        self._refresh = refresh_seconds
        self._early = early_refresh_seconds
        self._retry = min(retry_seconds, refresh_seconds)
        self._timeout = timeout_seconds
        self._clock = clock
        self._keys: KeySet | None = None
        self._document: Any = None  # the parsed JSON of the current set, to spot changes
        self._last_attempt = -float("inf")
        self._failing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loaded = threading.Event()  # set once the first good set is in
        self.fetches = 0  # attempts, for tests and logs

    def current(self) -> KeySet | None:
        return self._keys

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tenantwatch-jwks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 1.0)
            self._thread = None

    def request_refresh(self) -> None:
        if self._clock() - self._last_attempt >= self._early:
            self._wake.set()  # cheap: the fetch happens in the background thread

    def refresh(self) -> bool:
        """Fetch once now; True when a good set is in place afterwards from this fetch."""
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            document = self._fetch()
            keys = parse_jwks(document, self._family, self._algorithms, self.url)
        except JwksError as e:
            if not self._failing:
                kept = "keeping the last good key set" if self._keys is not None \
                    else "no key set yet: JWTs are not trusted until a fetch succeeds"
                log.warning("JWKS fetch failed, %s (retrying every %gs): %s",
                            kept, self._retry, e)
            self._failing = True
            return False
        if self._failing:
            log.info("JWKS fetch from %s works again", self.url)
        self._failing = False
        if document != self._document:
            if self._keys is not None:
                log.info("JWKS key set from %s changed: %d keys", self.url, len(keys.keys))
            self._document = document
            self._keys = keys
        self.loaded.set()
        return True

    def _run(self) -> None:
        next_due = self._clock()  # first fetch at once
        while not self._stop.is_set():
            if self._clock() >= next_due:
                ok = self.refresh()
                next_due = self._clock() + (self._refresh if ok else self._retry)
            early = self._wake.wait(timeout=max(0.0, next_due - self._clock()))
            if self._stop.is_set():
                return
            if early:
                self._wake.clear()
                next_due = min(next_due, self._last_attempt + self._early)

    def _fetch(self) -> Any:
        request = urllib.request.Request(self.url, headers={
            "Accept": "application/jwk-set+json, application/json",
            "User-Agent": "tenantwatch-jwks"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                body = response.read(MAX_JWKS_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise JwksError(f"{self.url}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise JwksError(f"{self.url}: {reason}") from None
        if len(body) > MAX_JWKS_BYTES:
            raise JwksError(f"{self.url}: response larger than {MAX_JWKS_BYTES} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:
            raise JwksError(f"{self.url}: not JSON: {e}") from None


# --- loading ---------------------------------------------------------------------------------


def load_jwks_file(path: str, family: str, algorithms: Sequence[str] = ()) -> KeySet:
    """The usable keys of the JWKS document in ``path``; JwksError when there are none."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JWKS_BYTES + 1)
    except OSError as e:
        raise JwksError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_JWKS_BYTES:
        raise JwksError(f"{path}: larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise JwksError(f"{path}: not JSON: {e}") from None
    return parse_jwks(document, family, algorithms, path)


def parse_jwks(document: Any, family: str, algorithms: Sequence[str] = (),
               where: str = "JWKS") -> KeySet:
    """The keys of ``family`` in a JWKS document ({"keys": [...]}) that may verify signatures.

    Skips, with one warning per document: keys of other families, keys whose ``use`` is not
    ``sig``, keys whose ``alg`` is not in ``algorithms`` (when given), unparsable keys.
    """
    import jwt  # pyjwt; the verifier checks its version before any source is built

    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError(f"{where}: expected a JWKS document {{\"keys\": [...]}}")
    keys: list[VerifyKey] = []
    skipped: list[str] = []
    for i, jwk in enumerate(document["keys"]):
        name = f"keys[{i}]"
        if not isinstance(jwk, dict):
            skipped.append(f"{name}: not an object")
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            skipped.append(f"{name}: kid is not a string")
            continue
        name = f"{name} (kid {kid})" if kid else name
        alg = jwk.get("alg")
        if jwk.get("kty") != family:
            skipped.append(f"{name}: kty {jwk.get('kty')!r} is not {family}")
        elif jwk.get("use", "sig") != "sig":
            skipped.append(f"{name}: use {jwk.get('use')!r} is not sig")
        elif alg is not None and (not isinstance(alg, str) or FAMILY_OF.get(alg) != family
                                  or (algorithms and alg not in algorithms)):
            skipped.append(f"{name}: alg {alg!r} is not allowed")
        elif len(keys) >= MAX_KEYS:
            skipped.append(f"{name}: more than {MAX_KEYS} keys")
        else:
            try:
                key = jwt.PyJWK(jwk).key
            except (jwt.exceptions.PyJWTError, ValueError, TypeError, KeyError) as e:
                skipped.append(f"{name}: {e}")
                continue
            if family == "oct" and not (isinstance(key, bytes) and key):
                skipped.append(f"{name}: empty secret")
                continue
            keys.append(VerifyKey(kid=kid, family=family, alg=alg, key=key))
    if skipped:
        log.warning("%s: skipped %d JWK(s): %s", where, len(skipped), "; ".join(skipped[:5]))
    if not keys:
        raise JwksError(f"{where}: no usable {family} key for algorithms "
                        f"{', '.join(algorithms) or FAMILIES[family][0]}")
    return KeySet(tuple(keys))


def load_pem_file(path: str, family: str) -> KeySet:
    """The public keys (or certificates' keys) in the PEM file ``path``, all of ``family``."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JWKS_BYTES + 1)
    except OSError as e:
        raise JwksError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_pem(data, family, path)


def parse_pem(data: bytes, family: str, where: str = "PEM") -> KeySet:
    """Public keys from PEM blocks (PUBLIC KEY, RSA PUBLIC KEY, CERTIFICATE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if family == "oct":
        raise JwksError(f"{where}: HS* algorithms need a shared secret from a JWKS oct key; "
                        "a PEM file holds public keys")
    types = {"RSA": rsa.RSAPublicKey, "EC": ec.EllipticCurvePublicKey,
             "OKP": ed25519.Ed25519PublicKey}
    keys: list[VerifyKey] = []
    for label, block in _pem_blocks(data):
        if "PRIVATE" in label:
            raise JwksError(f"{where}: holds a private key ({label}); give only the public key")
        try:
            if label == "CERTIFICATE":
                key = x509.load_pem_x509_certificate(block).public_key()
            elif label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                key = serialization.load_pem_public_key(block)
            else:
                continue  # parameters and the like
        except ValueError as e:
            raise JwksError(f"{where}: cannot parse a {label} block: {e}") from None
        if not isinstance(key, types[family]):
            raise JwksError(f"{where}: a {type(key).__name__} does not fit algorithms of "
                            f"family {family}")
        if len(keys) >= MAX_KEYS:
            raise JwksError(f"{where}: more than {MAX_KEYS} keys")
        keys.append(VerifyKey(kid=None, family=family, alg=None, key=key))
    if not keys:
        raise JwksError(f"{where}: no PEM public key or certificate found")
    return KeySet(tuple(keys))


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    blocks = []
    rest = data
    while True:
        start = rest.find(b"-----BEGIN ")
        if start < 0:
            return blocks
        head_end = rest.find(b"-----", start + 11)
        if head_end < 0:
            return blocks
        label = rest[start + 11:head_end].decode("ascii", "replace").strip()
        end_marker = b"-----END " + label.encode() + b"-----"
        end = rest.find(end_marker, head_end)
        if end < 0:
            raise JwksError(f"PEM block {label} has no END line")
        stop = end + len(end_marker)
        blocks.append((label, rest[start:stop] + b"\n"))
        rest = rest[stop:]


def oct_jwk(secret: bytes, kid: str | None = None) -> dict[str, str]:
    """A JWK for an HMAC secret (for tests and tooling)."""
    jwk = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}
    if kid is not None:
        jwk["kid"] = kid
    return jwk
