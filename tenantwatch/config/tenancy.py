"""The `targets` and `tenancy` sections: process names, identity sources, the registry, the
response check, JWT settings."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from tenantwatch.config.constants import (
    _RESERVED,
    _TARGET_NAME,
    _TOKEN,
    ENV_MAX_TENANTS,
    FAMILY_OF,
    JWT_ALGORITHMS,
    MAX_COMM,
    MAX_HEADER_NAME,
    MAX_SOURCES,
    MAX_TARGETS,
    MAX_TENANTS_LIMIT,
    MIN_REFRESH_SECONDS,
)
from tenantwatch.config.records import (
    JwtSettings,
    Registry,
    ResponseCheck,
    Source,
    Target,
    Tenancy,
)
from tenantwatch.config.validators import (
    _bool,
    _check_keys,
    _choice,
    _default,
    _getter,
    _host_template,
    _int,
    _list,
    _lower,
    _mapping,
    _number,
    _pick,
    _str,
    _tenant,
)
from tenantwatch.errors import ConfigError
from tenantwatch.kernel.records import Side

log = logging.getLogger("tenantwatch.config")

# --- sections --------------------------------------------------------------------------------


def _parse_targets(value: Any, field: str) -> tuple[Target, ...]:
    if value is None:
        raise ConfigError(field, "required: list the gateway processes, e.g. [{process: nginx}]")
    items = _list(value, field)
    if not items:
        raise ConfigError(field, "needs at least one target")
    if len(items) > MAX_TARGETS:
        raise ConfigError(field, f"at most {MAX_TARGETS} targets (process names the kernel "
                          f"matches), got {len(items)}")
    targets: list[Target] = []
    for i, item in enumerate(items):
        f = f"{field}[{i}]"
        m = _mapping(item, f)
        _check_keys(m, ("name", "process"), f)
        if "process" not in m:
            raise ConfigError(f"{f}.process", "required")
        process = _str(m["process"], f"{f}.process")
        size = len(process.encode("utf-8"))
        if not 1 <= size <= MAX_COMM:
            raise ConfigError(f"{f}.process", f"must be 1..{MAX_COMM} bytes (the kernel's comm), "
                              f"got {size}")
        if any(ord(c) < 32 or ord(c) == 127 for c in process):
            raise ConfigError(f"{f}.process", "contains a control character")
        name = _str(m.get("name", process), f"{f}.name")
        if not _TARGET_NAME.fullmatch(name):
            raise ConfigError(f"{f}.name", f"{name!r} must match {_TARGET_NAME.pattern}")
        if any(t.name == name for t in targets):
            raise ConfigError(f"{f}.name", f"duplicate target name {name!r}")
        if any(t.process == process for t in targets):
            raise ConfigError(f"{f}.process", f"process {process!r} is already a target")
        targets.append(Target(name=name, process=process))
    return tuple(targets)


def _parse_tenancy(value: Any, field: str, env: Mapping[str, str]) -> Tenancy:
    m = _mapping(value, field)
    _check_keys(m, ("sources", "pattern", "tenants", "max_tenants", "default", "idle_seconds",
                    "registry", "response_check"), field)
    if "sources" in m:
        items = _list(m["sources"], f"{field}.sources")
        if not items:
            raise ConfigError(f"{field}.sources", "needs at least one source")
        if len(items) > MAX_SOURCES:
            raise ConfigError(f"{field}.sources", f"at most {MAX_SOURCES} sources (the kernel "
                              f"keeps one slot per source), got {len(items)}")
        sources = tuple(_parse_source(s, f"{field}.sources[{i}]") for i, s in enumerate(items))
    else:
        sources = _default(Tenancy, "sources")
    # The kernel reads each header name once per side (one tw_names slot per side): two
    # sources on the same header and side would leave the second one never matching.
    seen: dict[tuple[str, Side], int] = {}
    for i, s in enumerate(sources):
        for side in (s.side,) if s.side is not None else (Side.SERVER, Side.CLIENT):
            j = seen.setdefault((s.header, side), i)
            if j != i:
                raise ConfigError(f"{field}.sources[{i}]", (
                    f"duplicate of sources[{j}]" if sources[j] == s else
                    f"sources[{j}] already reads the {s.header!r} header on the {side.value} "
                    "side; only the first would ever match (give each side its own source)"))

    pattern = _str(m.get("pattern", _default(Tenancy, "pattern")), f"{field}.pattern")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{field}.pattern", f"not a valid regex: {e}") from e
    for label in _RESERVED:
        if regex.fullmatch(label):
            raise ConfigError(f"{field}.pattern", f"must not match the reserved label {label}")

    raw, max_field = _pick(m, "max_tenants", field, _default(Tenancy, "max_tenants"), env,
                           ENV_MAX_TENANTS, int)
    max_tenants = _int(raw, max_field, 1, MAX_TENANTS_LIMIT)

    tenants = []
    for i, t in enumerate(_list(m.get("tenants", _default(Tenancy, "tenants")),
                                f"{field}.tenants")):
        f = f"{field}.tenants[{i}]"
        tenant = _tenant(t, regex, f)
        if tenant in tenants:
            raise ConfigError(f, f"duplicate tenant {tenant!r}")
        tenants.append(tenant)
    if len(tenants) > max_tenants:
        raise ConfigError(f"{field}.tenants", f"{len(tenants)} tenants exceed max_tenants "
                          f"({max_tenants})")

    builtin = _default(Tenancy, "default")
    default = m.get("default", builtin)
    if "default" not in m and not regex.fullmatch(builtin):
        raise ConfigError(f"{field}.default", f"the built-in default {builtin!r} does not "
                          "match tenancy.pattern; set default (or null)")
    if default is not None:
        default = _tenant(default, regex, f"{field}.default")
    idle = _number(m.get("idle_seconds", _default(Tenancy, "idle_seconds")),
                   f"{field}.idle_seconds", 1.0, 604800.0)
    registry = None if m.get("registry") is None else \
        _parse_registry(m["registry"], f"{field}.registry")
    check = None if m.get("response_check") is None else \
        _parse_response_check(m["response_check"], f"{field}.response_check", sources)
    return Tenancy(sources=sources, pattern=pattern, tenants=tuple(tenants),
                   max_tenants=max_tenants, default=default, idle_seconds=idle,
                   registry=registry, response_check=check)


def _parse_response_check(value: Any, field: str, sources: tuple[Source, ...]) -> ResponseCheck:
    m = _mapping(value, field)
    _check_keys(m, ("header", "side", "events_per_second"), field)
    if "header" not in m:
        raise ConfigError(f"{field}.header", "required: the response header naming the tenant "
                          "a response served, e.g. X-Served-Tenant")
    name = _header_name(m["header"], f"{field}.header")
    builtin = _default(ResponseCheck, "sides")  # ("client",): in the file, one side or both
    side = _choice(_lower(m.get("side", builtin[0] if len(builtin) == 1 else "both")),
                   ("client", "server", "both"), f"{field}.side")
    sides = (Side.SERVER, Side.CLIENT) if side == "both" else (Side(side),)
    names = {s.header for s in sources} | {name}
    if len(names) > MAX_SOURCES:  # the kernel's name table: MAX_SOURCES names and two more
        raise ConfigError(f"{field}.header", f"the sources' headers and this one make "
                          f"{len(names)} distinct names; the kernel compares at most "
                          f"{MAX_SOURCES}")
    return ResponseCheck(header=name, sides=sides, events_per_second=_int(
        m.get("events_per_second", _default(ResponseCheck, "events_per_second")),
        f"{field}.events_per_second", 1, 10_000))


def _header_name(value: Any, field: str) -> str:
    """A header name as the kernel compares it: an RFC 7230 token, lowercased, bounded."""
    name = _str(value, field)
    if not _TOKEN.fullmatch(name):
        raise ConfigError(field, f"{name!r} is not a valid header name")
    if len(name) > MAX_HEADER_NAME:
        raise ConfigError(field, f"longer than {MAX_HEADER_NAME} characters (the kernel "
                          "compares names up to that length)")
    return name.lower()


def _parse_registry(value: Any, field: str) -> Registry:
    m = _mapping(value, field)
    _check_keys(m, ("redis", "key", "refresh_seconds", "backup_file", "max_entries",
                    "timeout_seconds"), field)
    if "redis" not in m:
        raise ConfigError(f"{field}.redis", "required: the URL of the Redis holding the "
                          "tenants' records, e.g. redis://127.0.0.1:6379/0")
    url = _str(m["redis"], f"{field}.redis")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{field}.redis", "a redis://, rediss:// or unix:// URL")
    get = _getter(m, field, Registry)
    key = _str(*get("key"))
    if key.count("{tenant}") != 1:
        raise ConfigError(f"{field}.key", "must contain {tenant} exactly once")
    backup = _str(*get("backup_file"))
    if not backup.startswith("/"):
        raise ConfigError(f"{field}.backup_file", "must be an absolute path")
    return Registry(
        redis=url, key=key, backup_file=backup,
        refresh_seconds=_number(*get("refresh_seconds"), 1.0, 3600.0),
        max_entries=_int(*get("max_entries"), 1, 10_000_000),
        timeout_seconds=_number(*get("timeout_seconds"), 0.1, 60.0))


def _parse_source(value: Any, field: str) -> Source:
    m = _mapping(value, field)
    _check_keys(m, ("header", "host", "jwt", "side", "trusted"), field)
    kinds = [k for k in ("header", "host", "jwt") if k in m]
    if len(kinds) != 1:
        got = ", ".join(kinds) or "none"
        raise ConfigError(field, f"needs exactly one of header, host, jwt (got {got})")
    kind = kinds[0]
    side = None
    if m.get("side") is not None:
        side = Side(_choice(_lower(m["side"]), tuple(s.value for s in Side), f"{field}.side"))
    trusted = _bool(m.get("trusted", _default(Source, "trusted")), f"{field}.trusted")
    if trusted and kind != "header":
        raise ConfigError(f"{field}.trusted", "only header sources can be trusted by "
                          "configuration (a jwt is trusted once its signature verifies)")
    if kind == "header":
        name = _header_name(m["header"], f"{field}.header")
        if trusted and side is not Side.CLIENT:
            log.warning("%s: trusted header %s is also read on connections clients opened; "
                        "a client can forge it there (use side: client)", field, name)
        return Source(kind="header", header=name, side=side, trusted=trusted)
    if kind == "host":
        return Source(kind="host", header="host", side=side, trusted=False,
                      host_template=_host_template(m["host"], f"{field}.host"))
    return Source(kind="jwt", header="authorization", side=side, trusted=False,
                  jwt=_parse_jwt(m["jwt"], f"{field}.jwt"))


def _parse_jwt(value: Any, field: str) -> JwtSettings:
    """A jwt source's settings; with no key source the claim is read unverified (CLAIMED).  A key
    left out has JwtSettings' default (None: not set)."""
    m = _mapping(value, field)
    _check_keys(m, ("claim", "jwks_file", "jwks_url", "jwks_refresh_seconds", "pem_file",
                    "algorithms", "audience", "issuer", "leeway_seconds"), field)
    get = _getter(m, field, JwtSettings)
    claim = _str(*get("claim"))
    if not claim:
        raise ConfigError(f"{field}.claim", "must not be empty")
    text: dict[str, str] = {}  # the string keys given, each non-empty
    for key in ("jwks_file", "jwks_url", "pem_file", "issuer"):
        if key in m:
            text[key] = _str(m[key], f"{field}.{key}")
            if not text[key]:
                raise ConfigError(f"{field}.{key}", "must not be empty")
    given = [k for k in ("jwks_file", "jwks_url", "pem_file") if k in text]
    if len(given) > 1:
        raise ConfigError(f"{field}.{given[1]}", f"at most one of jwks_file, jwks_url, "
                          f"pem_file (got {', '.join(given)})")
    for key in ("jwks_file", "pem_file"):
        if key in text and not text[key].startswith("/"):
            raise ConfigError(f"{field}.{key}", "must be an absolute path")
    url = text.get("jwks_url")
    if url is not None:
        if not re.match(r"https?://[^/?#\s]+", url):
            raise ConfigError(f"{field}.jwks_url", f"must be an http(s) URL, got {url!r}")
        host = re.sub(r"^https?://([^@/]*@)?", "", url).split("/")[0].rsplit(":", 1)[0]
        if url.startswith("http://") and host not in ("localhost", "127.0.0.1", "[::1]"):
            log.warning("%s.jwks_url: plain http: whoever can alter the response can make any "
                        "token verify (use https)", field)
    if "jwks_refresh_seconds" in m and url is None:
        raise ConfigError(f"{field}.jwks_refresh_seconds", "only applies with jwks_url")
    refresh = _number(*get("jwks_refresh_seconds"), MIN_REFRESH_SECONDS, 86400)
    audience: str | tuple[str, ...] | None = None
    if "audience" in m:
        aud = m["audience"]
        audience = (tuple(_str(a, f"{field}.audience[{i}]") for i, a in
                          enumerate(_list(aud, f"{field}.audience")))
                    if isinstance(aud, list) else _str(aud, f"{field}.audience"))
        if not audience:
            raise ConfigError(f"{field}.audience", "must not be empty")
    algs = _list(*get("algorithms"))
    if not algs:
        raise ConfigError(f"{field}.algorithms", "must not be empty")
    algorithms = tuple(_choice(a, JWT_ALGORITHMS, f"{field}.algorithms[{i}]")
                       for i, a in enumerate(algs))
    families = sorted({FAMILY_OF[a] for a in algorithms})
    if len(families) > 1:
        raise ConfigError(f"{field}.algorithms", "must all be of one family (RS*/PS*, "
                          f"ES*, EdDSA or HS*), got {', '.join(algorithms)}: "
                          "mixing families lets a key be read the wrong way")
    if families == ["oct"] and "pem_file" in text:
        raise ConfigError(f"{field}.algorithms", "HS* needs a shared secret from a JWKS "
                          "oct key (jwks_file or jwks_url), never pem_file")
    leeway = _number(*get("leeway_seconds"), 0, 3600)
    checks = [k for k in ("algorithms", "audience", "issuer", "leeway_seconds") if k in m]
    if checks and not given:
        log.warning("%s: %s set but no jwks_file, jwks_url or pem_file: the token is NOT "
                    "verified and its claim stays claimed", field, ", ".join(checks))
    return JwtSettings(claim=claim, jwks_file=text.get("jwks_file"), jwks_url=url,
                       jwks_refresh_seconds=refresh, pem_file=text.get("pem_file"),
                       algorithms=algorithms, audience=audience, issuer=text.get("issuer"),
                       leeway_seconds=leeway)
