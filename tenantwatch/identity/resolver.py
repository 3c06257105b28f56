"""Identity resolution: a kernel identity key and its raw value -> a bounded tenant label.

Takes, per distinct identity key the kernel reports in a tick, the raw value bytes (only the first
time the kernel sees the key, else None), the index of the configured source that won (-1: none),
the kernel's ValueFlag bits and the side.  Gives a TenantIdentity: a tenant label with its Trust,
or a reserved bucket (__other__, __invalid__, __unattributed__) with the reason it was folded.

Bounds (DESIGN.md section 4): labels match tenancy.pattern (and the allow-list, when set); at most
tenancy.max_tenants distinct real labels are admitted at once, idle ones are forgotten by expire();
the key -> value cache is an LRU of cache_size entries.  A flood of distinct values therefore
costs O(cache_size + max_tenants) memory, whatever its size.  Pure, deterministic, O(1) per call
(a regex match on a value of bounded length); it counts nothing, the aggregator counts requests
per rejected_reason (REJECT_REASONS lists every value it can take).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Union

from tenantwatch.identity.records import INVALID, OTHER, UNATTRIBUTED, TenantIdentity, Trust
from tenantwatch.kernel.records import Side, ValueFlag

if TYPE_CHECKING:  # config imports this package; keep the import one-way at run time
    from tenantwatch.config import Source, Tenancy

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
# The value itself is bad: every later request on the key is rejected as well.

# Every TenantIdentity.rejected_reason the resolver gives (label of identity_rejected_total).
REJECT_REASONS = (
    "kernel_overflow",  # __other__: the kernel's per-tick identity map was full
    "duplicate", "folded", "bad_byte", "too_long", "collision",  # __invalid__: kernel flags
    "bad_source",  # __invalid__: source index or side the configuration does not have
    "host_mismatch",  # __invalid__: Host does not fit the host template
    "jwt",  # __invalid__: no bearer JWT with a string claim
    "pattern",  # __invalid__: not ASCII, or does not match tenancy.pattern
    "not_allowed",  # __invalid__: not in the tenancy.tenants allow-list
    "max_tenants",  # __other__: a new tenant beyond tenancy.max_tenants
    "unknown_key",  # __unattributed__: no value for a key user space never saw (or evicted)
)

_RESERVED = frozenset((OTHER, INVALID, UNATTRIBUTED))
_UNRESOLVED = -1  # _Entry.source_index when the value was learned without a usable source
_NO_SOURCE = -2  # _Entry.source_index of a verdict that does not depend on the source

# A label waiting for admission (str) or a final verdict (TenantIdentity).
_Outcome = Union[str, TenantIdentity]


class _Entry:
    """What user space knows about one kernel key: its value and the last outcome computed."""

    __slots__ = ("outcome", "source_index", "value")

    def __init__(self, value: str | None, source_index: int, outcome: _Outcome) -> None:
        self.value = value  # stripped ASCII value; None when undecodable or permanently rejected
        self.source_index = source_index
        self.outcome = outcome


class IdentityResolver:
    """Maps kernel identity keys to tenant labels, within the bounds of a Tenancy."""

    def __init__(self, tenancy: Tenancy, cache_size: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        self._tenancy = tenancy
        self._sources: tuple[Source, ...] = tenancy.sources
        self._host_regexes = tuple(s.host_regex() if s.kind == "host" else None
                                   for s in tenancy.sources)
        self._pattern = re.compile(tenancy.pattern)
        self._allowed = frozenset(tenancy.tenants)
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[int, _Entry] = OrderedDict()  # LRU, oldest first
        self._last_seen: OrderedDict[str, float] = OrderedDict()  # admitted, oldest first
        if tenancy.default is None:
            self._no_identity = TenantIdentity(UNATTRIBUTED, Trust.NONE)
        else:
            self._no_identity = TenantIdentity(tenancy.default, Trust.NONE)

    def resolve(self, key: int, raw_value: bytes | None, source_index: int, flags: ValueFlag,
                side: Side) -> TenantIdentity:
        """The tenant of one kernel identity key (see the module docstring for the rules)."""
        if flags & ValueFlag.OVERFLOW:
            return TenantIdentity(OTHER, Trust.NONE, "kernel_overflow")
        if raw_value is None and not flags:
            # The kernel created this entry without the value (a response, or bytes, that
            # arrived in a later tick than the request head): the key alone says who it is.
            return self._from_cache(key)
        if flags & _BAD_FLAGS:
            reason = next(r for f, r in _FLAG_REASONS if flags & f)
            verdict = TenantIdentity(INVALID, Trust.NONE, reason)
            if raw_value is not None and not flags & ValueFlag.COLLISION:
                # The kernel mixes the flags into the key: the same key, seen later without
                # its value, is the same flagged request shape.  A collision leaves the cache
                # alone, so the first value on the key keeps its meaning.
                self._store(key, _Entry(None, _NO_SOURCE, verdict))
            return verdict
        if flags & ValueFlag.NO_IDENTITY or source_index == -1:
            self._store(key, _Entry(None, _NO_SOURCE, self._no_identity))
            return self._no_identity
        if not 0 <= source_index < len(self._sources):
            return TenantIdentity(INVALID, Trust.NONE, "bad_source")
        source = self._sources[source_index]
        if source.side is not None and source.side != side:
            return TenantIdentity(INVALID, Trust.NONE, "bad_source")

        if raw_value is None:
            entry = self._cache.get(key)
            if entry is None:
                return TenantIdentity(UNATTRIBUTED, Trust.NONE, "unknown_key")
            self._cache.move_to_end(key)
            if entry.source_index not in (source_index, _NO_SOURCE):
                entry.source_index = source_index
                entry.outcome = self._label(entry.value, source_index)
        else:
            entry = self._learn(key, raw_value, source_index)
        if isinstance(entry.outcome, TenantIdentity):
            return entry.outcome
        return self._admit(entry.outcome, Trust.TRUSTED if source.trusted else Trust.CLAIMED)

    def expire(self) -> tuple[str, ...]:
        """Forget tenants not returned for tenancy.idle_seconds; returns them, oldest first."""
        deadline = self._clock() - self._tenancy.idle_seconds
        gone = []
        while self._last_seen:
            tenant, seen = next(iter(self._last_seen.items()))
            if seen > deadline:
                break
            del self._last_seen[tenant]
            gone.append(tenant)
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
        if isinstance(entry.outcome, TenantIdentity):
            return entry.outcome
        source = self._sources[entry.source_index]
        return self._admit(entry.outcome, Trust.TRUSTED if source.trusted else Trust.CLAIMED)

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
            entry = _Entry(value, source_index, self._label(value, source_index))
        else:  # flagged request without a source: keep the value, label it on the next hit
            entry = _Entry(value, _UNRESOLVED, TenantIdentity(INVALID, Trust.NONE, "bad_source"))
        self._store(key, entry)
        return entry

    def _label(self, value: str | None, source_index: int) -> _Outcome:
        """The candidate label of ``value`` read by source ``source_index``, or a rejection."""
        if value is None:
            return TenantIdentity(INVALID, Trust.NONE, "pattern")
        source = self._sources[source_index]
        if source.kind == "host":
            regex = self._host_regexes[source_index]
            match = regex.fullmatch(value) if regex is not None else None
            if match is None:
                return TenantIdentity(INVALID, Trust.NONE, "host_mismatch")
            value = match.group("tenant").lower()  # DNS names are case-insensitive
        elif source.kind == "jwt":
            claim = (source.jwt or {}).get("claim", "tenant_id")
            value = _unverified_claim(value, claim)
            if value is None:
                return TenantIdentity(INVALID, Trust.NONE, "jwt")
        if value in _RESERVED or not self._pattern.fullmatch(value):
            return TenantIdentity(INVALID, Trust.NONE, "pattern")
        if self._allowed and value not in self._allowed:
            return TenantIdentity(INVALID, Trust.NONE, "not_allowed")
        return value

    def _admit(self, tenant: str, trust: Trust) -> TenantIdentity:
        if tenant == self._tenancy.default:  # already a label; takes no slot
            return TenantIdentity(tenant, trust)
        seen = self._last_seen
        if tenant not in seen and len(seen) >= self._tenancy.max_tenants:
            return TenantIdentity(OTHER, Trust.NONE, "max_tenants")
        seen[tenant] = self._clock()
        seen.move_to_end(tenant)
        return TenantIdentity(tenant, trust)


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
