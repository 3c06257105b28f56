"""Every default lives once, in its dataclass: a config that leaves every key out parses to the
dataclasses' defaults, and the parsers read them from there (validators._default)."""

from __future__ import annotations

import pytest

from tenantwatch import config as cfg
from tenantwatch.config.validators import _default
from tenantwatch.kernel.records import Side

MINIMAL = {"targets": [{"process": "nginx"}]}


def test_a_minimal_config_is_the_dataclasses_defaults() -> None:
    c = cfg.parse_config(MINIMAL, env={})
    assert c.tenancy == cfg.Tenancy()
    assert c.capture == cfg.Capture()
    assert c.enforcement == cfg.Enforcement()
    assert c.detection == cfg.DetectionSettings()
    assert (c.otel, c.metrics, c.power) == (cfg.Otel(), cfg.Metrics(), cfg.Power())
    assert (c.log_format, c.log_level, c.web_config_file) == \
        (_default(cfg.Config, "log_format"), _default(cfg.Config, "log_level"), None)


def test_empty_sections_are_the_dataclasses_defaults() -> None:
    c = cfg.parse_config({**MINIMAL, "tenancy": {"registry": {"redis": "redis://r"},
                                                  "response_check": {"header": "X-S"}}},
                         env={})
    assert c.tenancy.registry == cfg.Registry(redis="redis://r")
    assert c.tenancy.response_check == cfg.ResponseCheck(header="x-s")
    sources = cfg.parse_config({**MINIMAL, "tenancy": {"sources": [{"header": "X-T"}]}},
                               env={}).tenancy.sources
    assert sources == (cfg.Source(kind="header", header="x-t"),)


def test_derived_defaults_follow_their_inputs() -> None:
    assert cfg.Capture().max_identities == \
        cfg.default_max_identities(cfg.Tenancy().max_tenants)
    assert cfg.Enforcement().root == "/sys/fs/cgroup/tenants.slice"
    c = cfg.parse_config({**MINIMAL, "tenancy": {"max_tenants": 5000}}, env={})
    assert c.capture.max_identities == cfg.default_max_identities(5000)


def test_default_gives_the_yaml_shape() -> None:
    assert _default(cfg.Capture, "sides") == ("server", "client")
    assert _default(cfg.ResponseCheck, "sides") == ("client",)
    assert _default(cfg.Otel, "resource_attributes") == {}  # default_factory, called
    assert _default(cfg.Tenancy, "sources")[0].side is Side.SERVER  # records stay records
    with pytest.raises(TypeError, match="no default"):
        _default(cfg.Registry, "redis")
    with pytest.raises(TypeError, match="no field"):
        _default(cfg.Registry, "nope")
