"""HTTP/2 stage: the kernel's HTTP/2 byte streams (DATA payloads elided) -> per-tenant counts.

The kernel cannot decode HPACK, so for HTTP/2 connections it hands user space the frames and
this package decodes the header blocks, follows the streams and counts them per identity key in
the kernel's own IdentityCounts (docs/http2.md).  Its modules run compiled (mypyc) when a build
of these sources exists (compiled.py), else as Python: compiled.STATUS says which.
"""

from tenantwatch.h2 import compiled

compiled.enable()  # before any module of the package is imported

from tenantwatch.h2.counts import LOST_REASONS
from tenantwatch.h2.identity import H2_UNATTRIBUTED_KEY
from tenantwatch.h2.records import H2Event
from tenantwatch.h2.tracker import H2Tracker

__all__ = ["H2_UNATTRIBUTED_KEY", "LOST_REASONS", "H2Event", "H2Tracker"]
