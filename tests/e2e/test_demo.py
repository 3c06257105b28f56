"""`tenantwatch demo` (what `sudo make demo` runs, the README's first command), end to end:
the packaged command on its embedded config starts nginx, a backend and the daemon, draws the
tenants' table every tick, and stops cleanly after --duration.  Root and nginx needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_nginx, require_root

REPO = Path(__file__).resolve().parents[2]
DURATION_S = 8


def test_the_demo_shows_its_tenants_and_stops_cleanly():
    require_root()
    require_nginx()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTWATCH_")}
    r = subprocess.run([sys.executable, "-m", "tenantwatch.cli", "demo",
                        "--duration", str(DURATION_S)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
                       check=False)
    out = r.stdout
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stderr[-3000:]}\n{out[-2000:]}"
    assert "Traceback" not in r.stderr + out, r.stderr[-3000:]
    assert out.rstrip().endswith("tenantwatch demo: stopped and cleaned up.")
    tables = out.split("gateway http://127.0.0.1:")
    assert len(tables) >= DURATION_S // 2, out[-2000:]  # one table a tick
    last = tables[-1]
    # the four tenants on the server side (X-Tenant-ID); acme also on the trusted client side
    for tenant in ("acme", "globex", "initech", "mallory"):
        assert tenant in last, last
