"""The /healthz and /api/v1/tenants documents (exporters/documents.py), from hand-made state."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from tenantwatch.detection.records import DetectionResult, Hotspot, Verdict
from tenantwatch.exporters.documents import health_document, tenants_document
from tests.unit.exporters.snapshots import make_snapshot


def health(**kw):
    snap = dataclasses.replace(make_snapshot(), tables=MappingProxyType(
        {"connections": (60000, 65536), "identities": (100, 4096)}))
    args = {"ready": True, "last_tick_age": 0.5, "stall_after": 5.0, "drain_path": "batch"}
    args.update(kw)
    return health_document(snap, **args)


def test_health_ok_and_its_fields():
    doc = health(stage_errors={"drain": 0, "detect": 2})
    assert doc["ok"] is True and doc["ready"] is True
    assert doc["probes_detached"] == ["cpu"]
    assert doc["events_lost"] == {"ringbuf_full": 2} and doc["events_lost_total"] == 2
    assert doc["tables"]["connections"] == {"entries": 60000, "capacity": 65536}
    assert doc["tables_full"] == ["connections"]  # 91.6 % full; identities 2.4 %
    assert doc["stage_errors"] == {"detect": 2}  # only the stages that raised
    assert "registry" not in doc


def test_health_not_ok_when_stalled_or_not_ready():
    assert health(last_tick_age=5.1)["ok"] is False
    assert health(ready=False)["ok"] is False
    assert health(registry={"stale": False})["registry"] == {"stale": False}


def test_tenants_document_with_and_without_detection():
    snap = make_snapshot()
    doc = tenants_document(snap, None)
    assert doc["flags"] == {} and "cpu_share" not in doc
    assert {t["tenant"] for t in doc["tenants"]} == {"acme", "globex"}
    result = DetectionResult(
        at=1.0, window_seconds=30.0, window_complete=True,
        shares=MappingProxyType({"acme": 0.7, "globex": 0.3}),
        noisy=(Verdict(tenant="acme"),),
        hotspots=(Hotspot(kind="cpu", id="1", tenant="acme", active=True, since=0.5,
                          evidence=MappingProxyType({})),),
        changes=(), contention=MappingProxyType({}))
    doc = tenants_document(snap, result)
    assert doc["cpu_share"] == {"acme": 0.7, "globex": 0.3}
    assert doc["flags"] == {"acme": ["NOISY", "HOT:cpu1"]}
