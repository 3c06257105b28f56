"""The audit log: one JSON line per enforcement decision, with its evidence.

Takes: ``Outcome`` records (or plain dicts).  Gives: lines appended to a file
(enforcement.audit_log; its default is config.Enforcement's), dry-run "would_cap" ones
included.  The file is opened in append mode for every line, so logrotate's move-and-create
needs no signal.  A failed write is logged (once until a write succeeds again) and never stops
enforcement.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from tenantwatch.enforcement.records import Outcome

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._failing = False
        self.lines_written = 0

    def write(self, entry: Outcome | Mapping[str, Any]) -> None:
        doc = entry.as_dict() if isinstance(entry, Outcome) else dict(entry)
        line = json.dumps(doc, sort_keys=True, default=str) + "\n"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as e:
            if not self._failing:
                log.error("audit log %s: cannot write: %s (decisions go on; this is logged "
                          "once until a write succeeds)", self.path, e.strerror or e)
            self._failing = True
            return
        self._failing = False
        self.lines_written += 1
