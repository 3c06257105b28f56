"""What a reload (SIGHUP) can apply to a running daemon, and what needs a restart.

The probes, the listen address and the identity pipeline are built at start; only the
logging keys apply at once.  docs/operations.md, "Reload".
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from tenantwatch.config.records import Config

# top-level keys a reload applies at once
LIVE_KEYS = ("log_level", "log_format")


class ReloadChanges(NamedTuple):
    applied: list[str]  # changed keys of LIVE_KEYS
    pending: list[str]  # changed keys that need a restart


def reload_changes(running: Config, new: Config) -> ReloadChanges:
    """The top-level keys whose values differ, split into applied and pending."""
    changed = [f.name for f in dataclasses.fields(new)
               if getattr(new, f.name) != getattr(running, f.name)]
    return ReloadChanges([k for k in changed if k in LIVE_KEYS],
                         [k for k in changed if k not in LIVE_KEYS])
