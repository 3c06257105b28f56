"""Every metric family the daemon's collectors export is named in docs/metrics.md's table (the
README's table already missed one once), and every tenantwatch_* name the table gives is
exported: a cheap guard until one metric catalog generates both."""

from __future__ import annotations

import re
from pathlib import Path

from tenantwatch.exporters import TenantCollector
from tenantwatch.exporters.detection import DetectionCollector
from tenantwatch.exporters.enforcement import EnforcementCollector
from tenantwatch.exporters.isolation import IsolationCollector
from tenantwatch.exporters.power import PowerCollector
from tenantwatch.exporters.registry import RegistryCollector
from tenantwatch.exporters.self_metrics import stage_errors, tick_duration
from tests.unit.exporters.snapshots import make_snapshot

README = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def _exported() -> set[str]:
    families = list(TenantCollector(lambda: make_snapshot(), {"version": "x", "kernel": "y"},
                                    jwt_counts=dict).describe())
    for cls in (DetectionCollector, EnforcementCollector, RegistryCollector, IsolationCollector,
                PowerCollector):
        families += cls(lambda: None).describe()
    families += tick_duration().describe() + stage_errors(["drain"]).describe()
    names = set()
    for f in families:
        names.add(f.name + "_total" if f.type == "counter" else f.name)
    return names


def _readme_table() -> set[str]:
    rows = [line for line in README.read_text().splitlines()
            if line.startswith("| `tenantwatch_")]
    return {name for row in rows for name in re.findall(r"`(tenantwatch_[a-z0-9_]+)`",
                                                         row.split("|")[1])}


def test_every_exported_family_is_in_the_readme_table_and_back() -> None:
    exported, documented = _exported(), _readme_table()
    assert len(exported) > 30
    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - exported == set(), "in docs/metrics.md but not exported"
