"""Power and heat: the node's energy per tick, shared among tenants by CPU time; temperatures.

A tenant's energy is the node's energy over the tick times the tenant's share of the node's busy
CPU time in that tick (its gateway CPU, and its own backend cgroup's when configured, over the
busy time of every CPU in /proc/stat).  The node's energy comes from RAPL (the package domains of
/sys/class/powercap, whose counters wrap at max_energy_range_uj) when readable, else from a
configured linear model (idle + (max - idle) x utilisation, as cloud carbon tools estimate it),
else there is none and no energy is exported.  `source` says which one was used.

Temperatures (ThermalReader, read by the host sampler; hotspot evidence cites them): every
thermal zone (/sys/class/thermal/thermal_zone*/temp) and hwmon input
(/sys/class/hwmon/hwmon*/temp*_input), in degrees Celsius, by a sensor name (the zone's type,
or hwmon `name` and the input's label).  Roots are constructor parameters so tests use fixture
trees; a failed read gives no value, never an exception in the tick.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tenantwatch.aggregation.records import NodeTick

SOURCE_RAPL = "rapl"
SOURCE_MODEL = "model"
PRUNE_EVERY_TICKS = 60  # tenants the aggregator forgot leave the energy ledger this often


@dataclass(frozen=True)
class PowerModel:
    """The node's power, linear in CPU utilisation (power.idle_watts, power.max_watts)."""

    idle_watts: float
    max_watts: float

    def watts(self, utilisation: float) -> float:
        u = min(1.0, max(0.0, utilisation))
        return self.idle_watts + (self.max_watts - self.idle_watts) * u


@dataclass(frozen=True)
class PowerTotals:
    """What /metrics shows: cumulative joules by tenant, the node's power over the last tick."""

    energy_joules: Mapping[str, float] = field(default_factory=dict)
    node_watts: float | None = None
    source: str | None = None  # of the last tick: "rapl", "model", or None (no energy source)
    temperatures_celsius: Mapping[str, float] = field(default_factory=dict)


class RaplReader:
    """Joules since the last read, summed over the package domains (intel-rapl:N, not their
    sub-zones, which the package already counts).  None when no domain can be read (no RAPL,
    or energy_uj readable only by root).  The domains are found once, at construction."""

    def __init__(self, root: str = "/sys/class/powercap") -> None:
        self.root = root
        self.domains = sorted(d for d in glob.glob(os.path.join(root, "intel-rapl:*"))
                              if re.fullmatch(r"intel-rapl:\d+", os.path.basename(d)))
        self._last: dict[str, int] = {}

    def available(self) -> bool:
        return any(_read_int(os.path.join(d, "energy_uj")) is not None for d in self.domains)

    def joules(self) -> float | None:
        total = 0.0
        seen = False
        for d in self.domains:
            now = _read_int(os.path.join(d, "energy_uj"))
            if now is None:
                continue
            seen = True
            before = self._last.get(d)
            self._last[d] = now
            if before is None:
                continue
            delta = now - before
            if delta < 0:  # the counter wrapped
                span = _read_int(os.path.join(d, "max_energy_range_uj"))
                delta = delta + span + 1 if span else 0
            total += delta / 1e6
        return total if seen else None


class ThermalReader:
    """Degrees Celsius by sensor name, from thermal zones and hwmon inputs.  The sensors and
    their names are found once, at construction; each read() reads only their values."""

    def __init__(self, sys_root: str = "/sys") -> None:
        self.sys_root = sys_root
        self.sensors: list[tuple[str, str]] = []  # (name, file of millidegrees)
        for zone in sorted(glob.glob(os.path.join(sys_root, "class/thermal/thermal_zone*"))):
            kind = _read_text(os.path.join(zone, "type")) or "zone"
            self.sensors.append((f"{kind}/{os.path.basename(zone)}", os.path.join(zone, "temp")))
        for hw in sorted(glob.glob(os.path.join(sys_root, "class/hwmon/hwmon*"))):
            chip = _read_text(os.path.join(hw, "name")) or os.path.basename(hw)
            for inp in sorted(glob.glob(os.path.join(hw, "temp*_input"))):
                n = os.path.basename(inp)[:-len("_input")]
                label = _read_text(os.path.join(hw, f"{n}_label")) or n
                self.sensors.append((f"{chip}/{label}", inp))

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, path in self.sensors:
            milli = _read_int(path)
            if milli is not None:
                out[name] = milli / 1000.0
        return out


class PowerMeter:
    """The power stage of a tick: node energy, shared among the tick's tenants by CPU time."""

    def __init__(self, model: PowerModel | None = None, rapl: RaplReader | None = None,
                 cpus: int | None = None) -> None:
        self.rapl = rapl if rapl is not None else RaplReader()
        self.model = model
        self.cpus = cpus or os.cpu_count() or 1
        self._use_rapl = self.rapl.available()
        if self._use_rapl:
            self.rapl.joules()  # the first reading is the baseline
        self._energy: dict[str, float] = {}
        self._ticks = 0
        self._totals = PowerTotals()

    def totals(self) -> PowerTotals:
        return self._totals

    def apply(self, node: NodeTick,
              known: Callable[[], Collection[str]] | None = None) -> PowerTotals:
        """Fold one tick.  Every PRUNE_EVERY_TICKS, tenants not in `known()` (the labels the
        aggregator still has) leave the ledger, as their other series do."""
        busy = sum(c.busy_seconds for c in node.cpus)
        interval = node.interval_seconds
        joules, source = self._node_joules(busy, interval)
        if joules is not None and busy > 0:
            cpu = {t.tenant: t.cpu_seconds for t in node.tenants if t.cpu_seconds > 0}
            # the busy time read from /proc/stat and the CPU charged by the probes are two
            # clocks over nearly the same tick: shares never add up to more than the node's
            per_second = joules / max(busy, sum(cpu.values()))
            for tenant, seconds in cpu.items():
                self._energy[tenant] = self._energy.get(tenant, 0.0) + seconds * per_second
        self._ticks += 1
        if known is not None and self._ticks % PRUNE_EVERY_TICKS == 0:
            keep = known()
            for tenant in [t for t in self._energy if t not in keep]:
                del self._energy[tenant]
        watts = joules / interval if joules is not None and interval > 0 else None
        self._totals = PowerTotals(energy_joules=MappingProxyType(dict(self._energy)),
                                   node_watts=watts, source=source,
                                   temperatures_celsius=node.temperatures_celsius)
        return self._totals

    def _node_joules(self, busy: float, interval: float) -> tuple[float | None, str | None]:
        """The node's joules over the tick and where they came from (RAPL; the model when RAPL
        is absent or failed this time; none)."""
        if self._use_rapl:
            j = self.rapl.joules()
            if j is not None:
                return j, SOURCE_RAPL
        if self.model is None or interval <= 0:
            return None, None
        return self.model.watts(busy / (self.cpus * interval)) * interval, SOURCE_MODEL


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
