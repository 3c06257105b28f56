"""Known tenants from the metadata store the gateway already uses (Redis): the tenant registry.

Takes: ``tenancy.registry`` (config.Registry): a Redis URL and the key template of the tenants'
records (the seed's ``tenant:config:{tenant}``).  Gives: ``refusal(tenant)``, why a value may not
become a tenant label (``unregistered``, ``suspended``) or None; ``quotas()``, the CPU quotas the
records name; and ``status()``, what /healthz and the metrics show.

The resolver asks it before a value becomes a tenant label: only a tenant the registry knows, with
status ``active``, takes a label and a slot; other values are counted under their own reasons
(``unregistered``, ``suspended``), never in a slot (identity/resolver.py).

The registry is read whole in the background, every ``refresh_seconds``: a bounded SCAN of the
keys that match the template (at most ``max_entries``; more is an error, the last good registry
stays), then MGET in batches.  A record is JSON (``{"status": "active", "cpu": 1.5}``), or any
other string, which the seed's gateway stores (a connection string) and which means "known,
active".  Each good read is written to ``backup_file`` (atomically); at start, or while Redis is
down, the last good registry is used: the one in memory, else the backup file.  ``stale`` is true
while the registry in use is not from the latest read.  Before any registry was ever read (Redis
down at the first start and no backup), there is nothing to check against: values are admitted
as without a registry, and ``status()["state"]`` says ``unavailable``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config imports this package at run time; annotations only
    from tenantwatch.config import Registry

log = logging.getLogger(__name__)

ACTIVE = "active"
MGET_BATCH = 500
SCAN_COUNT = 1000


class RegistryError(Exception):
    """The registry could not be read (Redis down, too many keys, a bad backup file)."""


@dataclass(frozen=True)
class RegistryEntry:
    tenant: str
    status: str  # "active", or whatever else the record says (suspended, deleted ...)
    cpu_cores: float | None = None  # the record's CPU quota, when it names one

    @property
    def active(self) -> bool:
        return self.status == ACTIVE


def parse_record(tenant: str, raw: str | bytes) -> RegistryEntry:
    """A record as stored under the tenant's key: JSON with optional ``status`` and ``cpu``
    (cores), or any other string (known and active)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        doc = json.loads(text)
    except ValueError:
        return RegistryEntry(tenant, ACTIVE)
    if not isinstance(doc, dict):
        return RegistryEntry(tenant, ACTIVE)
    status = doc.get("status", ACTIVE)
    status = status.strip().lower()[:32] if isinstance(status, str) else "invalid"
    cpu = doc.get("cpu")
    cores = float(cpu) if isinstance(cpu, (int, float)) and not isinstance(cpu, bool) \
        and 0 < cpu <= 8192 else None
    return RegistryEntry(tenant, status, cores)


class TenantRegistry:
    """The registry of ``settings`` (config.Registry), refreshed by a background thread."""

    def __init__(self, settings: Registry, pattern: str, *,
                 client_factory: Callable[[str, float], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._pattern = re.compile(pattern)
        prefix, _, suffix = settings.key.partition("{tenant}")
        self._prefix, self._suffix = prefix, suffix
        self._match = _glob_escape(prefix) + "*" + _glob_escape(suffix)
        self._client_factory = client_factory or _redis_client
        self._client: Any = None
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: Mapping[str, RegistryEntry] | None = None  # None: never read
        self._source = "none"  # redis | backup | none
        self._read_at: float | None = None  # wall clock of the registry in use
        self._stale = True
        self._error: str | None = None
        self.reads = 0
        self.failures = 0
        self.skipped_keys = 0  # keys whose tenant part fails the tenancy pattern
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ queries

    def refusal(self, tenant: str) -> str | None:
        """Why ``tenant`` may not take a label (``unregistered``, ``suspended``), or None when it
        may: known and active, or no registry read yet (admitted as without one)."""
        entries = self._entries
        if entries is None:
            return None
        entry = entries.get(tenant)
        if entry is None:
            return "unregistered"
        return None if entry.active else "suspended"

    def quotas(self) -> dict[str, float]:
        """CPU quotas the registry names, by tenant (active tenants only)."""
        entries = self._entries or {}
        return {t: e.cpu_cores for t, e in entries.items()
                if e.active and e.cpu_cores is not None}

    def status(self) -> dict[str, Any]:
        with self._lock:
            entries = self._entries
            age = None if self._read_at is None else max(0.0, self._clock() - self._read_at)
            if entries is None:
                state = "unavailable"
            elif self._stale:
                state = "stale"
            else:
                state = "ok"
            return {"state": state, "source": self._source,
                    "tenants": 0 if entries is None else len(entries),
                    "active": 0 if entries is None else sum(e.active for e in entries.values()),
                    "age_seconds": None if age is None else round(age, 3),
                    "stale": state != "ok", "error": self._error, "reads": self.reads,
                    "failures": self.failures, "skipped_keys": self.skipped_keys}

    # ------------------------------------------------------------------ reading

    def refresh(self) -> bool:
        """One read of the whole registry.  True when it came from Redis."""
        try:
            entries = self._read_redis()
        except RegistryError as e:
            with self._lock:
                self.failures += 1
                self._stale = True
                first = self._error is None
                self._error = str(e)
            if first:
                log.warning("tenant registry: %s; using the last good registry (%s)", e,
                            self._source if self._entries is not None else "none yet")
            if self._entries is None:
                self._load_backup()
            return False
        with self._lock:
            recovered = self._error is not None
            self._entries, self._source = entries, "redis"
            self._read_at, self._stale, self._error = self._clock(), False, None
            self.reads += 1
        if recovered:
            log.warning("tenant registry: read again from Redis (%d tenants)", len(entries))
        self._save_backup(entries)
        return True

    def _read_redis(self) -> dict[str, RegistryEntry]:
        s = self.settings
        try:
            import redis  # noqa: F401 - the client library; its errors are caught below
        except ImportError as e:
            raise RegistryError("the redis client library is not installed "
                                "(pip install redis; Debian: python3-redis)") from e
        try:
            if self._client is None:
                self._client = self._client_factory(s.redis, s.timeout_seconds)
            keys: list[bytes] = []
            for key in self._client.scan_iter(match=self._match, count=SCAN_COUNT):
                keys.append(key)
                if len(keys) > s.max_entries:
                    raise RegistryError(f"more than {s.max_entries} keys match "
                                        f"{self._match!r} (registry.max_entries)")
            out: dict[str, RegistryEntry] = {}
            skipped = 0
            for i in range(0, len(keys), MGET_BATCH):
                batch = keys[i:i + MGET_BATCH]
                for key, value in zip(batch, self._client.mget(batch), strict=True):
                    tenant = self._tenant_of(key)
                    if tenant is None:
                        skipped += 1
                    elif value is not None:  # deleted between SCAN and MGET
                        out[tenant] = parse_record(tenant, value)
            self.skipped_keys = skipped
            return out
        except RegistryError:
            raise
        except Exception as e:
            self._client = None  # a new connection next time
            raise RegistryError(f"{_redacted(s.redis)}: {type(e).__name__}: {e}") from e

    def _tenant_of(self, key: bytes | str) -> str | None:
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if not (text.startswith(self._prefix) and text.endswith(self._suffix)):
            return None
        tenant = text[len(self._prefix):len(text) - len(self._suffix) if self._suffix else None]
        return tenant if self._pattern.fullmatch(tenant) else None

    # ------------------------------------------------------------------ backup file

    def _save_backup(self, entries: Mapping[str, RegistryEntry]) -> None:
        path = self.settings.backup_file
        doc = {"version": 1, "read_at": self._read_at, "tenants": {
            t: {"status": e.status, "cpu": e.cpu_cores} for t, e in sorted(entries.items())}}
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            log.error("tenant registry: cannot write the backup %s: %s", path, e)

    def _load_backup(self) -> None:
        path = self.settings.backup_file
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            tenants = doc["tenants"]
            entries = {}
            for t, rec in tenants.items():
                if isinstance(t, str) and self._pattern.fullmatch(t) and isinstance(rec, dict):
                    entries[t] = parse_record(t, json.dumps(rec))
            read_at = float(doc.get("read_at") or 0.0) or None
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("tenant registry: unreadable backup %s: %s", path, e)
            return
        with self._lock:
            self._entries, self._source, self._read_at = entries, "backup", read_at
        log.warning("tenant registry: %d tenants from the backup %s", len(entries), path)

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        """Read once now (Redis, else the backup), then every refresh_seconds in a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="tw-registry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.refresh_seconds):
            try:
                self.refresh()
            except Exception:
                log.exception("tenant registry: refresh failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _redis_client(url: str, timeout: float) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _redacted(url: str) -> str:
    """The URL without its password, for log lines."""
    return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)
