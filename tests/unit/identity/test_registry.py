"""TenantRegistry with an in-memory client (the real redis-server: tests/e2e/test_registry.py):
records, the key template, the bounds, the backup file, staleness, and the resolver's rule that
only a known, active tenant takes a label and a slot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tenantwatch.config import DEFAULT_PATTERN, Registry, Source, Tenancy
from tenantwatch.identity import INVALID, IdentityResolver, Trust
from tenantwatch.identity.registry import TenantRegistry, parse_record
from tenantwatch.kernel.records import Side, ValueFlag

pytest.importorskip("redis")


class FakeRedis:
    """scan_iter + mget over a dict; ``down`` makes every call fail like a dead server."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data
        self.down = False

    def scan_iter(self, match: str, count: int):
        import fnmatch

        if self.down:
            raise ConnectionError("Connection refused")
        return iter([k.encode() for k in sorted(self.data) if fnmatch.fnmatchcase(k, match)])

    def mget(self, keys: list[bytes]) -> list[Any]:
        if self.down:
            raise ConnectionError("Connection refused")
        return [self.data.get(k.decode(), None) for k in keys]


def registry(tmp_path: Path, data: dict[str, str], **kw: Any) -> tuple[TenantRegistry, FakeRedis]:
    fake = FakeRedis(data)
    settings = Registry(redis="redis://x", backup_file=str(tmp_path / "registry.json"), **kw)
    return TenantRegistry(settings, DEFAULT_PATTERN, client_factory=lambda url, t: fake), fake


def test_records_json_or_any_string() -> None:
    assert parse_record("a", '{"status": "suspended", "cpu": 1.5}').status == "suspended"
    assert parse_record("a", '{"status": "active", "cpu": 1.5}').cpu_cores == 1.5
    assert parse_record("a", "postgresql://db/acme").active  # the seed's connection string
    assert parse_record("a", '{"cpu": true}').cpu_cores is None
    assert parse_record("a", '{"status": 7}').status == "invalid"


def test_only_known_active_tenants_pass(tmp_path: Path) -> None:
    reg, _ = registry(tmp_path, {"tenant:config:acme": '{"status": "active", "cpu": 2}',
                                 "tenant:config:globex": '{"status": "suspended"}',
                                 "tenant:config:bad name": "x", "other:key": "y"})
    assert reg.refresh()
    assert (reg.refusal("acme"), reg.refusal("globex"), reg.refusal("initech")) == \
        (None, "suspended", "unregistered")
    assert reg.quotas() == {"acme": 2.0}
    st = reg.status()
    assert (st["state"], st["tenants"], st["active"], st["skipped_keys"]) == ("ok", 2, 1, 1)


def test_a_custom_key_template_with_a_suffix(tmp_path: Path) -> None:
    reg, _ = registry(tmp_path, {"t/acme/meta": "{}", "t/acme/other": "{}"},
                      key="t/{tenant}/meta")
    reg.refresh()
    assert reg.refusal("acme") is None and reg.status()["tenants"] == 1


def test_more_keys_than_max_entries_keeps_the_last_good_registry(tmp_path: Path) -> None:
    reg, fake = registry(tmp_path, {"tenant:config:a": "{}"}, max_entries=2)
    assert reg.refresh()
    fake.data.update({f"tenant:config:x{i}": "{}" for i in range(5)})
    assert not reg.refresh()
    st = reg.status()
    assert st["state"] == "stale" and "max_entries" in st["error"]
    assert reg.refusal("a") is None and reg.refusal("x1") == "unregistered"


def test_redis_down_uses_the_last_good_then_the_backup_and_recovers(tmp_path: Path) -> None:
    reg, fake = registry(tmp_path, {"tenant:config:acme": "{}"})
    reg.refresh()
    backup = json.loads((tmp_path / "registry.json").read_text())
    assert backup["tenants"] == {"acme": {"status": "active", "cpu": None}}
    fake.down = True
    assert not reg.refresh()
    assert reg.status()["state"] == "stale" and reg.refusal("acme") is None
    # a restart while Redis is down: the backup file
    fresh, fake2 = registry(tmp_path, {})
    fake2.down = True
    fresh.refresh()
    st = fresh.status()
    assert (st["state"], st["source"], st["tenants"]) == ("stale", "backup", 1)
    assert fresh.refusal("acme") is None and fresh.refusal("other") == "unregistered"
    fake2.down = False
    fake2.data["tenant:config:other"] = "{}"
    assert fresh.refresh() and fresh.status()["state"] == "ok"
    assert fresh.refusal("other") is None


def test_never_read_admits_as_without_a_registry(tmp_path: Path) -> None:
    reg, fake = registry(tmp_path, {})
    fake.down = True
    reg.refresh()
    assert reg.status()["state"] == "unavailable"
    assert reg.refusal("anyone") is None


def test_the_resolver_gives_unknown_and_suspended_values_no_label_and_no_slot(
        tmp_path: Path) -> None:
    reg, fake = registry(tmp_path, {"tenant:config:acme": "{}",
                                    "tenant:config:globex": '{"status": "suspended"}'})
    reg.refresh()
    tenancy = Tenancy(sources=(Source("header", "x-tenant-id", Side.SERVER, False),),
                      pattern=DEFAULT_PATTERN, tenants=(), max_tenants=2, default="common")
    r = IdentityResolver(tenancy, registry=reg)

    def resolve(key: int, value: bytes):
        return r.resolve(key, value, 0, ValueFlag.NONE, Side.SERVER)

    for i in range(100):  # a junk flood: none of it takes a slot
        got = resolve(1000 + i, f"junk{i}".encode())
        assert (got.tenant, got.rejected_reason) == (INVALID, "unregistered")
    assert resolve(1, b"globex").rejected_reason == "suspended"
    assert resolve(2, b"acme").tenant == "acme" and resolve(2, b"acme").trust is Trust.CLAIMED
    assert r.tenants() == ("acme",)
    fake.data["tenant:config:globex"] = '{"status": "active"}'  # reinstated
    reg.refresh()
    assert r.resolve(1, None, 0, ValueFlag.NONE, Side.SERVER).tenant == "globex"
