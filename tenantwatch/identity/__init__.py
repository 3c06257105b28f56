"""Identity stage: kernel identity keys and values -> bounded, trust-rated tenant labels."""

from tenantwatch.identity.records import INVALID, OTHER, UNATTRIBUTED, TenantIdentity, Trust
from tenantwatch.identity.resolver import IdentityResolver

__all__ = ["INVALID", "OTHER", "UNATTRIBUTED", "IdentityResolver", "TenantIdentity", "Trust"]
