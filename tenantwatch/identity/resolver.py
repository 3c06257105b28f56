"""Identity resolution: a kernel identity key and its raw value -> a bounded tenant label.

Takes, per distinct identity key the kernel reports in a tick, the raw value bytes (only the first
time the kernel sees the key, else None), the index of the configured source that won (-1: none),
the kernel's ValueFlag bits and the side.  Gives a TenantIdentity: a tenant label with its Trust,
or a reserved bucket (__other__, __invalid__, __unattributed__) with the reason it was folded.

Bounds (docs/limits.md): labels match tenancy.pattern (and the allow-list, when set); at most
tenancy.max_tenants distinct real labels are admitted at once, idle ones are forgotten by expire();
the key -> value cache is an LRU of cache_size entries.  A flood of distinct values therefore
costs O(cache_size + max_tenants) memory, whatever its size.  Deterministic, O(1) per call
(a regex match on a value of bounded length); it counts nothing, the aggregator counts requests
per rejected_reason (REJECT_REASONS lists every value it can take).

A jwt source with a key source has a JwtVerifier (jwt_verifier.py): its token is TRUSTED only
when it verifies, any failure is __invalid__ "jwt" (the verifier counts the detail).  A verified
outcome holds until the verifier's answer expires (the token's exp, at most CACHE_SECONDS); the
key is then verified again from the kept token, so an expired token stops being trusted.  A
token rejected for a reason that can pass later (unknown kid, keys not loaded yet) is kept in a
small LRU of MAX_PENDING_TOKENS and tried again; other rejections are final for the key.  A jwt
source without keys is read unverified and is CLAIMED, as before.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Union

from tenantwatch.identity.records import (
    INVALID,
    OTHER,
    RESERVED_LABELS,
    UNATTRIBUTED,
    TenantIdentity,
    Trust,
)
from tenantwatch.kernel.records import Side, ValueFlag

if TYPE_CHECKING:  # config imports this package; keep the import one-way at run time
    from tenantwatch.config import Source, Tenancy
    from tenantwatch.identity.jwt_verifier import JwtVerifier
    from tenantwatch.identity.registry import TenantRegistry

# Flags that make a value unusable, in the order their reason is reported.
_FLAG_REASONS = (
    (ValueFlag.DUPLICATE, "duplicate"),
    (ValueFlag.FOLDED, "folded"),
    (ValueFlag.BAD_BYTE, "bad_byte"),
    (ValueFlag.TOO_LONG, "too_long"),
    (ValueFlag.COLLISION, "collision"),
)
_BAD_FLAGS = ValueFlag.DUPLICATE | ValueFlag.FOLDED | ValueFlag.BAD_BYTE | ValueFlag.TOO_LONG \
    | ValueFlag.COLLISION
# The bits as plain ints: resolve() tests them on every new key, and an IntFlag operation builds
# a new enum member each time (~1 µs; 5 of them were 13 % of a 20,000-identity tick).
_INT_REASONS = tuple((int(f), reason) for f, reason in _FLAG_REASONS)
_BAD = int(_BAD_FLAGS)
_OVERFLOW = int(ValueFlag.OVERFLOW)
_UNATTRIBUTED = int(ValueFlag.UNATTRIBUTED)
_NO_IDENTITY = int(ValueFlag.NO_IDENTITY)
_COLLISION = int(ValueFlag.COLLISION)
_ADOPTED = int(ValueFlag.ADOPTED)
# The value itself is bad: every later request on the key is rejected as well.

# Every TenantIdentity.rejected_reason the resolver gives (label of identity_rejected_total).
REJECT_REASONS = (
    "kernel_overflow",  # __other__: the kernel's per-tick identity map was full
    "duplicate", "folded", "bad_byte", "too_long", "collision",  # __invalid__: kernel flags
    "bad_source",  # __invalid__: source index or side the configuration does not have
    "host_mismatch",  # __invalid__: Host does not fit the host template
    "jwt",  # __invalid__: no bearer JWT with a string claim, or it did not verify
    "pattern",  # __invalid__: not ASCII, or does not match tenancy.pattern
    "not_allowed",  # __invalid__: not in the tenancy.tenants allow-list
    "max_tenants",  # __other__: a new tenant beyond tenancy.max_tenants
    "unknown_key",  # __unattributed__: no value for a key user space never saw (or evicted)
    "h2_lost",  # __unattributed__: an HTTP/2 stream whose connection could not be decoded
)

_RESERVED = frozenset(RESERVED_LABELS)
_UNRESOLVED = -1  # _Entry.source_index when the value was learned without a usable source
_NO_SOURCE = -2  # _Entry.source_index of a verdict that does not depend on the source

# A label waiting for admission (str) or a final verdict (TenantIdentity).
_Outcome = Union[str, TenantIdentity]
_JWT_REJECTED = TenantIdentity(INVALID, Trust.NONE, "jwt")
# the frozen verdicts the resolver gives most often, built once (~1 µs each to build)
_BAD_PATTERN = TenantIdentity(INVALID, Trust.NONE, "pattern")
_BAD_SOURCE = TenantIdentity(INVALID, Trust.NONE, "bad_source")

# Tokens kept to retry after a rejection that can pass later (unknown kid while a rotated key
# set is fetched, no key set yet at start).  Anyone can make up a kid, so these are held apart
# from the key cache and bounded: 1024 x 8 KiB (the longest token) = 8 MiB at worst.
MAX_PENDING_TOKENS = 1024


class _Entry:
    """What user space knows about one kernel key: its value and the last outcome computed."""

    __slots__ = ("adopted", "outcome", "recheck_at", "source_index", "value")

    def __init__(self, value: str | None, source_index: int, outcome: _Outcome,
                 recheck_at: float = math.inf, adopted: bool = False) -> None:
        self.adopted = adopted  # seen on a connection first met mid-stream: never trusted
        self.value = value  # stripped ASCII value; None when undecodable or permanently rejected
        self.source_index = source_index
        self.outcome = outcome
        self.recheck_at = recheck_at  # resolver clock; a verified jwt outcome expires then


class IdentityResolver:
    """Maps kernel identity keys to tenant labels, within the bounds of a Tenancy."""

    def __init__(self, tenancy: Tenancy, cache_size: int = 65536,
                 clock: Callable[[], float] = time.monotonic,
                 verifiers: Mapping[int, JwtVerifier] | None = None,
                 registry: TenantRegistry | None = None) -> None:
        """``verifiers``: a JwtVerifier per jwt source index that names keys (jwt_verifier.
        build_verifiers); the caller starts and stops them.  ``registry``: a TenantRegistry
        (identity/registry.py) whose ``refusal(tenant)`` every label must pass; the caller
        starts and stops it."""
        self._registry = registry
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        self._tenancy = tenancy
        self._sources: tuple[Source, ...] = tenancy.sources
        self._verifiers: dict[int, JwtVerifier] = dict(verifiers or {})
        for i, s in enumerate(tenancy.sources):
            keyed = s.kind == "jwt" and s.jwt is not None and s.jwt.has_key_source
            if keyed and i not in self._verifiers:
                raise ValueError(f"jwt source {i} names keys but has no verifier")
        for i in self._verifiers:
            if not (0 <= i < len(tenancy.sources) and tenancy.sources[i].kind == "jwt"):
                raise ValueError(f"verifier for source {i}, which is not a jwt source")
        self._trust = tuple(Trust.TRUSTED if s.trusted or i in self._verifiers else Trust.CLAIMED
                            for i, s in enumerate(tenancy.sources))
        self._pending: OrderedDict[int, str] = OrderedDict()  # key -> token to retry, LRU
        self._host_regexes = tuple(s.host_regex() if s.kind == "host" else None
                                   for s in tenancy.sources)
        self._pattern = re.compile(tenancy.pattern)
        self._allowed = frozenset(tenancy.tenants)
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[int, _Entry] = OrderedDict()  # LRU, oldest first
        self._last_seen: OrderedDict[str, float] = OrderedDict()  # admitted, oldest first
        # this tick's answers from cache entries, by key (begin_tick, resolve_key)
        self._memo: dict[int, TenantIdentity] = {}
        # between begin_tick() and end_tick(), the tenants admitted so far: the tenant's other
        # keys in the tick (its other side, another source) are not admitted again
        self._admitted: set[str] = set()
        self._in_tick = False
        # each admitted tenant's (the keys of _last_seen) identities by trust (TRUSTED,
        # CLAIMED, NONE), built once: a frozen TenantIdentity costs ~1 µs to build, the
        # largest part of resolving a known key
        self._identities: dict[str, list[TenantIdentity | None]] = {}
        if tenancy.default is None:
            self._no_identity = TenantIdentity(UNATTRIBUTED, Trust.NONE)
        else:
            self._no_identity = TenantIdentity(tenancy.default, Trust.NONE)

    def resolve(self, key: int, raw_value: bytes | None, source_index: int, flags: ValueFlag,
                side: Side) -> TenantIdentity:
        """The tenant of one kernel identity key (see the module docstring for the rules)."""
        if raw_value is None and not flags:
            # The kernel created this entry without the value (a response, or bytes, that
            # arrived in a later tick than the request head): the key alone says who it is.
            # First: the most common call, and no flag test (IntFlag operations are slow).
            identity = self._from_cache(key)
            self._remember(key, identity)
            return identity
        bits = int(flags)
        if bits & _OVERFLOW:
            return TenantIdentity(OTHER, Trust.NONE, "kernel_overflow")
        if bits & _UNATTRIBUTED:  # tenantwatch/h2: a connection it could not decode
            return TenantIdentity(UNATTRIBUTED, Trust.NONE, "h2_lost")
        if bits & _BAD:
            reason = next(r for f, r in _INT_REASONS if bits & f)
            verdict = TenantIdentity(INVALID, Trust.NONE, reason)
            if raw_value is not None and not bits & _COLLISION:
                # The kernel mixes the flags into the key: the same key, seen later without
                # its value, is the same flagged request shape.  A collision leaves the cache
                # alone, so the first value on the key keeps its meaning.
                self._store(key, _Entry(None, _NO_SOURCE, verdict))
            return verdict
        if bits & _NO_IDENTITY or source_index == -1:
            self._store(key, _Entry(None, _NO_SOURCE, self._no_identity))
            return self._no_identity
        if not 0 <= source_index < len(self._sources):
            return _BAD_SOURCE
        source = self._sources[source_index]
        if source.side is not None and source.side != side:
            return _BAD_SOURCE

        if raw_value is None:
            entry = self._cache.get(key)
            if entry is None:
                return TenantIdentity(UNATTRIBUTED, Trust.NONE, "unknown_key")
            self._cache.move_to_end(key)
            if entry.source_index not in (source_index, _NO_SOURCE):
                entry.source_index = source_index
                self._relabel(key, entry, entry.value)
            else:
                self._recheck(key, entry)
        else:
            entry = self._learn(key, raw_value, source_index)
            entry.adopted = bool(bits & _ADOPTED)
        # entry is the cache's for key, and source_index its source: what _from_cache(key)
        # would say now
        if isinstance(entry.outcome, TenantIdentity):
            identity = entry.outcome
        else:
            identity = self._admit(entry.outcome, self._trust_of(entry, source_index))
        self._remember(key, identity)
        return identity

    def begin_tick(self) -> None:
        """Start a tick: forget the answers resolve_key() reuses; until end_tick(), a tenant is
        admitted (its slot, its last activity) once, by the first of its keys."""
        self._memo.clear()
        self._admitted.clear()
        self._in_tick = True

    def end_tick(self) -> None:
        """End the tick begun by begin_tick(): every admission is a full one again."""
        self._admitted.clear()
        self._in_tick = False

    def resolve_key(self, key: int) -> TenantIdentity:
        """The tenant of a key the kernel sent without a value (on-CPU time, a slow request):
        resolve(key, None, -1, NONE, side), answered at once when this tick already resolved
        the key from its cache entry (the CPU rows of a tick repeat its identities' keys)."""
        identity = self._memo.get(key)
        if identity is None:
            identity = self._from_cache(key)
            self._remember(key, identity)
        return identity

    def _remember(self, key: int, identity: TenantIdentity) -> None:
        memo = self._memo
        if len(memo) >= self._cache_size:  # never more than the cache: a caller without ticks
            memo.clear()
        memo[key] = identity

    def value_of(self, key: int) -> str | None:
        """The value learned for kernel key ``key`` (ASCII, trailing blanks removed), or None
        (never seen, evicted, undecodable or rejected for good)."""
        entry = self._cache.get(key)
        return None if entry is None else entry.value

    def served_label(self, value: str | None) -> str:
        """The label of a tenant a response says it served (tenancy.response_check): the same
        bounds as a request's value (pattern, allow-list, registry, max_tenants), so a backend
        naming junk cannot add labels beyond them."""
        if value is None:
            return INVALID
        outcome = self._bound(value)
        if isinstance(outcome, TenantIdentity):
            return outcome.tenant
        return self._admit(outcome, Trust.NONE).tenant

    def expire(self) -> tuple[str, ...]:
        """Forget tenants not returned for tenancy.idle_seconds; returns them, oldest first."""
        deadline = self._clock() - self._tenancy.idle_seconds
        gone = []
        while self._last_seen:
            tenant, seen = next(iter(self._last_seen.items()))
            if seen > deadline:
                break
            del self._last_seen[tenant]
            self._identities.pop(tenant, None)
            gone.append(tenant)
        if gone:  # an expired tenant must be admitted again (a slot, max_tenants) to count
            self._admitted.clear()
        return tuple(gone)

    def tenants(self) -> tuple[str, ...]:
        """The admitted tenant labels, sorted (neither the default nor reserved labels)."""
        return tuple(sorted(self._last_seen))

    # --- internals ---------------------------------------------------------------------------

    def _from_cache(self, key: int) -> TenantIdentity:
        entry = self._cache.get(key)
        if entry is None:
            return TenantIdentity(UNATTRIBUTED, Trust.NONE, "unknown_key")
        self._cache.move_to_end(key)
        if entry.recheck_at != math.inf:  # only a jwt outcome is ever due again (_recheck)
            self._recheck(key, entry)
        if isinstance(entry.outcome, TenantIdentity):
            return entry.outcome
        return self._admit(entry.outcome, self._trust_of(entry, entry.source_index))

    def _trust_of(self, entry: _Entry, source_index: int) -> Trust:
        """The source's trust, except on an adopted connection: a connection the kernel first
        met mid-stream (opened before the daemon) may carry anybody's bytes that look like a
        request head (a WebSocket frame, a body), so nothing on it is trusted."""
        trust = self._trust[source_index]
        return Trust.CLAIMED if entry.adopted and trust is Trust.TRUSTED else trust

    def _store(self, key: int, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _learn(self, key: int, raw_value: bytes, source_index: int) -> _Entry:
        try:
            value: str | None = raw_value.rstrip(b" \t").decode("ascii")
        except UnicodeDecodeError:
            value = None
        if 0 <= source_index < len(self._sources):
            entry = _Entry(value, source_index, _BAD_PATTERN)
            # a verifier counts a non-ASCII token as malformed: hand it the bytes
            self._relabel(key, entry, value if value is not None else raw_value)
        else:  # flagged request without a source: keep the value, label it on the next hit
            entry = _Entry(value, _UNRESOLVED, _BAD_SOURCE)
        self._store(key, entry)
        return entry

    def _recheck(self, key: int, entry: _Entry) -> None:
        """Verify a jwt outcome again once the verifier's answer for it has expired."""
        if self._clock() < entry.recheck_at:
            return
        token = entry.value if entry.value is not None else self._pending.pop(key, None)
        if token is None:  # the pending token was evicted: nothing left to verify
            entry.outcome, entry.recheck_at = _JWT_REJECTED, math.inf
            return
        self._relabel(key, entry, token)

    def _relabel(self, key: int, entry: _Entry, value: str | bytes | None) -> None:
        """Label ``value`` by the entry's source; keep a jwt token only while it may change."""
        source_index = entry.source_index
        verifier = self._verifiers.get(source_index)
        if verifier is None or value is None:
            text = value if isinstance(value, str) else None
            entry.outcome, entry.recheck_at = self._label(text, source_index), math.inf
            return
        result = verifier.verify(value)
        if result.tenant is None or isinstance(value, bytes):
            entry.outcome = _JWT_REJECTED
            entry.value = None
            if isinstance(value, str) and math.isfinite(result.ttl_seconds):
                # may pass later (unknown kid, no keys yet): retry from _pending
                entry.recheck_at = self._clock() + result.ttl_seconds
                self._pending[key] = value
                self._pending.move_to_end(key)
                if len(self._pending) > MAX_PENDING_TOKENS:
                    self._pending.popitem(last=False)
            else:
                entry.recheck_at = math.inf
            return
        entry.outcome = self._bound(result.tenant)
        if isinstance(entry.outcome, TenantIdentity):  # the claim fails the bounds: final
            entry.value, entry.recheck_at = None, math.inf
        else:
            entry.value, entry.recheck_at = value, self._clock() + result.ttl_seconds

    def _label(self, value: str | None, source_index: int) -> _Outcome:
        """The candidate label of ``value`` read by source ``source_index``, or a rejection."""
        if value is None:
            return _BAD_PATTERN
        source = self._sources[source_index]
        if source.kind == "host":
            regex = self._host_regexes[source_index]
            match = regex.fullmatch(value) if regex is not None else None
            if match is None:
                return TenantIdentity(INVALID, Trust.NONE, "host_mismatch")
            value = match.group("tenant").lower()  # DNS names are case-insensitive
        elif source.kind == "jwt" and source.jwt is not None:  # always set for a jwt source
            value = _unverified_claim(value, source.jwt.claim)
            if value is None:
                return TenantIdentity(INVALID, Trust.NONE, "jwt")
        return self._bound(value)

    def _bound(self, value: str) -> _Outcome:
        """``value`` as a label, or why it cannot be one (reserved, pattern, allow-list)."""
        if value in _RESERVED or not self._pattern.fullmatch(value):
            return _BAD_PATTERN
        if self._allowed and value not in self._allowed:
            return TenantIdentity(INVALID, Trust.NONE, "not_allowed")
        return value

    def _admit(self, tenant: str, trust: Trust) -> TenantIdentity:
        if tenant not in self._admitted:  # else: admitted by another key in this tick
            if tenant == self._tenancy.default:  # already a label; takes no slot
                return TenantIdentity(tenant, trust)
            if self._registry is not None:  # asked each time: the registry changes under us
                why = self._registry.refusal(tenant)
                if why is not None:  # unknown or suspended: its own reason, never a slot
                    return TenantIdentity(INVALID, Trust.NONE, why)
            seen = self._last_seen
            if tenant not in seen and len(seen) >= self._tenancy.max_tenants:
                return TenantIdentity(OTHER, Trust.NONE, "max_tenants")
            seen[tenant] = self._clock()
            seen.move_to_end(tenant)
            if self._in_tick:
                self._admitted.add(tenant)
        slots = self._identities.get(tenant)
        if slots is None:
            slots = self._identities[tenant] = [None, None, None]
        slot = 0 if trust is Trust.TRUSTED else 1 if trust is Trust.CLAIMED else 2
        identity = slots[slot]
        if identity is None:
            identity = slots[slot] = TenantIdentity(tenant, trust)
        return identity


def _unverified_claim(authorization: str, claim: str) -> str | None:
    """The string ``claim`` of a bearer JWT, signature NOT checked (so never trusted), or None."""
    scheme, _, token = authorization.partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return None
    payload = parts[1]
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # ValueError covers bad JSON / UTF-8
        return None
    value = data.get(claim) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
