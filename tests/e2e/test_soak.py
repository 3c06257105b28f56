"""The soak's CI variant (issue 13): bench/soak.py for 2 minutes, with --check.

Mixed traffic through nginx (keep-alive and short connections, churning tenants, slow
requests, a flood of junk values, TLS, h2c bursts when h2load is installed) and an nginx reload
every 30 s, while the daemon's RSS, open fds, tick durations and table fill are sampled every
10 s.  It fails when, over the second minute, the RSS grew more than 20 MB or the open fds
more than 5 (each reload replaces nginx's workers: a leak per worker shows at once; the first
such leak found, TLS uprobes of exited workers, was 10 fds per reload).  The hour-long run and
its plot are in docs/performance.md.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_nginx, require_root

REPO = Path(__file__).resolve().parents[2]


def test_two_minutes_of_mixed_traffic_leave_the_footprint_flat(tmp_path):
    require_root()
    require_nginx()
    out = tmp_path / "soak.csv"
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--minutes", "2", "--tenants", "300",
         "--reload-minutes", "0.5", "--sample-seconds", "10", "--csv", str(out), "--png", "",
         "--check"], capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) >= 10, rows
    assert int(rows[-1]["requests"]) > 10000, rows[-1]  # the traffic really went through
    assert "flat" in p.stdout, p.stdout[-2000:]
