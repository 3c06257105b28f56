"""bench/soak.py's verdict: a growing fd floor fails it, one sample caught mid-scrape does not."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def verdict(fds: list[int]) -> bool:
    spec = importlib.util.spec_from_file_location("soak_bench", SOAK)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    rows = [{"t_s": 10 * i, "rss_mb": 100.0, "fds": n} for i, n in enumerate(fds)]
    return soak.verdict(rows, argparse.Namespace(max_rss_growth_mb=20.0, max_fd_growth=5))[0]


def test_one_high_last_sample_is_not_growth() -> None:
    assert verdict([138] * 6 + [135, 138, 138, 137, 138, 148])


def test_a_growing_fd_floor_fails() -> None:
    assert not verdict([138] * 6 + [138, 140, 142, 144, 146, 148])
