"""parse_detection: the `detection:` section, its defaults and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tenantwatch.config import DetectionSettings
from tenantwatch.config.detection import parse_detection
from tenantwatch.errors import ConfigError


def test_absent_or_empty_section_gives_the_defaults() -> None:
    assert parse_detection(None, "detection") == DetectionSettings()
    assert parse_detection({}, "detection") == DetectionSettings()
    d = DetectionSettings()
    assert (d.window_seconds, d.onset_windows, d.clear_windows, d.release_factor) == (5, 3, 5, 0.9)
    assert (d.min_share, d.share_factor, dict(d.quotas)) == (0.35, 2.0, {})
    assert (d.psi_threshold_percent, d.runq_p99_threshold_seconds) == (10, 0.005)
    assert (d.victim_p99_factor, d.victim_min_p99_seconds, d.victim_min_requests) == (2, 0.002, 20)
    assert (d.baseline_seconds, d.hotspot_busy, d.hotspot_share) == (60, 0.9, 0.6)


def test_every_key_is_read() -> None:
    text = """
        window_seconds: 10
        onset_windows: 2
        clear_windows: 8
        release_factor: 1
        min_share: 0.5
        share_factor: 3
        quotas: {acme: 0.25, globex: 0.5}
        psi_threshold_percent: 20
        runq_p99_threshold_seconds: 0.01
        victim_p99_factor: 1.5
        victim_min_p99_seconds: 0
        victim_min_requests: 50
        baseline_seconds: 120
        hotspot_busy: 0.8
        hotspot_share: 0.75
    """
    s = parse_detection(yaml.safe_load(text), "detection")
    assert s == DetectionSettings(
        window_seconds=10.0, onset_windows=2, clear_windows=8, release_factor=1.0, min_share=0.5,
        share_factor=3.0, quotas={"acme": 0.25, "globex": 0.5}, psi_threshold_percent=20.0,
        runq_p99_threshold_seconds=0.01, victim_p99_factor=1.5, victim_min_p99_seconds=0.0,
        victim_min_requests=50, baseline_seconds=120.0, hotspot_busy=0.8, hotspot_share=0.75)
    assert isinstance(s.window_seconds, float)
    with pytest.raises(TypeError):
        s.quotas["acme"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(("value", "field", "message"), [
    ([], "detection", "expected a mapping"),
    ({"share_facter": 2}, "detection.share_facter", "did you mean 'share_factor'"),
    ({"share_factor": "2x"}, "detection.share_factor", "expected a number, got str"),
    ({"share_factor": 0.5}, "detection.share_factor", "1..100"),
    ({"share_factor": True}, "detection.share_factor", "expected a number, got bool"),
    ({"share_factor": float("nan")}, "detection.share_factor", "finite"),
    ({"window_seconds": 0}, "detection.window_seconds", "0.1..600"),
    ({"window_seconds": None}, "detection.window_seconds", "got null"),
    ({"onset_windows": 0}, "detection.onset_windows", "1..1000"),
    ({"onset_windows": 2.5}, "detection.onset_windows", "expected an integer"),
    ({"clear_windows": "5"}, "detection.clear_windows", "expected an integer, got str"),
    ({"release_factor": 0.2}, "detection.release_factor", "0.5..1"),
    ({"min_share": 0}, "detection.min_share", "(0, 1]"),
    ({"min_share": 1.5}, "detection.min_share", "(0, 1]"),
    ({"psi_threshold_percent": 0}, "detection.psi_threshold_percent", "(0, 100]"),
    ({"runq_p99_threshold_seconds": -1}, "detection.runq_p99_threshold_seconds", "(0, 60]"),
    ({"victim_p99_factor": 1}, "detection.victim_p99_factor", "(1, 1000]"),
    ({"victim_min_p99_seconds": -0.1}, "detection.victim_min_p99_seconds", "0..60"),
    ({"victim_min_requests": 0}, "detection.victim_min_requests", "1..1000000000"),
    ({"baseline_seconds": 3}, "detection.baseline_seconds", "at least window_seconds (5)"),
    ({"window_seconds": 30, "baseline_seconds": 20}, "detection.baseline_seconds", "(30)"),
    ({"hotspot_busy": 1.1}, "detection.hotspot_busy", "(0, 1]"),
    ({"hotspot_share": 0.5}, "detection.hotspot_share", "(0.5, 1]"),
    ({"quotas": [0.1]}, "detection.quotas", "expected a mapping"),
    ({"quotas": {"acme": 0}}, "detection.quotas.acme", "(0, 1]"),
    ({"quotas": {"acme": "10%"}}, "detection.quotas.acme", "expected a number"),
    ({"quotas": {"__other__": 0.1}}, "detection.quotas.__other__", "reserved"),
    ({"quotas": {1: 0.1}}, "detection.quotas.1", "non-empty strings"),
])
def test_errors_name_the_field(value: Any, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_detection(value, "detection")
    assert e.value.field == field
    assert message in e.value.message


def test_field_prefix_is_the_callers() -> None:
    with pytest.raises(ConfigError) as e:
        parse_detection({"hotspot_busy": 0}, "profiles[2].detection")
    assert e.value.field == "profiles[2].detection.hotspot_busy"
