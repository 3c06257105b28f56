"""Reading a config: YAML with unique keys, conf.d drop-ins, environment overrides, the whole
file validated; advisories."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from tenantwatch.config.capture import _parse_capture
from tenantwatch.config.constants import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_LISTEN,
    ENV_CONFIG,
    ENV_LISTEN,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    LOG_LEVELS,
)
from tenantwatch.config.detection import parse_detection
from tenantwatch.config.enforcement import _parse_enforcement
from tenantwatch.config.exporting import _parse_metrics, _parse_otel, _parse_power
from tenantwatch.config.records import Capture, Config, Tenancy
from tenantwatch.config.tenancy import _parse_targets, _parse_tenancy
from tenantwatch.config.validators import (
    _check_keys,
    _choice,
    _default,
    _lower,
    _mapping,
    _pick,
    _split_listen,
    _str,
    _warn_unknown_env,
)
from tenantwatch.errors import ConfigError
from tenantwatch.logs import LOG_FORMATS  # one list, shared with the CLI

# --- loading ---------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


# Drop-in files beside the config: <its directory>/conf.d/*.yaml (and *.yml), merged over it in
# name order (a mapping merges key by key, anything else replaces), so that a package's conffile
# can stay untouched and each change lives in a file of its own.
CONF_D = "conf.d"


def load_config(path: str | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Read, parse and validate the file at ``path`` (default: $TENANTWATCH_CONFIG, then
    DEFAULT_CONFIG_PATH) with the drop-ins of its conf.d/ merged over it."""
    if path is None:
        path = env.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH
    data = _read_yaml(path)
    if data is None:
        raise ConfigError("<file>", f"{path} is empty")
    conf_d = os.path.join(os.path.dirname(os.path.abspath(path)), CONF_D)
    if os.path.isdir(conf_d):
        for name in sorted(os.listdir(conf_d)):
            if not name.endswith((".yaml", ".yml")) or name.startswith("."):
                continue
            drop_in = os.path.join(conf_d, name)
            more = _read_yaml(drop_in)
            if more is None:
                continue  # an empty drop-in changes nothing
            if not isinstance(more, dict) or not isinstance(data, dict):
                raise ConfigError("<file>", f"{drop_in}: a drop-in must be a mapping of keys "
                                  "to merge over the config")
            data = _merge(data, more)
    return parse_config(data, env)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("<file>", f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError("<file>", f"{path} is not UTF-8 text") from e
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        where, problem = path, str(e)
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}:{mark.column + 1}"
            problem = getattr(e, "problem", None) or problem
        raise ConfigError("<file>", f"{where}: YAML error: {problem}") from e
    return data


def parse_config(data: Any, env: Mapping[str, str] = os.environ) -> Config:
    """Validate already-parsed YAML ``data`` with the environment overrides applied."""
    _warn_unknown_env(env)
    top = _mapping(data, "<file>")
    _check_keys(top, ("listen", "targets", "tenancy", "enforcement", "capture", "detection",
                      "otel", "log_format", "log_level", "web_config_file", "metrics",
                      "power"), "")
    web = top.get("web_config_file")
    if web is not None:
        web = _str(web, "web_config_file")
        if not web.startswith("/"):
            raise ConfigError("web_config_file", "must be an absolute path")
    listen, field = _pick(top, "listen", "", DEFAULT_LISTEN, env, ENV_LISTEN)
    listen = _str(listen, field)
    _split_listen(listen, field)
    log_format, field = _pick(top, "log_format", "", _default(Config, "log_format"), env,
                              ENV_LOG_FORMAT)
    log_level, level_field = _pick(top, "log_level", "", _default(Config, "log_level"), env,
                                   ENV_LOG_LEVEL)
    tenancy = _parse_tenancy(top.get("tenancy"), "tenancy", env)
    capture = _parse_capture(top.get("capture"), "capture", env, tenancy.max_tenants)
    _check_traced_sides(tenancy, capture)
    return Config(
        listen=listen,
        targets=_parse_targets(top.get("targets"), "targets"),
        tenancy=tenancy,
        enforcement=_parse_enforcement(top.get("enforcement"), "enforcement", env),
        capture=capture,
        log_format=_choice(log_format, LOG_FORMATS, field),
        log_level=_choice(_lower(log_level), LOG_LEVELS, level_field),
        detection=parse_detection(top.get("detection"), "detection"),
        otel=_parse_otel(top.get("otel"), "otel"),
        metrics=_parse_metrics(top.get("metrics"), "metrics"),
        power=_parse_power(top.get("power"), "power"),
        web_config_file=web,
    )


def _check_traced_sides(tenancy: Tenancy, capture: Capture) -> None:
    """A source or a response check on a leg capture.sides leaves untraced could never see a
    request: an error naming it, not a silent nothing."""
    traced = ", ".join(s.value for s in capture.sides)
    for i, s in enumerate(tenancy.sources):
        if s.side is not None and s.side not in capture.sides:
            raise ConfigError(f"tenancy.sources[{i}].side",
                              f"the {s.side.value} side is not traced (capture.sides: {traced})")
    check = tenancy.response_check
    for side in check.sides if check is not None else ():
        if side not in capture.sides:
            raise ConfigError("tenancy.response_check.side",
                              f"checks the {side.value} side, which is not traced "
                              f"(capture.sides: {traced})")


def advisories(config: Config) -> list[str]:
    """What a valid configuration still leaves open, in words an operator can act on (printed by
    `check-config`, logged at start).  Only enforce mode can cap a tenant, so the trust ones are
    given for it alone; a response check that can never check anything is named in any mode."""
    out: list[str] = []
    check = config.tenancy.response_check
    for side in check.sides if check is not None else ():
        if not any(s.trusted and s.side in (None, side) for s in config.tenancy.sources):
            out.append(f"tenancy.response_check covers the {side.value} side, but no trusted "
                       f"header source reads requests there: only a request whose identity a "
                       f"trusted header gave is checked, so nothing will be "
                       f"(docs/isolation.md)")
    if config.enforcement.mode != "enforce":
        return out
    for s in config.tenancy.sources:
        if s.kind == "jwt" and s.jwt is not None:
            missing = [k for k, v in (("audience", s.jwt.audience), ("issuer", s.jwt.issuer))
                       if not v]
            if missing:
                out.append(f"the JWT source ({s.jwt.claim} claim) has no "
                           f"{' and no '.join(missing)}: any token signed with its keys counts, "
                           "also one issued to another service; set both")
        elif s.trusted:
            out.append(f"'{s.header}' is trusted: that asserts the gateway authenticated the "
                       "tenant before writing it (auth_request, or a verified token), not that "
                       "it checked the value's format; with a format check alone any client "
                       "can name any tenant and get it capped (docs/config.md#what-trusted-asserts)")
    return out
