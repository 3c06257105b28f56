"""Records the identity stage gives to aggregation."""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Reserved tenant labels.  They cannot collide with real tenants: the default pattern
# requires an alphanumeric first character, and these start with an underscore.
OTHER = "__other__"  # beyond max_tenants, or the kernel's identity map overflowed
INVALID = "__invalid__"  # fails the pattern, the allow-list, or the kernel flagged it
UNATTRIBUTED = "__unattributed__"  # no identity and no default tenant configured
# Every reserved label, in this order (config errors name the first one a pattern matches); the
# one definition the stages import.
RESERVED_LABELS: tuple[str, ...] = (OTHER, INVALID, UNATTRIBUTED)


class Trust(str, enum.Enum):
    """How far an identity can be believed; only TRUSTED identities may ever be enforced on."""

    TRUSTED = "trusted"  # written by the gateway after validation, or a verified JWT
    CLAIMED = "claimed"  # sent by the client, unverified
    NONE = "none"  # reserved buckets (default, __other__, __invalid__, __unattributed__)


@dataclass(frozen=True)
class TenantIdentity:
    """The tenant one kernel identity key resolved to."""

    tenant: str
    trust: Trust
    rejected_reason: str | None = None  # set when the value was folded or rejected
