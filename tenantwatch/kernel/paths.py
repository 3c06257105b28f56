"""Where the BPF C sources live, for the loader and the ABI mirror alike.

Searched in order: $TENANTWATCH_BPF_DIR, the source tree (an editable install or a checkout),
the installing venv's share/tenantwatch/bpf (`make install` copies them there), and
/usr/share/tenantwatch/bpf.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def bpf_dir_candidates() -> list[Path]:
    env = os.environ.get("TENANTWATCH_BPF_DIR")
    out = [Path(env)] if env else []
    out += [Path(__file__).resolve().parents[2] / "bpf",
            Path(sys.prefix) / "share" / "tenantwatch" / "bpf",
            Path("/usr/share/tenantwatch/bpf")]
    return out


def find_bpf_dir() -> Path | None:
    for c in bpf_dir_candidates():
        if (c / "http.c").is_file():
            return c
    return None
