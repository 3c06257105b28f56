"""TLS and basic auth for the HTTP endpoints, from a web config file in the Prometheus
exporter-toolkit format (the `--web.config.file` of node_exporter and the others):

    tls_server_config:
      cert_file: /etc/tenantwatch/tls.crt
      key_file: /etc/tenantwatch/tls.key
      client_ca_file: /etc/tenantwatch/ca.crt     # optional: clients must present a cert
      client_auth_type: RequireAndVerifyClientCert # with client_ca_file (the default then)
      min_version: TLS12                           # TLS12 (default) | TLS13
    basic_auth_users:
      prometheus: $2y$10$...                       # bcrypt hashes (htpasswd -nBC 10 "" ...)

Either part may be left out.  With basic_auth_users every endpoint asks for a user (a
Kubernetes probe then sends an Authorization header).  A password check costs one bcrypt hash
(about 50 ms at cost 10), so a check that passed is remembered (the SHA-256 of user and
password, never the password) for CACHE_SECONDS; failures are never cached.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tenantwatch.errors import ConfigError

CACHE_SECONDS = 60.0
MAX_CACHED = 256
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = ("NoClientCert", "RequireAndVerifyClientCert")


@dataclass
class WebConfig:
    """What the file asks for: a server TLS context, and users with bcrypt hashes."""

    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    _ok: dict[bytes, float] = field(default_factory=dict)  # sha256(user, password) -> until
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def authorized(self, header: str | None) -> bool:
        """Does this Authorization header name a user with the right password?  True when no
        users are configured."""
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode(
                "utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if not sep or hashed is None:
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        now = time.monotonic()
        with self._lock:
            until = self._ok.get(key)
            if until is not None and until > now:
                return True
        import bcrypt

        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:
            if len(self._ok) >= MAX_CACHED:
                self._ok.clear()
            self._ok[key] = now + CACHE_SECONDS
        return True


def load_web_config(path: str) -> WebConfig:
    """Read and check the file; every problem is a ConfigError naming the key."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError("web_config_file", f"cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError("web_config_file", f"{path} is not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError("web_config_file", f"{path}: a mapping is expected")
    unknown = set(doc) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise ConfigError("web_config_file", f"{path}: unknown keys {sorted(unknown)}")
    out = WebConfig()
    if doc.get("tls_server_config") is not None:
        out.ssl_context = _tls(doc["tls_server_config"], path)
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ConfigError("web_config_file", f"{path}: basic_auth_users must be a mapping")
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError("web_config_file", f"{path}: bad user name {user!r}")
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError("web_config_file", f"{path}: the password of {user!r} must be a "
                              "bcrypt hash ($2y$...), never the password itself")
        out.users[user] = hashed.encode()
    if out.users:
        try:
            import bcrypt  # noqa: F401
        except ImportError as e:
            raise ConfigError("web_config_file", "basic_auth_users needs the bcrypt package "
                              "(pip install bcrypt, or Debian python3-bcrypt)") from e
    return out


def _tls(cfg: Any, path: str) -> ssl.SSLContext:
    if not isinstance(cfg, dict):
        raise ConfigError("web_config_file", f"{path}: tls_server_config must be a mapping")
    for key in ("cert_file", "key_file"):
        if not cfg.get(key):
            raise ConfigError("web_config_file", f"{path}: tls_server_config.{key} is required")
    version = cfg.get("min_version", "TLS12")
    if version not in TLS_VERSIONS:
        raise ConfigError("web_config_file", f"{path}: tls_server_config.min_version must be "
                          f"one of {sorted(TLS_VERSIONS)}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[version]
    try:
        ctx.load_cert_chain(cfg["cert_file"], cfg["key_file"])
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("web_config_file", f"{path}: cannot load the certificate or key: "
                          f"{e}") from e
    ca = cfg.get("client_ca_file")
    auth = cfg.get("client_auth_type", "RequireAndVerifyClientCert" if ca else "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise ConfigError("web_config_file", f"{path}: tls_server_config.client_auth_type must "
                          f"be one of {list(CLIENT_AUTH)}")
    if auth == "RequireAndVerifyClientCert":
        if not ca:
            raise ConfigError("web_config_file", f"{path}: client_auth_type "
                              "RequireAndVerifyClientCert needs client_ca_file")
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError("web_config_file", f"{path}: cannot load client_ca_file: "
                              f"{e}") from e
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx

