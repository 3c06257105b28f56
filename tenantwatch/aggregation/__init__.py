"""Aggregation stage: kernel deltas + resolved identities -> cumulative per-tenant Snapshot."""

from tenantwatch.aggregation.aggregator import Aggregator, Resolver, estimate_quantile
from tenantwatch.aggregation.records import Snapshot, TenantSideStats

__all__ = ["Aggregator", "Resolver", "Snapshot", "TenantSideStats", "estimate_quantile"]
