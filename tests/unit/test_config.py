"""tenantwatch.config: YAML + environment -> Config, and every ConfigError field path."""

from __future__ import annotations

import copy
import logging
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tenantwatch import config as cfg
from tenantwatch.config import (
    DEFAULT_LATENCY_BUCKETS,
    MAX_HEADER_NAME,
    MAX_LATENCY_BUCKETS,
    MAX_SOURCES,
    Config,
    load_config,
    parse_config,
)
from tenantwatch.errors import ConfigError
from tenantwatch.kernel.records import Side

CONVENTIONS_YAML = """\
listen: "127.0.0.1:9477"          # /metrics, /healthz, /readyz, /api/v1/*
targets:
  - name: edge
    process: nginx                 # process name (comm); all matching processes and new ones
tenancy:
  sources:                         # tried in order; first hit wins
    - header: X-Tenant-Context     # any header name, case-insensitive
      side: client                 # client = connections the target opened (gateway -> upstream)
      trusted: true                # written by the gateway after it validated the caller
    - header: X-Tenant-ID
      side: server                 # server = connections the target accepted (client -> gateway)
    - host: "{tenant}.api.example.com"
    - jwt: {claim: tenant_id, jwks_file: /etc/tenantwatch/jwks.json, algorithms: [RS256]}
  pattern: "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
  tenants: []                      # optional allow-list
  max_tenants: 1000
  default: common                  # tenant for requests with no identity
enforcement:
  mode: dry-run                    # off | dry-run | enforce
  cgroup: "/sys/fs/cgroup/tenants.slice/tenant-{tenant}.slice"
"""

MINIMAL: dict = {"targets": [{"process": "nginx"}]}


def parse(data: Any, **env: str) -> Config:
    return parse_config(data, env=env)


def with_(path: str, value: Any) -> dict:
    """MINIMAL with ``value`` set at dotted ``path`` (sections created as needed)."""
    data = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return data


def error_of(data: Any, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data, **env)
    return info.value


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tenantwatch.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- the contract ----------------------------------------------------------------------------


def test_conventions_example_parses(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, CONVENTIONS_YAML), env={})
    assert (c.listen_host, c.listen_port) == ("127.0.0.1", 9477)
    assert c.targets == (cfg.Target(name="edge", process="nginx"),)
    s = c.tenancy.sources
    assert [x.kind for x in s] == ["header", "header", "host", "jwt"]
    assert [x.header for x in s] == ["x-tenant-context", "x-tenant-id", "host", "authorization"]
    assert [x.side for x in s] == [Side.CLIENT, Side.SERVER, None, None]
    assert [x.trusted for x in s] == [True, False, False, False]
    assert s[2].host_template == "{tenant}.api.example.com"
    assert s[3].jwt == cfg.JwtSettings(claim="tenant_id", jwks_file="/etc/tenantwatch/jwks.json",
                                       algorithms=("RS256",))
    assert c.tenancy.pattern == "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
    assert (c.tenancy.tenants, c.tenancy.max_tenants, c.tenancy.default) == ((), 1000, "common")
    assert c.enforcement == cfg.Enforcement("dry-run", "/sys/fs/cgroup/tenants.slice/"
                                            "tenant-{tenant}.slice")


def test_defaults() -> None:
    c = parse(MINIMAL)
    assert c.listen == "127.0.0.1:9477"
    assert c.tenancy.sources == (cfg.Source("header", "x-tenant-id", Side.SERVER, False),)
    assert c.tenancy.pattern == r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
    assert (c.tenancy.tenants, c.tenancy.max_tenants, c.tenancy.default) == ((), 1000, "common")
    assert c.tenancy.idle_seconds == 300.0
    assert c.enforcement.mode == "dry-run"
    assert c.capture == cfg.Capture(tuple(float(b) for b in DEFAULT_LATENCY_BUCKETS), 1.0,
                                    65536, 1.0)
    assert (c.log_format, c.log_level) == ("text", "info")
    assert c.targets == (cfg.Target("nginx", "nginx"),)


def test_default_latency_buckets_are_the_documented_ones() -> None:
    assert DEFAULT_LATENCY_BUCKETS == (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def test_limits_match_the_kernel_abi() -> None:
    header = Path(__file__).resolve().parents[2] / "bpf" / "include" / "tw_abi.h"
    if not header.exists():
        pytest.skip("bpf/include/tw_abi.h not present")
    defines = dict(re.findall(r"^#define\s+(TW_\w+)\s+(\d+)\s*$", header.read_text(), re.MULTILINE))
    assert int(defines["TW_MAX_SOURCES"]) == MAX_SOURCES
    assert int(defines["TW_NAME_MAX"]) == MAX_HEADER_NAME
    assert int(defines["TW_MAX_BUCKETS"]) == MAX_LATENCY_BUCKETS
    assert int(defines["TW_MAX_COMMS"]) == cfg.MAX_TARGETS
    assert int(defines["TW_COMM_LEN"]) == cfg.MAX_COMM + 1


def test_config_is_frozen() -> None:
    c = parse(MINIMAL)
    with pytest.raises(AttributeError):
        c.listen = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.tenancy.max_tenants = 5  # type: ignore[misc]


def test_full_custom_config() -> None:
    c = parse({
        "listen": "[::1]:9000",
        "log_format": "json",
        "log_level": "DEBUG",
        "targets": [{"name": "edge", "process": "nginx"}, {"process": "envoy"}],
        "tenancy": {
            "sources": [{"header": "X-Org", "side": "Client", "trusted": True}],
            "pattern": "^[a-z]{1,10}$",
            "tenants": ["acme", "globex"],
            "max_tenants": 2,
            "default": None,
            "idle_seconds": 60,
        },
        "enforcement": {"mode": False, "cgroup": "/sys/fs/cgroup/t/{tenant}"},  # YAML `off`
        "capture": {"latency_buckets": [0.001, 1, 2], "tick_seconds": 0.5,
                    "max_connections": 1024, "rescan_seconds": 5},
    })
    assert (c.listen_host, c.listen_port) == ("::1", 9000)
    assert (c.log_format, c.log_level) == ("json", "debug")
    assert [t.name for t in c.targets] == ["edge", "envoy"]
    assert c.tenancy.sources[0] == cfg.Source("header", "x-org", Side.CLIENT, True)
    assert c.tenancy.tenants == ("acme", "globex")
    assert c.tenancy.default is None
    assert c.tenancy.idle_seconds == 60.0
    assert c.enforcement.mode == "off"
    assert c.capture == cfg.Capture((0.001, 1.0, 2.0), 0.5, 1024, 5.0)


@pytest.mark.parametrize("listen,host,port", [
    ("127.0.0.1:9477", "127.0.0.1", 9477),
    ("0.0.0.0:1", "0.0.0.0", 1),
    ("localhost:65535", "localhost", 65535),
    ("[::]:9477", "::", 9477),
    ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
])
def test_listen_forms(listen: str, host: str, port: int) -> None:
    c = parse(with_("listen", listen))
    assert (c.listen_host, c.listen_port) == (host, port)


# --- host templates --------------------------------------------------------------------------


def host_source(template: str) -> cfg.Source:
    return parse(with_("tenancy", {"sources": [{"host": template}]})).tenancy.sources[0]


@pytest.mark.parametrize("host,tenant", [
    ("acme.api.example.com", "acme"),
    ("ACME.API.Example.COM", "ACME"),
    ("acme.api.example.com:8443", "acme"),
    ("acme.api.example.com.", "acme"),
    ("a-b_c.api.example.com", "a-b_c"),
])
def test_host_regex_matches(host: str, tenant: str) -> None:
    m = host_source("{tenant}.api.example.com").host_regex().fullmatch(host)
    assert m is not None and m.group("tenant") == tenant


@pytest.mark.parametrize("host", [
    "api.example.com", "x.acme.api.example.com", "acme.api.example.com.evil.org",
    "acme.apixexample.com", "acme.api.example.com:", "acme.api.example.com:123456",
    "evil.org/acme.api.example.com", "acme.api.example.com\n", ".api.example.com",
])
def test_host_regex_rejects(host: str) -> None:
    assert host_source("{tenant}.api.example.com").host_regex().fullmatch(host) is None


def test_host_regex_suffix_and_whole_host_templates() -> None:
    assert host_source("api-{tenant}.example.com").host_regex().match(
        "api-acme.example.com").group("tenant") == "acme"
    assert host_source("{tenant}").host_regex().match("acme:80").group("tenant") == "acme"


def test_host_regex_on_non_host_source() -> None:
    with pytest.raises(ValueError):
        parse(MINIMAL).tenancy.sources[0].host_regex()


# --- every error path ------------------------------------------------------------------------

BAD = [
    # (data, field, words in the message)
    ([], "<file>", "mapping"),
    ("listen: 1", "<file>", "mapping"),
    ({"listn": "1.2.3.4:1", **MINIMAL}, "listn", "did you mean 'listen'"),
    ({"tenancy": {"max_tenant": 5}, **MINIMAL}, "tenancy.max_tenant", "'max_tenants'"),
    ({"capture": {"tick": 1}, **MINIMAL}, "capture.tick", "unknown key"),
    ({"enforcement": {"cgroups": "/x/{tenant}"}, **MINIMAL}, "enforcement.cgroups", "'cgroup'"),
    ({"targets": [{"process": "nginx", "pid": 1}]}, "targets[0].pid", "unknown key"),
    ({"tenancy": []} | MINIMAL, "tenancy", "mapping"),
    (with_("listen", 9477), "listen", "string"),
    (with_("listen", "9477"), "listen", "host:port"),
    (with_("listen", ":9477"), "listen", "host:port"),
    (with_("listen", "127.0.0.1:0"), "listen", "1..65535"),
    (with_("listen", "127.0.0.1:65536"), "listen", "1..65535"),
    (with_("listen", "127.0.0.1:http"), "listen", "1..65535"),
    (with_("listen", "127.0.0.1:+80"), "listen", "1..65535"),
    (with_("listen", "::1:9477"), "listen", "brackets"),
    (with_("listen", "[::1]9477"), "listen", "[IPv6]:port"),
    (with_("listen", "[nope]:9477"), "listen", "[IPv6]:port"),
    (with_("listen", "bad host:1"), "listen", "host name"),
    (with_("log_format", "xml"), "log_format", "text | json"),
    (with_("log_level", "verbose"), "log_level", "debug"),
    ({}, "targets", "required"),
    ({"targets": []}, "targets", "at least one"),
    ({"targets": "nginx"}, "targets", "list"),
    ({"targets": [{"process": f"p{i}"} for i in range(9)]}, "targets", "at most 8"),
    ({"targets": ["nginx"]}, "targets[0]", "mapping"),
    ({"targets": [{"name": "edge"}]}, "targets[0].process", "required"),
    ({"targets": [{"process": ""}]}, "targets[0].process", "1..15"),
    ({"targets": [{"process": "a" * 16}]}, "targets[0].process", "1..15"),
    ({"targets": [{"process": "é" * 8}]}, "targets[0].process", "1..15"),
    ({"targets": [{"process": "ng\x00x"}]}, "targets[0].process", "control"),
    ({"targets": [{"process": 123}]}, "targets[0].process", "quote it"),
    ({"targets": [{"process": "nginx", "name": "bad name"}]}, "targets[0].name", "must match"),
    ({"targets": [{"process": "nginx"}, {"process": "envoy", "name": "nginx"}]},
     "targets[1].name", "duplicate"),
    ({"targets": [{"process": "nginx"}, {"process": "nginx", "name": "b"}]},
     "targets[1].process", "already"),
    (with_("tenancy.sources", {"header": "x"}), "tenancy.sources", "list"),
    (with_("tenancy.sources", []), "tenancy.sources", "at least one"),
    (with_("tenancy.sources", [{"header": f"x-{i}"} for i in range(MAX_SOURCES + 1)]),
     "tenancy.sources", "at most 8"),
    (with_("tenancy.sources", [{"header": "a"}, {"side": "server"}]), "tenancy.sources[1]",
     "exactly one of header, host, jwt (got none)"),
    (with_("tenancy.sources", [{"header": "a", "host": "{tenant}.x"}]), "tenancy.sources[0]",
     "got header, host"),
    (with_("tenancy.sources", [{"header": "a", "sid": "server"}]), "tenancy.sources[0].sid",
     "did you mean 'side'"),
    (with_("tenancy.sources", [{"header": "a"}, {"header": "a"}]), "tenancy.sources[1]",
     "duplicate of sources[0]"),
    (with_("tenancy.sources", [{"header": "X Tenant"}]), "tenancy.sources[0].header",
     "not a valid header name"),
    (with_("tenancy.sources", [{"header": "X-Tenant:"}]), "tenancy.sources[0].header",
     "not a valid header name"),
    (with_("tenancy.sources", [{"header": ""}]), "tenancy.sources[0].header", "not a valid"),
    (with_("tenancy.sources", [{"header": "x-ténant"}]), "tenancy.sources[0].header",
     "not a valid"),
    (with_("tenancy.sources", [{"header": "x" * (MAX_HEADER_NAME + 1)}]),
     "tenancy.sources[0].header", "longer than 32"),
    (with_("tenancy.sources", [{"header": None}]), "tenancy.sources[0].header", "string"),
    (with_("tenancy.sources", [{"header": "a", "side": "both"}]), "tenancy.sources[0].side",
     "server | client"),
    (with_("tenancy.sources", [{"header": "a", "side": 1}]), "tenancy.sources[0].side",
     "server | client"),
    (with_("tenancy.sources", [{"header": "a", "trusted": "yes"}]),
     "tenancy.sources[0].trusted", "true or false"),
    (with_("tenancy.sources", [{"host": "{tenant}.x", "trusted": True}]),
     "tenancy.sources[0].trusted", "only header"),
    (with_("tenancy.sources", [{"jwt": {}, "trusted": True}]), "tenancy.sources[0].trusted",
     "only header"),
    (with_("tenancy.sources", [{"host": "api.example.com"}]), "tenancy.sources[0].host",
     "exactly once"),
    (with_("tenancy.sources", [{"host": "{tenant}.{tenant}.x"}]), "tenancy.sources[0].host",
     "exactly once"),
    (with_("tenancy.sources", [{"host": "{tenant}.api/x"}]), "tenancy.sources[0].host",
     "only letters"),
    (with_("tenancy.sources", [{"host": "{tenant}." + "a" * 250}]), "tenancy.sources[0].host",
     "253"),
    (with_("tenancy.sources", [{"jwt": "tenant_id"}]), "tenancy.sources[0].jwt", "mapping"),
    (with_("tenancy.sources", [{"jwt": {"clam": "x"}}]), "tenancy.sources[0].jwt.clam",
     "did you mean 'claim'"),
    (with_("tenancy.sources", [{"jwt": {"claim": ""}}]), "tenancy.sources[0].jwt.claim",
     "empty"),
    (with_("tenancy.sources", [{"jwt": {"jwks_file": 3}}]), "tenancy.sources[0].jwt.jwks_file",
     "string"),
    (with_("tenancy.sources", [{"jwt": {"algorithms": []}}]),
     "tenancy.sources[0].jwt.algorithms", "empty"),
    (with_("tenancy.sources", [{"jwt": {"algorithms": "RS256"}}]),
     "tenancy.sources[0].jwt.algorithms", "list"),
    (with_("tenancy.sources", [{"jwt": {"algorithms": ["RS256", "none"]}}]),
     "tenancy.sources[0].jwt.algorithms[1]", "one of"),
    (with_("tenancy.sources", [{"jwt": {"audience": ["a", 1]}}]),
     "tenancy.sources[0].jwt.audience[1]", "string"),
    (with_("tenancy.sources", [{"jwt": {"leeway_seconds": -1}}]),
     "tenancy.sources[0].jwt.leeway_seconds", "0..3600"),
    (with_("tenancy.pattern", "([a-z"), "tenancy.pattern", "not a valid regex"),
    (with_("tenancy.pattern", 5), "tenancy.pattern", "string"),
    (with_("tenancy.pattern", ".*"), "tenancy.pattern", "reserved label __other__"),
    (with_("tenancy.pattern", "^_*[a-z]+_*$"), "tenancy.pattern", "reserved"),
    (with_("tenancy.tenants", "acme"), "tenancy.tenants", "list"),
    (with_("tenancy.tenants", ["acme", "bad tenant"]), "tenancy.tenants[1]", "does not match"),
    (with_("tenancy.tenants", ["acme", "acme"]), "tenancy.tenants[1]", "duplicate"),
    (with_("tenancy.tenants", ["acme", True]), "tenancy.tenants[1]", "quote it"),
    (with_("tenancy.tenants", ["acme", 123]), "tenancy.tenants[1]", "quote it"),
    (with_("tenancy", {"tenants": ["a", "b"], "max_tenants": 1}), "tenancy.tenants",
     "exceed max_tenants"),
    (with_("tenancy.max_tenants", 0), "tenancy.max_tenants", "1..100000"),
    (with_("tenancy.max_tenants", 100001), "tenancy.max_tenants", "1..100000"),
    (with_("tenancy.max_tenants", 10.0), "tenancy.max_tenants", "integer"),
    (with_("tenancy.max_tenants", True), "tenancy.max_tenants", "integer"),
    (with_("tenancy.max_tenants", "10"), "tenancy.max_tenants", "integer"),
    (with_("tenancy.default", "not valid"), "tenancy.default", "does not match"),
    (with_("tenancy.default", "__other__"), "tenancy.default", "does not match"),
    (with_("tenancy.default", False), "tenancy.default", "string"),
    (with_("tenancy.pattern", "^[0-9]+$"), "tenancy.default", "'common'"),
    (with_("tenancy.idle_seconds", 0), "tenancy.idle_seconds", "1..604800"),
    (with_("tenancy.idle_seconds", "5m"), "tenancy.idle_seconds", "number"),
    (with_("enforcement.mode", "on"), "enforcement.mode", "off | dry-run | enforce"),
    (with_("enforcement.mode", True), "enforcement.mode", "off | dry-run | enforce"),
    (with_("enforcement.cgroup", "/sys/fs/cgroup/tenants.slice"), "enforcement.cgroup",
     "{tenant}"),
    (with_("enforcement.cgroup", "tenants/{tenant}"), "enforcement.cgroup", "absolute"),
    (with_("enforcement", "enforce"), "enforcement", "mapping"),
    (with_("capture.latency_buckets", []), "capture.latency_buckets", "1..24"),
    (with_("capture.latency_buckets", [0.001 * (i + 1) for i in range(25)]),
     "capture.latency_buckets", "1..24"),
    (with_("capture.latency_buckets", 0.1), "capture.latency_buckets", "list"),
    (with_("capture.latency_buckets", [0.1, 0.2, 0.3, 0.3]), "capture.latency_buckets[3]",
     "not greater"),
    (with_("capture.latency_buckets", [0.1, 0.05]), "capture.latency_buckets[1]", "not greater"),
    (with_("capture.latency_buckets", [0, 1]), "capture.latency_buckets[0]", "finite number"),
    (with_("capture.latency_buckets", [-1, 1]), "capture.latency_buckets[0]", "finite number"),
    (with_("capture.latency_buckets", [1, float("inf")]), "capture.latency_buckets[1]",
     "finite"),
    (with_("capture.latency_buckets", [1, float("nan")]), "capture.latency_buckets[1]",
     "finite"),
    (with_("capture.latency_buckets", [0.1, "1s"]), "capture.latency_buckets[1]", "number"),
    (with_("capture.latency_buckets", [True]), "capture.latency_buckets[0]", "number"),
    (with_("capture.tick_seconds", 0.05), "capture.tick_seconds", "0.1..60"),
    (with_("capture.tick_seconds", 61), "capture.tick_seconds", "0.1..60"),
    (with_("capture.max_connections", 1023), "capture.max_connections", "1024..1048576"),
    (with_("capture.max_connections", 1048577), "capture.max_connections", "1024..1048576"),
    (with_("capture.rescan_seconds", 0), "capture.rescan_seconds", "0.1..3600"),
]


@pytest.mark.parametrize("data,field,words", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_errors_name_the_field(data: Any, field: str, words: str) -> None:
    e = error_of(data)
    assert e.field == field, e
    assert words in e.message, e
    assert str(e).startswith(f"{field}: ")


def test_unknown_keys_all_listed() -> None:
    e = error_of({**MINIMAL, "tenancy": {"max_tenant": 1, "patern": "x"}})
    assert e.field == "tenancy.max_tenant"
    assert "'max_tenants'" in e.message and "'patern'" in e.message and "'pattern'" in e.message


def test_trusted_header_read_from_clients_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tenantwatch.config"):
        parse(with_("tenancy.sources", [{"header": "X-Tenant-Context", "trusted": True}]))
    assert "a client can forge it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tenantwatch.config"):
        parse(with_("tenancy.sources", [{"header": "X-T", "trusted": True, "side": "client"}]))
    assert caplog.text == ""


def test_sources_may_repeat_a_header_on_different_sides() -> None:
    c = parse(with_("tenancy.sources", [{"header": "X-T", "side": "client"},
                                        {"header": "x-t", "side": "server"}]))
    assert [s.side for s in c.tenancy.sources] == [Side.CLIENT, Side.SERVER]


def test_jwt_defaults_and_read_only() -> None:
    src = parse(with_("tenancy.sources", [{"jwt": None}])).tenancy.sources[0]
    assert (src.kind, src.header, src.trusted) == ("jwt", "authorization", False)
    assert src.jwt == cfg.JwtSettings()
    assert src.jwt is not None and src.jwt.claim == "tenant_id" and not src.jwt.has_key_source
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        src.jwt.claim = "x"  # type: ignore[misc]
    full = parse(with_("tenancy.sources", [{"jwt": {
        "claim": "org", "pem_file": "/k.pem", "issuer": "i", "audience": ["a", "b"],
        "algorithms": ["ES256"], "leeway_seconds": 5}}])).tenancy.sources[0].jwt
    assert full == cfg.JwtSettings(claim="org", pem_file="/k.pem", issuer="i",
                                   audience=("a", "b"), algorithms=("ES256",),
                                   leeway_seconds=5.0)
    assert full.has_key_source


def test_allow_list_may_fill_max_tenants() -> None:
    c = parse(with_("tenancy", {"tenants": ["a", "b"], "max_tenants": 2}))
    assert c.tenancy.tenants == ("a", "b")


# --- environment -----------------------------------------------------------------------------


def test_env_overrides_win_over_the_file() -> None:
    data = {**MINIMAL, "listen": "127.0.0.1:1", "log_format": "text", "log_level": "info",
            "tenancy": {"max_tenants": 10}, "enforcement": {"mode": "off"}}
    c = parse(data, TENANTWATCH_LISTEN="[::]:9999", TENANTWATCH_LOG_FORMAT="json",
              TENANTWATCH_LOG_LEVEL="WARNING", TENANTWATCH_ENFORCEMENT_MODE="enforce",
              TENANTWATCH_MAX_TENANTS=" 50 ", TENANTWATCH_TICK_SECONDS="2.5")
    assert (c.listen_host, c.listen_port) == ("::", 9999)
    assert (c.log_format, c.log_level) == ("json", "warning")
    assert c.enforcement.mode == "enforce"
    assert c.tenancy.max_tenants == 50
    assert c.capture.tick_seconds == 2.5


def test_empty_env_value_counts_as_unset() -> None:
    c = parse({**MINIMAL, "listen": "127.0.0.1:1"}, TENANTWATCH_LISTEN="",
              TENANTWATCH_MAX_TENANTS=" ")
    assert c.listen_port == 1 and c.tenancy.max_tenants == 1000


@pytest.mark.parametrize("var,value,words", [
    ("TENANTWATCH_LISTEN", "nowhere", "host:port"),
    ("TENANTWATCH_LISTEN", "127.0.0.1:99999", "1..65535"),
    ("TENANTWATCH_LOG_FORMAT", "yaml", "text | json"),
    ("TENANTWATCH_LOG_LEVEL", "loud", "debug"),
    ("TENANTWATCH_ENFORCEMENT_MODE", "yes", "off | dry-run | enforce"),
    ("TENANTWATCH_MAX_TENANTS", "many", "not an integer"),
    ("TENANTWATCH_MAX_TENANTS", "1.5", "not an integer"),
    ("TENANTWATCH_MAX_TENANTS", "0", "1..100000"),
    ("TENANTWATCH_TICK_SECONDS", "fast", "not a number"),
    ("TENANTWATCH_TICK_SECONDS", "nan", "finite"),
    ("TENANTWATCH_TICK_SECONDS", "100", "0.1..60"),
])
def test_bad_env_values_name_the_variable(var: str, value: str, words: str) -> None:
    e = error_of(MINIMAL, **{var: value})
    assert e.field == var
    assert words in e.message


def test_env_max_tenants_checked_against_allow_list() -> None:
    e = error_of(with_("tenancy.tenants", ["a", "b", "c"]), TENANTWATCH_MAX_TENANTS="2")
    assert e.field == "tenancy.tenants" and "exceed max_tenants" in e.message


def test_unknown_env_variable_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tenantwatch.config"):
        parse(MINIMAL, TENANTWATCH_LISTN="1.2.3.4:5", TENANTWATCH_CONFIG="/x", OTHER_VAR="1")
    assert "TENANTWATCH_LISTN" in caplog.text and "TENANTWATCH_LISTEN?" in caplog.text
    assert "TENANTWATCH_CONFIG" not in caplog.text and "OTHER_VAR" not in caplog.text


# --- files -----------------------------------------------------------------------------------


def test_load_config_path_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, "targets: [{process: envoy}]\n")
    c = load_config(env={"TENANTWATCH_CONFIG": path})
    assert c.targets[0].process == "envoy"


def test_load_config_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []

    def fake_open(path: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(path)
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(ConfigError):
        load_config(env={})
    assert opened == [cfg.DEFAULT_CONFIG_PATH]


@pytest.mark.parametrize("text,words", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("targets: [{process: nginx}\n", "YAML error"),
    ("listen: a\n  b: c\n", "YAML error"),
    ("targets: [{process: nginx}]\ntargets: []\n", "duplicate key 'targets'"),
    ("targets:\n  - process: nginx\n    process: envoy\n", "duplicate key 'process'"),
])
def test_bad_files(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.field == "<file>"
    assert words in info.value.message and path in info.value.message


def test_yaml_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "targets:\n  - process: nginx\nlisten: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert re.search(re.escape(path) + r":\d+:\d+: YAML error", info.value.message)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"), env={})
    assert info.value.field == "<file>" and "nope.yaml" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), env={})  # a directory
    assert info.value.field == "<file>"
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as info:
        load_config(str(binary), env={})
    assert info.value.field == "<file>"


def test_yaml_off_is_the_off_mode(tmp_path: Path) -> None:
    path = write(tmp_path, "targets: [{process: nginx}]\nenforcement: {mode: off}\n")
    assert load_config(path, env={}).enforcement.mode == "off"


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = write(tmp_path, "targets: [{<<: {process: nginx}, name: a}]\n")
    assert load_config(path, env={}).targets[0] == cfg.Target("a", "nginx")


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "targets: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.field == "<file>"


def _sources(*items: Any) -> dict:
    return {"targets": [{"process": "nginx"}], "tenancy": {"sources": list(items)}}


def test_one_header_may_have_a_source_per_side() -> None:
    c = parse_config(_sources({"header": "X-Tenant", "side": "client", "trusted": True},
                              {"header": "X-Tenant", "side": "server"}), env={})
    assert [s.side for s in c.tenancy.sources] == [Side.CLIENT, Side.SERVER]


@pytest.mark.parametrize("items", [
    ({"host": "{tenant}.a.example"}, {"header": "Host", "side": "server"}),
    ({"host": "{tenant}.a.example"}, {"host": "{tenant}.b.example"}),
    ({"header": "X-T"}, {"header": "x-t", "side": "client"}),
])
def test_two_sources_on_one_header_and_side_are_rejected(items: tuple) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_sources(*items), env={})
    assert e.value.field == "tenancy.sources[1]"
    assert "only the first would ever match" in e.value.message


# --- jwt verification settings (issue 5) -----------------------------------------------------


def _jwt(**settings: Any) -> dict:
    return with_("tenancy.sources", [{"jwt": settings}])


def test_jwt_key_sources_parse() -> None:
    url = parse(_jwt(jwks_url="https://idp.example/.well-known/jwks.json",
                     jwks_refresh_seconds=60, algorithms=["ES256", "ES384"],
                     audience="api", issuer="https://idp.example/")).tenancy.sources[0]
    assert url.jwt == cfg.JwtSettings(
        claim="tenant_id", jwks_url="https://idp.example/.well-known/jwks.json",
        jwks_refresh_seconds=60.0, algorithms=("ES256", "ES384"), audience="api",
        issuer="https://idp.example/")
    assert url.trusted is False  # trust comes from verification, not configuration
    hs = parse(_jwt(jwks_file="/etc/tw/jwks.json", algorithms=["HS256", "HS512"]))
    assert hs.tenancy.sources[0].jwt == cfg.JwtSettings(jwks_file="/etc/tw/jwks.json",
                                                        algorithms=("HS256", "HS512"))
    rsa = parse(_jwt(pem_file="/etc/tw/idp.pem", algorithms=["RS256", "PS256"]))
    assert rsa.tenancy.sources[0].jwt == cfg.JwtSettings(pem_file="/etc/tw/idp.pem",
                                                         algorithms=("RS256", "PS256"))


def test_jwt_settings_key_source_and_a_bare_jwt_source() -> None:
    assert not cfg.JwtSettings().has_key_source
    for key in ("jwks_file", "jwks_url", "pem_file"):
        assert cfg.JwtSettings(**{key: "/x"}).has_key_source
    assert not cfg.JwtSettings(issuer="i", audience="a", algorithms=("ES256",)).has_key_source
    # a jwt Source always has settings: the defaults when built without them
    assert cfg.Source("jwt", "authorization").jwt == cfg.JwtSettings()
    assert cfg.Source("header", "x-t").jwt is None


@pytest.mark.parametrize(("settings", "field", "words"), [
    ({"jwks_file": "/a", "pem_file": "/b"}, "pem_file", "at most one of"),
    ({"jwks_file": "/a", "jwks_url": "https://x/j"}, "jwks_url", "at most one of"),
    ({"jwks_url": "https://x/j", "pem_file": "/b"}, "pem_file", "at most one of"),
    ({"jwks_file": "jwks.json"}, "jwks_file", "absolute"),
    ({"pem_file": ""}, "pem_file", "empty"),
    ({"jwks_url": "ftp://idp/jwks"}, "jwks_url", "http(s) URL"),
    ({"jwks_url": "https://"}, "jwks_url", "http(s) URL"),
    ({"jwks_url": 5}, "jwks_url", "string"),
    ({"jwks_url": "https://x/j", "jwks_refresh_seconds": 5}, "jwks_refresh_seconds", "10..86400"),
    ({"jwks_url": "https://x/j", "jwks_refresh_seconds": "5m"}, "jwks_refresh_seconds",
     "number"),
    ({"jwks_file": "/a", "jwks_refresh_seconds": 60}, "jwks_refresh_seconds", "jwks_url"),
    ({"jwks_file": "/a", "algorithms": ["RS256", "HS256"]}, "algorithms", "one family"),
    ({"jwks_file": "/a", "algorithms": ["ES256", "EdDSA"]}, "algorithms", "one family"),
    ({"jwks_file": "/a", "algorithms": ["PS256", "ES256"]}, "algorithms", "one family"),
    ({"pem_file": "/a", "algorithms": ["HS256"]}, "algorithms", "oct key"),
    ({"jwks_file": "/a", "algorithms": ["none"]}, "algorithms[0]", "one of"),
    ({"jwks_file": "/a", "audience": []}, "audience", "empty"),
    ({"jwks_file": "/a", "issuer": ""}, "issuer", "empty"),
    ({"jwks_file": "/a", "jwks_uri": "https://x"}, "jwks_uri", "did you mean 'jwks_url'"),
])
def test_jwt_key_errors_name_the_field(settings: dict, field: str, words: str) -> None:
    e = error_of(_jwt(**settings))
    assert e.field == f"tenancy.sources[0].jwt.{field}"
    assert words in e.message


def test_jwt_checks_without_keys_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tenantwatch.config"):
        src = parse(_jwt(issuer="https://idp", algorithms=["RS256"])).tenancy.sources[0]
    assert src.trusted is False
    assert "NOT verified" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tenantwatch.config"):
        parse(_jwt(claim="org"))
    assert caplog.text == ""


def test_jwt_plain_http_url_warns_unless_loopback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tenantwatch.config"):
        parse(_jwt(jwks_url="http://127.0.0.1:8080/jwks"))
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="tenantwatch.config"):
        parse(_jwt(jwks_url="http://idp.example/jwks"))
    assert "plain http" in caplog.text


def test_advisories_in_enforce_mode_say_what_trust_rests_on() -> None:
    data = {"targets": [{"process": "nginx"}],
            "tenancy": {"sources": [
                {"header": "X-Tenant-Context", "side": "client", "trusted": True},
                {"header": "X-Tenant-ID", "side": "server"},
                {"jwt": {"claim": "tenant_id", "pem_file": "/k.pem", "issuer": "i"},
                 "side": "server"},
                {"jwt": {"claim": "org", "pem_file": "/k.pem", "issuer": "i",
                         "audience": "gw"}, "side": "client"}]},
            "enforcement": {"mode": "enforce"}}
    advice = cfg.advisories(parse(data))
    assert len(advice) == 2
    assert "'x-tenant-context' is trusted" in advice[0] and "authenticated" in advice[0]
    assert "tenant_id claim" in advice[1] and "no audience" in advice[1]
    assert "issuer" not in advice[1].split(":")[0]  # it has one
    data["enforcement"]["mode"] = "dry-run"  # nothing can be capped: nothing to warn about
    assert cfg.advisories(parse(data)) == []


def test_check_config_prints_the_advisories(tmp_path: Path, capsys: Any) -> None:
    from tenantwatch import cli

    path = write(tmp_path, """\
        targets: [{process: nginx}]
        tenancy:
          sources: [{header: X-Tenant-Context, side: client, trusted: true}]
        enforcement: {mode: enforce}
        """)
    assert cli.main(["check-config", "--config", path]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("ok: ")
    assert out.err.startswith("warning: 'x-tenant-context' is trusted")


def test_web_config_file_must_be_an_absolute_path() -> None:
    assert parse(MINIMAL).web_config_file is None
    assert parse({**MINIMAL, "web_config_file": "/etc/tenantwatch/web.yml"}).web_config_file \
        == "/etc/tenantwatch/web.yml"
    with pytest.raises(ConfigError, match="absolute path"):
        parse({**MINIMAL, "web_config_file": "web.yml"})


def test_response_check_parses_with_defaults_and_both_sides() -> None:
    c = parse(with_("tenancy.response_check", {"header": "X-Served-Tenant"}))
    assert c.tenancy.response_check == cfg.ResponseCheck("x-served-tenant", (Side.CLIENT,), 20)
    c = parse(with_("tenancy.response_check", {"header": "x-served-tenant", "side": "both",
                                               "events_per_second": 5}))
    assert c.tenancy.response_check.sides == (Side.SERVER, Side.CLIENT)
    assert c.tenancy.response_check.events_per_second == 5
    assert parse(MINIMAL).tenancy.response_check is None


@pytest.mark.parametrize(("value", "where", "words"), [
    ({}, "tenancy.response_check.header", "required"),
    ({"header": "bad name"}, "tenancy.response_check.header", "not a valid header name"),
    ({"header": "x" * 33}, "tenancy.response_check.header", "longer than 32"),
    ({"header": "a", "side": "upstream"}, "tenancy.response_check.side", "upstream"),
    ({"header": "a", "events_per_second": 0}, "tenancy.response_check.events_per_second", ""),
    ({"header": "a", "sid": "client"}, "tenancy.response_check.sid", "did you mean 'side'"),
])
def test_response_check_errors_name_the_key(value: Any, where: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(with_("tenancy.response_check", value))
    assert e.value.field == where and words in str(e.value)


def test_response_check_header_counts_against_the_kernel_name_table() -> None:
    sources = [{"header": f"x-h{i}", "side": "server"} for i in range(8)]
    data = with_("tenancy.sources", sources)
    data["tenancy"]["response_check"] = {"header": "x-h0"}  # a name already there: fine
    assert parse(data).tenancy.response_check.header == "x-h0"
    data["tenancy"]["response_check"] = {"header": "x-served"}
    with pytest.raises(ConfigError, match="at most 8"):
        parse(data)


def test_a_response_check_with_no_trusted_source_on_its_side_is_an_advisory() -> None:
    data = with_("tenancy.response_check", {"header": "X-Served-Tenant", "side": "both"})
    data["tenancy"]["sources"] = [
        {"header": "X-Tenant-Context", "side": "client", "trusted": True},
        {"header": "X-Tenant-ID", "side": "server"}]
    (advice,) = cfg.advisories(parse(data))  # dry-run: only this one
    assert "server side" in advice and "docs/isolation.md" in advice


def test_conf_d_drop_ins_merge_over_the_config_in_name_order(tmp_path: Path) -> None:
    main = tmp_path / "tenantwatch.yaml"
    main.write_text("targets: [{process: nginx}]\ntenancy: {max_tenants: 10, idle_seconds: 60}\n")
    assert cfg.load_config(str(main), env={}).tenancy.max_tenants == 10  # no conf.d: as is
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "20-tenants.yaml").write_text("tenancy: {max_tenants: 500}\n")
    (d / "10-listen.yml").write_text('listen: "0.0.0.0:9477"\ntenancy: {max_tenants: 50}\n')
    (d / "30-empty.yaml").write_text("")
    (d / "README").write_text("not yaml, not read")
    c = cfg.load_config(str(main), env={})
    assert c.listen == "0.0.0.0:9477"
    assert c.tenancy.max_tenants == 500  # 20- after 10-: the later file wins
    assert c.tenancy.idle_seconds == 60  # merged key by key, the rest kept
    (d / "40-bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="40-bad.yaml: a drop-in must be a mapping"):
        cfg.load_config(str(main), env={})
    (d / "40-bad.yaml").write_text("tenancy: {max_tenants: [\n")
    with pytest.raises(ConfigError, match="40-bad.yaml:.*YAML error"):
        cfg.load_config(str(main), env={})
    (d / "40-bad.yaml").write_text("tenancy: {max_tennants: 5}\n")
    with pytest.raises(ConfigError, match="did you mean 'max_tenants'"):
        cfg.load_config(str(main), env={})


def test_metrics_histogram_sides():
    from tenantwatch.config import parse_config
    base = {"targets": [{"process": "nginx"}]}
    assert parse_config(base, env={}).metrics.histogram_sides == ("server", "client")
    got = parse_config({**base, "metrics": {"histograms": ["client"]}}, env={})
    assert got.metrics.histogram_sides == ("client",)
    assert parse_config({**base, "metrics": {"histograms": []}}, env={}).metrics.histogram_sides == ()
    for bad, field in (({"histograms": ["upstream"]}, "metrics.histograms[0]"),
                       ({"histograms": ["server", "server"]}, "metrics.histograms"),
                       ({"buckets": 3}, "metrics")):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "metrics": bad}, env={})
        assert field in str(e.value)


def test_max_identities_follows_max_tenants():
    from tenantwatch.config import parse_config
    base = {"targets": [{"process": "nginx"}]}
    assert parse_config(base, env={}).capture.max_identities == 4096
    ten_k = parse_config({**base, "tenancy": {"max_tenants": 10000}}, env={})
    assert ten_k.capture.max_identities == 2 * 10000 + 2048
    set_ = parse_config({**base, "capture": {"max_identities": 5000}}, env={})
    assert set_.capture.max_identities == 5000
    for bad in (1023, 262145):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "capture": {"max_identities": bad}}, env={})
        assert "capture.max_identities" in str(e.value)
    # never below every tenant on both sides: no silent ceiling under max_tenants
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "tenancy": {"max_tenants": 3000},
                      "capture": {"max_identities": 5000}}, env={})
    assert "2 x tenancy.max_tenants + 16 = 6016" in str(e.value)
    ok = parse_config({**base, "tenancy": {"max_tenants": 3000},
                       "capture": {"max_identities": 6016}}, env={})
    assert ok.capture.max_identities == 6016


def test_power_model():
    from tenantwatch.config import parse_config
    base = {"targets": [{"process": "nginx"}]}
    p = parse_config(base, env={}).power
    assert (p.idle_watts, p.max_watts) == (None, None)
    p = parse_config({**base, "power": {"idle_watts": 90, "max_watts": 350.5}}, env={}).power
    assert (p.idle_watts, p.max_watts) == (90.0, 350.5)
    for bad, field in (({"idle_watts": 90}, "power"),
                       ({"idle_watts": 200, "max_watts": 100}, "power.max_watts"),
                       ({"idle_watts": -1, "max_watts": 100}, "power.idle_watts"),
                       ({"idle_watts": "90W", "max_watts": 100}, "power.idle_watts"),
                       ({"watts": 3}, "power")):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "power": bad}, env={})
        assert field in str(e.value), (bad, str(e.value))


def test_capture_sides():
    from tenantwatch.config import parse_config
    from tenantwatch.kernel.records import Side
    base = {"targets": [{"process": "nginx"}]}
    assert parse_config(base, env={}).capture.sides == (Side.SERVER, Side.CLIENT)
    one = parse_config({**base, "capture": {"sides": ["Server"]}}, env={})
    assert one.capture.sides == (Side.SERVER,)
    both = parse_config({**base, "capture": {"sides": ["client", "server"]}}, env={})
    assert both.capture.sides == (Side.SERVER, Side.CLIENT)
    for bad, field in (([], "capture.sides"), ("server", "capture.sides"),
                       (["server", "SERVER"], "capture.sides[1]"),
                       (["upstream"], "capture.sides[0]")):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "capture": {"sides": bad}}, env={})
        assert str(e.value).startswith(field + ":"), e.value
    # a source or a response check on a leg that is not followed could never see a request
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "capture": {"sides": ["client"]}}, env={})  # default: server
    assert "tenancy.sources[0].side" in str(e.value)
    checked = {**base, "capture": {"sides": ["server"]},
               "tenancy": {"sources": [{"header": "X-Tenant-ID", "side": "server"}],
                           "response_check": {"header": "X-Served-Tenant"}}}
    with pytest.raises(ConfigError) as e:
        parse_config(checked, env={})
    assert "tenancy.response_check.side" in str(e.value)
    # a source for both sides is fine on one
    anyside = {**base, "capture": {"sides": ["client"]},
               "tenancy": {"sources": [{"header": "X-Tenant-Context"}]}}
    assert parse_config(anyside, env={}).capture.sides == (Side.CLIENT,)
