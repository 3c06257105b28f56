"""Records the kernel stage hands to the HTTP/2 decoder (tenantwatch/h2/tracker.py)."""

from __future__ import annotations

from tenantwatch.kernel.records import H2Event

__all__ = ["H2Event"]  # defined with the kernel's records: the kernel stage produces it
