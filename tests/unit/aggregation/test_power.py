"""Power and heat (aggregation/power.py, exporters/power.py) on fixture sysfs trees: this VM has
neither RAPL nor thermal zones, so every reading here comes from files the tests write."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tenantwatch.aggregation.power import (
    PRUNE_EVERY_TICKS,
    PowerMeter,
    PowerModel,
    RaplReader,
    ThermalReader,
)
from tenantwatch.detection.records import CpuTick, NodeTick, TenantTick
from tenantwatch.exporters.power import PowerCollector


def tick(cpu: dict[str, float], busy: list[float], interval: float = 1.0) -> NodeTick:
    return NodeTick(at=0.0, interval_seconds=interval,
                    tenants=tuple(TenantTick(t, True, s, 1, ()) for t, s in cpu.items()),
                    workers=(), cpus=tuple(CpuTick(i, b, {}) for i, b in enumerate(busy)),
                    latency_bounds=(), psi_some_avg10=None, runq_p99_seconds=None,
                    complete=True, temperatures_celsius={"acpitz/thermal_zone0": 47.0})


def rapl_tree(root: Path, packages: dict[int, tuple[int, int]]) -> Path:
    """powercap/intel-rapl:N/{energy_uj,max_energy_range_uj} and a sub-zone that must not count."""
    base = root / "powercap"
    for n, (uj, span) in packages.items():
        d = base / f"intel-rapl:{n}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "energy_uj").write_text(f"{uj}\n")
        (d / "max_energy_range_uj").write_text(f"{span}\n")
        sub = base / f"intel-rapl:{n}:0"  # core sub-zone: already in the package
        sub.mkdir(exist_ok=True)
        (sub / "energy_uj").write_text("999999999\n")
    return base


def set_energy(base: Path, n: int, uj: int) -> None:
    (base / f"intel-rapl:{n}" / "energy_uj").write_text(f"{uj}\n")


def no_rapl(tmp_path: Path) -> RaplReader:
    return RaplReader(str(tmp_path / "no-powercap"))


def test_rapl_sums_packages_and_survives_a_wrap(tmp_path):
    base = rapl_tree(tmp_path, {0: (1_000_000, 10_000_000), 1: (9_500_000, 10_000_000)})
    meter = PowerMeter(rapl=RaplReader(str(base)), cpus=2)
    set_energy(base, 0, 6_000_000)  # +5 J, no wrap
    set_energy(base, 1, 2_499_999)  # wraps: 10_000_000 - 9_500_000 + 2_499_999 + 1 = 3 J
    totals = meter.apply(tick({"acme": 0.5, "__unattributed__": 0.25}, [0.5, 0.5]))
    assert totals.source == "rapl"
    assert totals.node_watts == pytest.approx(8.0)
    # 8 J over 1.0 busy second: acme 0.5 s -> 4 J, __unattributed__ 0.25 s -> 2 J
    assert totals.energy_joules == pytest.approx({"acme": 4.0, "__unattributed__": 2.0})
    set_energy(base, 0, 1_000_000)  # wraps: 10_000_000 - 6_000_000 + 1_000_000 + 1 uJ
    set_energy(base, 1, 3_499_999)  # +1 J
    totals = meter.apply(tick({"acme": 1.0}, [1.0, 0.0]))
    assert totals.energy_joules["acme"] == pytest.approx(4.0 + 5.000001 + 1.0)


def test_the_model_is_used_without_rapl_and_shares_never_exceed_the_node(tmp_path):
    meter = PowerMeter(PowerModel(idle_watts=100.0, max_watts=300.0), rapl=no_rapl(tmp_path),
                       cpus=4)
    # 2 busy seconds of 4 CPUs over 2 s: 25 % -> 150 W -> 300 J over the tick
    totals = meter.apply(tick({"acme": 1.5, "globex": 0.5}, [0.5, 0.5, 0.5, 0.5], interval=2.0))
    assert totals.source == "model" and totals.node_watts == pytest.approx(150.0)
    assert totals.energy_joules == pytest.approx({"acme": 225.0, "globex": 75.0})
    # the probes charged more CPU than /proc/stat saw busy: the shares are of the larger
    totals = meter.apply(tick({"acme": 3.0, "globex": 1.0}, [0.5, 0.5, 0.5, 0.5], interval=2.0))
    assert sum(totals.energy_joules.values()) == pytest.approx(600.0)
    assert totals.temperatures_celsius == {"acpitz/thermal_zone0": 47.0}


def test_no_source_no_energy(tmp_path):
    meter = PowerMeter(rapl=no_rapl(tmp_path))
    totals = meter.apply(tick({"acme": 1.0}, [1.0]))
    assert totals.source is None and totals.node_watts is None and totals.energy_joules == {}


def test_unreadable_rapl_counts_as_absent(tmp_path):
    base = rapl_tree(tmp_path, {0: (1, 10)})
    (base / "intel-rapl:0" / "energy_uj").unlink()  # as for a non-root user since CVE-2020-8694
    meter = PowerMeter(PowerModel(10.0, 20.0), rapl=RaplReader(str(base)), cpus=1)
    assert meter.apply(tick({"a": 1.0}, [1.0])).source == "model"


def test_forgotten_tenants_leave_the_ledger(tmp_path):
    meter = PowerMeter(PowerModel(10.0, 10.0), rapl=no_rapl(tmp_path), cpus=1)
    meter.apply(tick({"gone": 1.0, "kept": 1.0}, [1.0]), known=lambda: {"kept"})
    for _ in range(PRUNE_EVERY_TICKS - 2):
        meter.apply(tick({"kept": 1.0}, [1.0]), known=lambda: {"kept"})
    assert "gone" in meter.totals().energy_joules
    meter.apply(tick({"kept": 1.0}, [1.0]), known=lambda: {"kept"})
    assert set(meter.totals().energy_joules) == {"kept"}


def test_thermal_zones_and_hwmon(tmp_path):
    z = tmp_path / "class/thermal/thermal_zone0"
    z.mkdir(parents=True)
    (z / "type").write_text("x86_pkg_temp\n")
    (z / "temp").write_text("61000\n")
    bad = tmp_path / "class/thermal/thermal_zone1"
    bad.mkdir()
    (bad / "temp").write_text("not a number\n")  # skipped, not an error
    hw = tmp_path / "class/hwmon/hwmon2"
    hw.mkdir(parents=True)
    (hw / "name").write_text("coretemp\n")
    (hw / "temp1_input").write_text("58500\n")
    (hw / "temp1_label").write_text("Package id 0\n")
    (hw / "temp2_input").write_text("57000\n")
    assert ThermalReader(str(tmp_path)).read() == {
        "x86_pkg_temp/thermal_zone0": 61.0, "coretemp/Package id 0": 58.5,
        "coretemp/temp2": 57.0}
    assert ThermalReader(str(tmp_path / "nothing")).read() == {}


def test_families_on_metrics(tmp_path):
    meter = PowerMeter(PowerModel(50.0, 50.0), rapl=no_rapl(tmp_path), cpus=1)
    meter.apply(tick({"acme": 0.5}, [0.5]))
    reg = CollectorRegistry()
    reg.register(PowerCollector(meter.totals))
    text = generate_latest(reg).decode()
    assert 'tenantwatch_tenant_energy_joules_total{tenant="acme"} 50.0' in text
    assert 'tenantwatch_node_power_watts{source="model"} 50.0' in text
    assert 'tenantwatch_node_temperature_celsius{sensor="acpitz/thermal_zone0"} 47.0' in text
    empty = CollectorRegistry()
    empty.register(PowerCollector(PowerMeter(rapl=no_rapl(tmp_path)).totals))
    assert "tenantwatch_node_power_watts{" not in generate_latest(empty).decode()
