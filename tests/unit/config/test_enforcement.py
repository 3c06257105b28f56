"""The enforcement section of the config: human CPU amounts, defaults, and errors naming the
offending key."""

from __future__ import annotations

from typing import Any

import pytest

from tenantwatch.config import Enforcement, Placement, Selector, parse_config
from tenantwatch.config.enforcement import parse_cores
from tenantwatch.errors import ConfigError


def enforcement(section: Any) -> Enforcement:
    return parse_config({"targets": [{"process": "nginx"}], "enforcement": section},
                        env={}).enforcement


@pytest.mark.parametrize("value,cores", [
    (0.5, 0.5), (2, 2.0), ("0.5", 0.5), ("0.5 cores", 0.5), ("1 core", 1.0), ("2cpus", 2.0),
    ("50%", 0.5), ("250%", 2.5), (" 10 % ", 0.1), ("500m", 0.5), ("1e-1", 0.1),
])
def test_parse_cores_human_forms(value: Any, cores: float) -> None:
    assert parse_cores(value, "f") == pytest.approx(cores)


@pytest.mark.parametrize("value,message", [
    (0, "more than 0"), (-1, "more than 0"), ("0%", "more than 0"), ("0.5%", "0.01..8192"),
    (10_000, "0.01..8192"), ("half", "not a CPU amount"), ("50 %%", "not a CPU amount"),
    (True, "expected cores"), (None, "expected cores"), ([1], "expected cores"),
    (float("nan"), "more than 0"), (float("inf"), "more than 0"),
])
def test_parse_cores_rejects(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse_cores(value, "enforcement.floor")
    assert e.value.field == "enforcement.floor"


def test_defaults_keep_the_old_two_field_form_working() -> None:
    e = enforcement(None)
    assert e == Enforcement("dry-run", "/sys/fs/cgroup/tenants.slice/tenant-{tenant}.slice")
    assert e.root == "/sys/fs/cgroup/tenants.slice"
    assert (e.floor, e.max_step, e.cooldown_seconds, e.calm_seconds, e.lease_ttl_seconds) == \
        (0.1, 0.5, 30.0, 60.0, 120.0)
    assert (e.keep_on_exit, e.state_file, e.audit_log) == \
        (False, "/var/lib/tenantwatch/caps.json", "/var/lib/tenantwatch/audit.jsonl")
    assert dict(e.quotas) == {} and e.placement is None


def test_every_key() -> None:
    e = enforcement({
        "mode": "enforce", "cgroup": "/sys/fs/cgroup/cpu/tenants/{tenant}",
        "root": "/sys/fs/cgroup/cpu", "floor": "20%", "max_step": 0.25, "cooldown_seconds": 10,
        "calm_seconds": 90, "lease_ttl_seconds": 300, "keep_on_exit": True,
        "state_file": "/run/tw/caps.json", "audit_log": "/var/log/tw/audit.jsonl",
        "quotas": {"acme": "50%", "globex": {"cpu": "2 cores"}, "initech": 1.5},
    })
    assert (e.mode, e.root, e.floor, e.max_step, e.keep_on_exit) == \
        ("enforce", "/sys/fs/cgroup/cpu", 0.2, 0.25, True)
    assert dict(e.quotas) == {"acme": 0.5, "globex": 2.0, "initech": 1.5}


def test_placement_defaults_the_template_under_the_delegated_root() -> None:
    e = enforcement({"placement": {"delegated_root": "/sys/fs/cgroup/cpu/tenantwatch/",
                                   "selectors": [{"process": "php-fpm",
                                                  "cmdline": "pool (?P<tenant>\\w+)"},
                                                 {"cmdline": "reportd", "tenant": "globex"}]}})
    assert e.cgroup == "/sys/fs/cgroup/cpu/tenantwatch/tenant-{tenant}"
    assert e.root == "/sys/fs/cgroup/cpu/tenantwatch"
    assert e.placement == Placement("/sys/fs/cgroup/cpu/tenantwatch", (
        Selector("php-fpm", "pool (?P<tenant>\\w+)", None), Selector(None, "reportd", "globex")))


@pytest.mark.parametrize("section,field,message", [
    ({"floor": 0}, "enforcement.floor", "more than 0"),
    ({"floor": "lots"}, "enforcement.floor", "not a CPU amount"),
    ({"max_step": 0.75}, "enforcement.max_step", "0.01..0.5"),
    ({"cooldown_seconds": -1}, "enforcement.cooldown_seconds", "0..86400"),
    ({"calm_seconds": 0}, "enforcement.calm_seconds", "1..86400"),
    ({"lease_ttl_seconds": 1}, "enforcement.lease_ttl_seconds", "2..604800"),
    ({"keep_on_exit": "yes"}, "enforcement.keep_on_exit", "true or false"),
    ({"state_file": "caps.json"}, "enforcement.state_file", "absolute"),
    ({"audit_log": 3}, "enforcement.audit_log", "string"),
    ({"root": "/"}, "enforcement.root", "other than /"),
    ({"root": "/sys/fs/cgroup/other"}, "enforcement.root", "not under"),
    ({"quotas": {"acme": "0%"}}, "enforcement.quotas.acme", "more than 0"),
    ({"quotas": {"acme": {"mem": 1}}}, "enforcement.quotas.acme.mem", "known: cpu"),
    ({"quotas": {"acme": {}}}, "enforcement.quotas.acme.cpu", "required"),
    ({"quotas": {"__other__": 1}}, "enforcement.quotas.__other__", "reserved"),
    ({"quotas": {"acme": 0.05}}, "enforcement.quotas.acme", "below enforcement.floor"),
    ({"quotas": ["acme"]}, "enforcement.quotas", "mapping"),
    ({"placement": {"selectors": [{"process": "x", "tenant": "a"}]}},
     "enforcement.placement.delegated_root", "required"),
    ({"placement": {"delegated_root": "/x"}}, "enforcement.placement.selectors", "required"),
    ({"placement": {"delegated_root": "/x", "selectors": [{"process": "x"}]}},
     "enforcement.placement.selectors[0]", "needs tenant"),
    ({"placement": {"delegated_root": "/x", "selectors": [{"tenant": "a"}]}},
     "enforcement.placement.selectors[0]", "needs process or cmdline"),
    ({"placement": {"delegated_root": "/x", "selectors": [{"cmdline": "(", "tenant": "a"}]}},
     "enforcement.placement.selectors[0].cmdline", "not a regex"),
    ({"placement": {"delegated_root": "/x",
                    "selectors": [{"cmdline": "(?P<tenant>a)", "tenant": "a"}]}},
     "enforcement.placement.selectors[0].tenant", "ambiguous"),
    ({"placement": {"delegated_root": "/x", "selectors": [{"process": "x", "tenant": "a",
                                                           "user": "www"}]}},
     "enforcement.placement.selectors[0].user", "unknown key"),
    ({"placement": {"delegated_root": "/x", "selectors": [{"process": "x", "tenant": "a"}]},
      "cgroup": "/y/{tenant}"}, "enforcement.cgroup", "delegated_root"),
    ({"cgroups": "/x/{tenant}"}, "enforcement.cgroups", "did you mean 'cgroup'"),
])
def test_errors_name_the_field(section: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        enforcement(section)
    assert e.value.field == field
