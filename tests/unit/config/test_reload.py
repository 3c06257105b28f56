"""What a reload applies at once and what waits for a restart (config/reload.py)."""

from __future__ import annotations

from tenantwatch.config import parse_config
from tenantwatch.config.reload import LIVE_KEYS, reload_changes

BASE = {"targets": [{"process": "nginx"}], "log_level": "info"}


def test_logging_applies_at_once_and_the_rest_needs_a_restart():
    running = parse_config(BASE, env={})
    assert reload_changes(running, parse_config(BASE, env={})) == ([], [])
    new = parse_config({**BASE, "log_level": "debug", "listen": "127.0.0.1:9999",
                        "capture": {"tick_seconds": 2}}, env={})
    applied, pending = reload_changes(running, new)
    assert applied == ["log_level"]
    assert sorted(pending) == ["capture", "listen"]
    assert set(LIVE_KEYS) == {"log_level", "log_format"}
