"""JWT verification: an ``Authorization`` header value -> a verified tenant claim, or why not.

Takes the raw header value (``b"Bearer eyJ..."``) of a ``jwt`` identity source that has a key
source (jwks_file, jwks_url or pem_file); gives a ``VerifyResult``: the tenant claim when the
signature verifies with a key of the one allowed algorithm family, ``exp``/``nbf`` hold (with
``leeway_seconds``), ``aud`` (when configured) and ``iss`` (when configured, exact string
match) fit and the claim is a string.  Otherwise the tenant is None and ``reason`` says why
(``VERIFY_RESULTS``, the label values of ``tenantwatch_jwt_verify_total{result}``).

Cost: each distinct token is verified once; the result is kept in an LRU of ``cache_size``
entries keyed by the SHA-256 of the token (32 bytes, not the token), until the token's ``exp``
and at most ``CACHE_SECONDS``, so a repeated token costs a hash and a dict lookup.  A token
longer than ``MAX_TOKEN_BYTES`` is rejected before it is parsed or hashed.  A key set change
(a JWKS refresh that brought different keys) makes every cached answer stale.

Thread use: ``verify`` runs on the daemon's tick thread; a JwksUrlSource swaps key sets from
its fetch thread (one reference assignment); ``counts`` may be read from a scrape thread.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tenantwatch.config.constants import FAMILY_OF
from tenantwatch.errors import TenantwatchError
from tenantwatch.identity.jwks import (
    JwksError,
    JwksUrlSource,
    KeySet,
    KeySource,
    StaticKeySource,
    VerifyKey,
    load_jwks_file,
    load_pem_file,
)

if TYPE_CHECKING:
    from tenantwatch.config import JwtSettings, Source

log = logging.getLogger(__name__)

MIN_PYJWT = (2, 10, 1)  # 2.4.0: CVE-2022-29217 (algorithm confusion); 2.10.1: CVE-2024-53861
# (issuer partial match).  Checked again at run time: an older pyjwt on sys.path is refused.

# Identity providers' access tokens are 0.5-2 KB; 8 KiB is nginx's default
# large_client_header_buffers size, so a longer Authorization header never reaches an upstream.
MAX_TOKEN_BYTES = 8192
# Distinct tokens remembered: 16384 entries of ~370 bytes (digest, result, deadlines; measured
# with tracemalloc) = ~6 MB.  More distinct live tokens than this only costs re-verification
# (~250 us for RS256 through pyjwt; a cache hit is ~3 us).
CACHE_SIZE = 16384
# An answer is re-checked at least this often, so a key removed from the JWKS stops a token
# within 5 minutes even when the key set document is unchanged elsewhere.
CACHE_SECONDS = 300.0
# A token rejected for a reason that can pass later (unknown kid, no keys yet, not yet valid)
# is tried again after this long.
RETRY_SECONDS = 10.0

OK = "ok"
VERIFY_RESULTS = (
    OK,
    "malformed",  # not "Bearer" + three base64url parts of JSON
    "too_long",  # longer than MAX_TOKEN_BYTES, not parsed
    "algorithm",  # alg not in the allow-list (alg none included), or not what the key allows
    "unknown_kid",  # no key with the token's kid
    "bad_signature",
    "expired",  # exp + leeway is past
    "not_yet_valid",  # nbf - leeway is in the future
    "audience",  # aud does not name a configured audience (or is missing)
    "issuer",  # iss is not exactly the configured issuer (or is missing)
    "claim",  # the tenant claim is missing or not a string
    "no_keys",  # no key set loaded yet (or pyjwt unusable)
)
# Reasons that can change for the same token without the token changing.
TRANSIENT = frozenset(("unknown_kid", "no_keys", "not_yet_valid"))


class JwtSupportError(TenantwatchError):
    """The installed pyjwt or cryptography cannot verify tokens safely (missing or too old)."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying one token."""

    tenant: str | None  # the claim, set only when reason == "ok"
    reason: str  # one of VERIFY_RESULTS
    ttl_seconds: float = 0.0  # how long this answer holds; inf: it never changes (permanent)

    @property
    def ok(self) -> bool:
        return self.reason == OK


def pyjwt_problem() -> str | None:
    """Why the installed pyjwt / cryptography cannot be used for verification, or None."""
    try:
        import jwt
    except ImportError:
        return "pyjwt is not installed (pip install 'pyjwt[crypto]>=2.10.1')"
    version = _version_tuple(getattr(jwt, "__version__", "0"))
    if version < MIN_PYJWT:
        return (f"pyjwt {jwt.__version__} at {jwt.__file__} is older than 2.10.1 "
                "(CVE-2022-29217, CVE-2024-53861); install the project's requirements")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return "cryptography is not installed (needed for RSA, EC and EdDSA keys)"
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        match = re.match(r"[0-9]+", piece)  # "1rc1" -> 1
        parts.append(int(match.group()) if match else 0)
    return tuple(parts)


class _Cached:
    __slots__ = ("expires", "generation", "result")

    def __init__(self, result: VerifyResult, expires: float, generation: int) -> None:
        self.result = result
        self.expires = expires  # on the verifier's clock
        self.generation = generation


class JwtVerifier:
    """Verifies bearer JWTs against one key source and one algorithm family."""

    def __init__(self, keys: KeySource, algorithms: Sequence[str], *,
                 claim: str = "tenant_id",
                 audience: str | Sequence[str] | None = None,
                 issuer: str | None = None,
                 leeway_seconds: float = 0.0,
                 cache_size: int = CACHE_SIZE,
                 clock: Callable[[], float] = time.time,
                 name: str = "jwt") -> None:
        """``name`` prefixes errors and logs: the config field, e.g. tenancy.sources[2].jwt."""
        families = {FAMILY_OF.get(a) for a in algorithms}
        if not algorithms or None in families or len(families) != 1:
            raise ValueError(f"algorithms must be non-empty and of one family: {algorithms}")
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        self.family: str = families.pop()  # type: ignore[assignment]
        self.name = name
        self.keys = keys
        self._algorithms = tuple(algorithms)
        self._claim = claim
        self._audience = (audience,) if isinstance(audience, str) else \
            (tuple(audience) if audience is not None else None)
        self._issuer = issuer
        self._leeway = float(leeway_seconds)
        self._cache_size = cache_size
        self._clock = clock  # wall clock: exp and nbf are Unix times
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._counts = dict.fromkeys(VERIFY_RESULTS, 0)
        self._lock = threading.Lock()  # guards _counts against a concurrent counts()
        self._last_keys: KeySet | None = None
        self._generation = 0
        self._problem = pyjwt_problem()
        if self._problem:
            log.error("%s: JWT verification disabled, every token is rejected (no_keys): %s",
                      name, self._problem)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load file keys / start fetching.  Raises JwksError for an unusable key file and
        JwtSupportError when pyjwt is missing or older than 2.10.1 (never verifies then)."""
        if self._problem:
            raise JwtSupportError(f"{self.name}: {self._problem}")
        try:
            self.keys.start()
        except JwksError as e:
            raise JwksError(f"{self.name}: {e}") from None

    def stop(self) -> None:
        self.keys.stop()

    # --- the check -------------------------------------------------------------------------

    def verify(self, authorization: bytes | str) -> VerifyResult:
        """Check one ``Authorization`` header value (see the module docstring)."""
        if len(authorization) > MAX_TOKEN_BYTES + 16:  # + "Bearer " and some spaces
            return self._count(VerifyResult(None, "too_long", math.inf))
        if isinstance(authorization, bytes):
            try:
                authorization = authorization.decode("ascii")
            except UnicodeDecodeError:
                return self._count(VerifyResult(None, "malformed", math.inf))
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if len(token) > MAX_TOKEN_BYTES:
            return self._count(VerifyResult(None, "too_long", math.inf))
        if scheme.lower() != "bearer" or not token:
            return self._count(VerifyResult(None, "malformed", math.inf))

        keys = None if self._problem else self.keys.current()
        if keys is not self._last_keys:  # a new set: every cached answer is stale
            self._last_keys = keys
            self._generation += 1
        now = self._clock()
        digest = hashlib.sha256(token.encode("ascii")).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if hit.generation == self._generation and now < hit.expires:
                self._cache.move_to_end(digest)
                r = hit.result
                return VerifyResult(r.tenant, r.reason, hit.expires - now) \
                    if r.ok or r.reason in TRANSIENT else r
            del self._cache[digest]
        if keys is None:
            return self._count(VerifyResult(None, "no_keys", RETRY_SECONDS))

        result, expires = self._check(token, keys, now)
        self._count(result)
        self._cache[digest] = _Cached(result, expires, self._generation)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def counts(self) -> dict[str, int]:
        """Tokens verified (cache hits not included) by result, every result listed."""
        with self._lock:
            return dict(self._counts)

    # --- internals -------------------------------------------------------------------------

    def _count(self, result: VerifyResult) -> VerifyResult:
        with self._lock:
            self._counts[result.reason] += 1
        return result

    def _check(self, token: str, keys: KeySet, now: float) -> tuple[VerifyResult, float]:
        """The result and until when (verifier clock) it may be served from the cache."""
        import jwt

        def fail(reason: str) -> tuple[VerifyResult, float]:
            ttl = RETRY_SECONDS if reason in TRANSIENT else math.inf
            return VerifyResult(None, reason, ttl), now + min(ttl, CACHE_SECONDS)

        if token.count(".") != 2:
            return fail("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.PyJWTError:
            return fail("malformed")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
            return fail("malformed")
        if alg not in self._algorithms:  # "none", "None", another family ...
            return fail("algorithm")
        candidates = keys.candidates(kid)
        if not candidates:
            self.keys.request_refresh()  # throttled by the source; never fetched here
            return fail("unknown_kid")
        usable = [k for k in candidates if k.alg is None or k.alg == alg]
        if not usable:
            return fail("algorithm")

        payload: dict[str, Any] | None = None
        for key in usable:
            try:
                payload = self._decode(jwt, token, key)
                break
            except jwt.exceptions.InvalidSignatureError:
                continue
            except jwt.exceptions.PyJWTError as e:
                return fail(_reason_of(jwt, e))
        if payload is None:
            return fail("bad_signature")

        exp, nbf = payload.get("exp"), payload.get("nbf")
        if not _is_time(exp, optional=True) or not _is_time(nbf, optional=True):
            return fail("malformed")
        if exp is not None and exp <= now - self._leeway:
            return fail("expired")
        if nbf is not None and nbf > now + self._leeway:
            result = VerifyResult(None, "not_yet_valid", RETRY_SECONDS)
            wait = min(RETRY_SECONDS, max(0.0, nbf - self._leeway - now))
            return result, now + wait
        if self._issuer is not None and payload.get("iss") != self._issuer:
            return fail("issuer")  # pyjwt checked too; exact equality, whatever its version
        tenant = payload.get(self._claim)
        if not isinstance(tenant, str):
            return fail("claim")
        ttl = CACHE_SECONDS
        if exp is not None:
            ttl = min(ttl, exp + self._leeway - now)
        return VerifyResult(tenant, OK, ttl), now + ttl

    def _decode(self, jwt: Any, token: str, key: VerifyKey) -> dict[str, Any]:
        options = {
            "verify_signature": True,
            "verify_exp": False,  # checked by _check with the injected clock
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
            "verify_sub": False,
            "verify_jti": False,
            "require": [],
        }
        return jwt.decode(token, key=key.key, algorithms=list(self._algorithms),
                          options=options, audience=self._audience, issuer=self._issuer)


def _reason_of(jwt: Any, e: Exception) -> str:
    exc = jwt.exceptions
    if isinstance(e, exc.MissingRequiredClaimError):
        return {"aud": "audience", "iss": "issuer"}.get(e.claim, "malformed")
    if isinstance(e, exc.InvalidAudienceError):
        return "audience"
    if isinstance(e, exc.InvalidIssuerError):
        return "issuer"
    if isinstance(e, exc.InvalidAlgorithmError):
        return "algorithm"
    if isinstance(e, exc.InvalidKeyError):
        return "algorithm"  # the key cannot be used with this alg (confusion attempt)
    if isinstance(e, exc.ExpiredSignatureError):
        return "expired"
    if isinstance(e, exc.ImmatureSignatureError):
        return "not_yet_valid"
    return "malformed"


def _is_time(value: Any, optional: bool) -> bool:
    if value is None:
        return optional
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


# --- building from configuration -------------------------------------------------------------


def verifier_from_settings(settings: JwtSettings, name: str = "jwt") -> JwtVerifier:
    """A JwtVerifier (not started) for one jwt source's settings (config/tenancy.py _parse_jwt)."""
    algorithms = settings.algorithms
    family = FAMILY_OF[algorithms[0]]
    source: KeySource
    if settings.jwks_url is not None:
        source = JwksUrlSource(settings.jwks_url, family, algorithms,
                               refresh_seconds=settings.jwks_refresh_seconds)
    elif settings.jwks_file is not None:
        path = settings.jwks_file
        source = StaticKeySource(loader=lambda: load_jwks_file(path, family, algorithms))
    elif settings.pem_file is not None:
        pem = settings.pem_file
        source = StaticKeySource(loader=lambda: load_pem_file(pem, family))
    else:
        raise ValueError("a jwt source without jwks_file, jwks_url or pem_file is not verified")
    return JwtVerifier(source, algorithms, claim=settings.claim, audience=settings.audience,
                       issuer=settings.issuer, leeway_seconds=settings.leeway_seconds, name=name)


def build_verifiers(sources: Sequence[Source]) -> dict[int, JwtVerifier]:
    """A verifier per jwt source (by index in tenancy.sources) that names a key source."""
    return {i: verifier_from_settings(s.jwt, f"tenancy.sources[{i}].jwt")
            for i, s in enumerate(sources)
            if s.kind == "jwt" and s.jwt is not None and s.jwt.has_key_source}


def total_counts(verifiers: Mapping[int, JwtVerifier]) -> dict[str, int]:
    """Every result's count summed over ``verifiers`` (the jwt_verify_total samples)."""
    out = dict.fromkeys(VERIFY_RESULTS, 0)
    for v in verifiers.values():
        for reason, n in v.counts().items():
            out[reason] += n
    return out

