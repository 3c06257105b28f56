"""bench/tick_cost.py at a small size: the bench runs the real Daemon.tick() and prints every
figure docs/performance.md quotes (a short variant of the bench, so it cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tick_cost_runs_and_prints_each_tick_kind() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "tick_cost.py"), "--tenants", "200",
                          "--rounds", "1", "--requests", "5"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for kind in ("every identity new", "the same keys again", "nothing drained", "held"):
        line = next((x for x in out.splitlines() if kind in x), None)
        assert line is not None, (kind, out)
        assert float(re.search(r"([0-9.]+) ms", line).group(1)) > 0, line  # type: ignore[union-attr]
    assert "200 tenants, 400 identities a tick" in out
