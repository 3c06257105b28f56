"""Test doubles for the aggregation stage: an in-memory resolver and KernelTick builders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tenantwatch.identity.records import TenantIdentity, Trust
from tenantwatch.kernel.records import STATUS_CLASSES, IdentityCounts, KernelTick, Side, ValueFlag

BOUNDS: tuple[float, ...] = (0.001, 0.01, 0.1)  # small on purpose: easy to check by hand
COMMON = TenantIdentity("common", Trust.NONE)


class FakeResolver:
    """In-memory stand-in for identity.resolver.IdentityResolver (no config, no validation).

    ``identities`` maps kernel keys to fixed identities; unknown keys resolve to ``default``.
    Tenants put in ``to_expire`` are returned by the next ``expire()`` call.
    """

    def __init__(
        self,
        identities: Mapping[int, TenantIdentity] | None = None,
        default: TenantIdentity = COMMON,
    ) -> None:
        self.identities: dict[int, TenantIdentity] = dict(identities or {})
        self.default = default
        self.calls: list[tuple[int, bytes | None, int, ValueFlag, Side]] = []
        self.to_expire: list[str] = []
        self.expire_calls = 0

    def resolve(
        self,
        key: int,
        raw_value: bytes | None,
        source_index: int,
        flags: ValueFlag,
        side: Side,
    ) -> TenantIdentity:
        self.calls.append((key, raw_value, source_index, flags, side))
        return self.identities.get(key, self.default)

    def begin_tick(self) -> None:
        pass

    def end_tick(self) -> None:
        pass

    def resolve_key(self, key: int) -> TenantIdentity:
        self.calls.append((key, None, -1, ValueFlag.NONE, None))
        return self.identities.get(key, self.default)

    def expire(self) -> tuple[str, ...]:
        self.expire_calls += 1
        out, self.to_expire = tuple(self.to_expire), []
        return out


def make_counts(
    key: int,
    side: Side = Side.SERVER,
    *,
    classes: Mapping[str, int] | None = None,
    heads: int | None = None,
    rx: int = 0,
    tx: int = 0,
    buckets: Sequence[int] = (0, 0, 0, 0),
    sum_ns: int = 0,
    opened: int = 0,
    closed: int = 0,
    closed_ns: int = 0,
    raw: bytes | None = None,
    source_index: int = 0,
    flags: ValueFlag = ValueFlag.NONE,
) -> IdentityCounts:
    """One IdentityCounts delta; ``heads`` defaults to the number of completed requests."""
    by_class = tuple((classes or {}).get(c, 0) for c in STATUS_CLASSES)
    return IdentityCounts(
        key=key,
        side=side,
        raw_value=raw,
        source_index=source_index,
        flags=flags,
        requests_by_class=by_class,
        request_heads=sum(by_class) if heads is None else heads,
        rx_bytes=rx,
        tx_bytes=tx,
        latency_buckets=tuple(buckets),
        latency_sum_ns=sum_ns,
        connections_opened=opened,
        connections_closed=closed,
        connections_duration_ns=closed_ns,
    )


def make_tick(
    *identities: IdentityCounts,
    lost: Mapping[str, int] | None = None,
    targets: int = 1,
    probes: Mapping[str, bool] | None = None,
    monotonic_ns: int = 0,
) -> KernelTick:
    return KernelTick(
        identities=tuple(identities),
        lost=dict(lost or {}),
        targets=targets,
        probes=dict(probes if probes is not None else {"http": True}),
        monotonic_ns=monotonic_ns,
    )
