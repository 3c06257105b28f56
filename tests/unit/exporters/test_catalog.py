"""The metric catalog (tenantwatch/exporters/catalog.py) is the one list of exported families:

- every family a collector gives is in it, with its kind, help and labels, and every catalog
  family is exported (on /metrics, over OTLP, or both);
- the OTLP export names, units and describes each instrument as the catalog says, and each OTLP
  name translates to the family's Prometheus name;
- docs/metrics.md's table is the one render_table() gives;
- no module of tenantwatch/ writes an exported metric's name outside the catalog;
- README.md, docs/, dashboards/ (rules and their tests included), bench/ and harness/ name no
  tenantwatch_ metric the catalog does not have.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tenantwatch.aggregation.isolation import IsolationTotals
from tenantwatch.aggregation.power import PowerTotals
from tenantwatch.detection.records import DetectionResult, Hotspot, Verdict
from tenantwatch.exporters import TenantCollector, catalog
from tenantwatch.exporters.detection import DetectionCollector
from tenantwatch.exporters.enforcement import EnforcementCollector
from tenantwatch.exporters.isolation import IsolationCollector
from tenantwatch.exporters.otel_points import otel_name
from tenantwatch.exporters.power import PowerCollector
from tenantwatch.exporters.registry import RegistryCollector
from tenantwatch.exporters.self_metrics import stage_errors, tick_duration
from tenantwatch.kernel.records import Side
from tests.unit.exporters.prom_translation import prometheus_name
from tests.unit.exporters.snapshots import full_snapshot

REPO = Path(__file__).resolve().parents[3]
METRICS_MD = REPO / "docs" / "metrics.md"
REGENERATE = ".venv/bin/python -m tenantwatch.exporters.catalog --write docs/metrics.md"
OTLP_KIND = {"counter": "sum", "gauge": "gauge", "histogram": "histogram"}


# ---------------------------------------------------------------------------- the collectors


def state_collectors() -> list:
    """The daemon's state collectors (daemon.py state_collectors), each with samples."""
    detection = DetectionResult(
        at=1.0, window_seconds=60.0, window_complete=True, shares={"acme": 0.7},
        noisy=(Verdict(tenant="acme"),),
        hotspots=(Hotspot(kind="cpu", id="0", tenant="acme", active=True, since=0.5,
                          evidence={}),),
        changes=(), contention={})
    enforcement = {"caps": [{"tenant": "acme", "cores": 1.5}],
                   "actions": [{"tenant": "acme", "action": "cap", "mode": "enforce",
                                "count": 2}],
                   "refusals": {"untrusted": 3}}
    registry = {"tenants": 10, "active": 4, "stale": True, "age_seconds": 12.5, "failures": 2}
    isolation = IsolationTotals(sides=(Side.SERVER,), checked={Side.SERVER: 9},
                                unchecked={(Side.SERVER, "no_header"): 2},
                                breaches={("acme", "globex", Side.SERVER): 1})
    power = PowerTotals(energy_joules={"acme": 3.0}, node_watts=80.0, source="model",
                        temperatures_celsius={"acpitz/thermal_zone0": 45.0})
    return [DetectionCollector(lambda: detection), EnforcementCollector(lambda: enforcement),
            RegistryCollector(lambda: registry), IsolationCollector(lambda: isolation),
            PowerCollector(lambda: power)]


def collectors() -> list:
    """Every collector the daemon registers for /metrics (but the process collector), with a
    sample in every family."""
    errors = stage_errors(["drain"])
    errors.labels(stage="drain").inc()
    ticks = tick_duration()
    ticks.observe(0.02)
    snap = full_snapshot()
    return [TenantCollector(lambda: snap, {"version": "x", "kernel": "y"},
                            jwt_counts=lambda: {"ok": 1}),
            *state_collectors(), ticks, errors]


def test_every_exported_family_is_the_catalogs_and_back() -> None:
    described = [f for c in collectors() for f in c.describe()]
    names = [f.name for f in described]
    assert len(names) == len(set(names)), "a family is exported twice"
    assert set(names) == {m.name for m in catalog.METRICS if m.scraped}, \
        "exported but not in catalog.py, or in the catalog (scraped) but not exported"
    for f in described:
        spec = catalog.BY_NAME[f.name]
        assert (f.type, f.documentation) == (spec.kind, spec.help), f.name


def test_every_sample_has_the_catalogs_labels() -> None:
    seen = set()
    for c in collectors():
        for f in c.collect():
            spec = catalog.BY_NAME[f.name]
            for s in f.samples:
                assert s.name in spec.samples(), (f.name, s.name)
                extra = {"le"} if s.name.endswith("_bucket") else set()
                assert set(s.labels) == set(spec.labels) | extra, (s.name, s.labels)
                seen.add(f.name)
    assert seen == {m.name for m in catalog.METRICS if m.scraped}, "a family without samples"


# ---------------------------------------------------------------------------- OTLP


def test_otlp_names_translate_to_the_prometheus_names() -> None:
    """Under the Prometheus translation of OTLP (prom_translation.py), each instrument is its
    family's name: the scraped families' exactly, the OTLP-only ones' by construction."""
    for spec in catalog.METRICS:
        if spec.otel_name is None:
            continue
        assert spec.otel_name.startswith("tenantwatch."), spec.name
        kind = OTLP_KIND[spec.kind]
        translated = prometheus_name(spec.otel_name, spec.unit, kind, kind == "sum" or None)
        assert translated == (spec.name + "_total" if kind == "sum" else spec.name), spec.name


def test_bridged_families_are_named_by_the_unit_rule() -> None:
    """The state collectors' families follow otel_points.otel_name()'s rule (their unit word off
    the name), with their /metrics help: the catalog writes them out, this keeps them honest."""
    families = [f for c in [*state_collectors(), stage_errors([])] for f in c.describe()]
    assert families
    for f in families:
        spec = catalog.BY_NAME[f.name]
        assert (spec.otel_name, spec.unit) == otel_name(f.name), f.name
        assert spec.otel_help is None, f.name


def test_only_the_documented_families_are_not_exported_over_otlp() -> None:
    """docs/opentelemetry.md: build_info is the resource; the connection-duration summary goes as
    two counters; the tick histogram and the JWT counts are /metrics only."""
    assert {m.name for m in catalog.METRICS if m.otel_name is None} == {
        catalog.BUILD_INFO.name, catalog.CONNECTION_DURATION.name, catalog.TICK_DURATION.name,
        catalog.JWT_VERIFY.name}
    assert {m.name for m in catalog.METRICS if not m.scraped} == {
        catalog.CONNECTION_DURATION_SUM.name, catalog.CONNECTION_DURATION_COUNT.name}


def test_the_otlp_export_is_the_catalogs(monkeypatch) -> None:
    """A real export to a local receiver: every instrument with the catalog's name, unit,
    description, kind and attribute names, and every catalog instrument present."""
    from tenantwatch.exporters.otel import OtelMetricsExporter
    from tests.unit.exporters.otlp_receiver import OtlpReceiver

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    by_otel = {m.otel_name: m for m in catalog.METRICS if m.otel_name}
    snap = full_snapshot()
    with OtlpReceiver() as receiver:
        e = OtelMetricsExporter(lambda: snap, endpoint=receiver.url, interval_seconds=3600,
                                collectors=[*state_collectors(), stage_errors(["drain"])])
        try:
            assert e.start()
        finally:
            e.shutdown(timeout_seconds=2)  # the final export
        metrics = receiver.metrics()
    assert set(metrics) == set(by_otel)
    for name, m in metrics.items():
        spec = by_otel[name]
        assert (m.unit, m.description) == (spec.unit, spec.otel_description), name
        assert m.WhichOneof("data") == OTLP_KIND[spec.kind], name
        for p in receiver.points(name):
            assert set(p.attributes) == set(spec.labels), (name, p.attributes)


# ---------------------------------------------------------------------------- docs/metrics.md


def test_the_table_in_docs_metrics_md_is_the_catalogs() -> None:
    text = METRICS_MD.read_text()
    assert catalog.TABLE_BEGIN in text and catalog.TABLE_END in text, \
        f"docs/metrics.md lost the markers of its generated table; run {REGENERATE}"
    assert text == catalog.replace_table(text), \
        f"docs/metrics.md's table is not the catalog's: run `{REGENERATE}`"


def test_render_table_lists_every_scraped_family_once() -> None:
    table = catalog.render_table()
    for spec in catalog.METRICS:
        assert table.count(f"| `{spec.exposed}` |") == (1 if spec.scraped else 0), spec.name
        assert spec.doc or not spec.scraped, f"{spec.name}: no doc for docs/metrics.md"


# ---------------------------------------------------------------------------- names in the code


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_no_module_names_an_exported_metric_outside_the_catalog() -> None:
    """In tenantwatch/exporters/ no string but catalog.py's (docstrings included) holds a
    tenantwatch_ token; elsewhere in tenantwatch/ no string but a docstring holds a catalog
    metric's name (a docstring may mention a family in prose; comments are not strings)."""
    known = {n for m in catalog.METRICS for n in (m.name, *m.samples())}
    token = re.compile(r"\btenantwatch_[a-z0-9_]*")
    found = []
    for path in sorted((REPO / "tenantwatch").rglob("*.py")):
        if path.name == "catalog.py" and path.parent.name == "exporters":
            continue
        tree = ast.parse(path.read_text())
        docs = set() if path.parent.name == "exporters" else _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs:
                for t in token.findall(node.value):
                    if t in known or path.parent.name == "exporters":
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {t}")
    assert found == [], "metric names belong in tenantwatch/exporters/catalog.py:\n" + \
        "\n".join(found)


# ---------------------------------------------------------------------------- names in the docs

# What is scanned for tenantwatch_ metric names (harness/: the benchmarks' shared code).
SCANNED = ("README.md", "docs/*.md", "dashboards/*.json", "dashboards/alerts/*.yml",
           "dashboards/alerts/tests/*.yml", "bench/*.py", "bench/*.md", "harness/*.py",
           "tests/e2e/*.py", "tests/kernel/*.py", "tests/vm/*.py", "deploy/**/*.yaml")
RULE_FILES = sorted((REPO / "dashboards" / "alerts").glob("*.rules.yml"))

# A recorded series, level:metric:operations (docs/fleet.md): the level may be empty.
RECORDED = re.compile(r"(?<![A-Za-z0-9_:])[a-z_]*:tenantwatch_[a-z0-9_]+:[a-z0-9_]+")
# Any other tenantwatch_ token, not inside a longer word.
NAME = re.compile(r"(?<![A-Za-z0-9_:])tenantwatch_[A-Za-z0-9_]*")
# Brace expansion right after a name ending in "_": tenantwatch_http_{server,client}_..., the
# rest of the name after it.
EXPANSION = re.compile(r"\{([a-z0-9_]+(?:,[a-z0-9_]+)+)\}([a-z0-9_]*)")


def known_names() -> set[str]:
    """Every name a text may give a family: the family's own and its samples' (a counter's
    `_total` and `_created`, a histogram's `_bucket`, ...)."""
    return {n for m in catalog.METRICS for n in (m.name, *m.samples())}


def recorded_names() -> set[str]:
    return {r["record"] for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]
            for r in g["rules"] if "record" in r}


def scanned_files() -> list[Path]:
    return sorted({p for pattern in SCANNED for p in REPO.glob(pattern)})


def texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of the parts of a file that may name a metric: a Python file's strings and
    comments (its identifiers are not metric names), any other file whole."""
    source = path.read_text()
    if path.suffix != ".py":
        yield from enumerate(source.splitlines(), start=1)
        return
    kinds = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", -1)}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in kinds:
            yield tok.start[0], tok.string


def unknown_names(text: str, known: set[str], recorded: set[str]) -> Iterator[str]:
    """The tenantwatch_ tokens of `text` that name no catalog family. Rules:
    - level:tenantwatch_x:ops is a recorded series: one the shipped rule files record;
    - tenantwatch_a_{b,c}_d expands to tenantwatch_a_b_d and tenantwatch_a_c_d;
    - a token ending in "_" (tenantwatch_registry_*, a prefix in code) must begin some name;
    - a token followed by "." and a letter or digit, or by "-", is a file name, not a metric
      (dist/tenantwatch_0.1.0-1_amd64.deb);
    - any other token must be a family's name or one of its samples' names."""
    for r in RECORDED.findall(text):
        if r not in recorded:
            yield r
    text = RECORDED.sub(" ", text)
    for m in NAME.finditer(text):
        name, after = m.group(), text[m.end():]
        if re.match(r"\.[A-Za-z0-9]|-", after):
            continue
        exp = EXPANSION.match(after) if name.endswith("_") else None
        if exp:
            names = [name + alt + exp.group(2) for alt in exp.group(1).split(",")]
            yield from (n for n in names if n not in known)
        elif name.endswith("_"):
            if not any(k.startswith(name) for k in known):
                yield name + "*"
        elif name not in known:
            yield name


def test_the_scanner_rules() -> None:
    known, recorded = known_names(), recorded_names()

    def unknown(text: str) -> list[str]:
        return list(unknown_names(text, known, recorded))

    assert unknown("rate(tenantwatch_cpu_seconds_total[1m]) tenantwatch_build_info{x=\"1\"}") == []
    assert unknown("`tenantwatch_http_{server,client}_request_duration_seconds_bucket`") == []
    assert unknown("tenantwatch_kernel_table_{entries,capacity} tenantwatch_registry_*") == []
    assert unknown("node_tenant:tenantwatch_cpu_seconds:rate1m :tenantwatch_cpu_seconds:rate1m") \
        == []
    assert unknown("apt install ./dist/tenantwatch_0.1.0-1_amd64.deb, ./dist/tenantwatch_*.deb") \
        == []
    assert unknown('startswith("tenantwatch_tick_duration_seconds_")') == []
    assert unknown("tenantwatch_requests_total tenantwatch_ticks_bucket") == \
        ["tenantwatch_requests_total", "tenantwatch_ticks_bucket"]
    assert unknown("tenantwatch_http_{server,proxy}_requests_total") == \
        ["tenantwatch_http_proxy_requests_total"]
    assert unknown("node:tenantwatch_cpu_seconds:rate5m") == ["node:tenantwatch_cpu_seconds:rate5m"]
    assert unknown("tenantwatch_gone_*") == ["tenantwatch_gone_*"]


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_texts_name_only_catalog_metrics(path: Path) -> None:
    known, recorded = known_names(), recorded_names()
    stale = [f"{path.relative_to(REPO)}:{line}: {name}"
             for line, text in texts(path) for name in unknown_names(text, known, recorded)]
    assert stale == [], ("names no metric of tenantwatch/exporters/catalog.py (stale, or a "
                         "family missing there):\n" + "\n".join(stale))


def test_recording_rules_record_catalog_families() -> None:
    """level:metric:operations: a rule that reads a family directly records under that family's
    name; one that reads only recorded series (a share, a skew) names what it derives."""
    for path in RULE_FILES:
        for g in yaml.safe_load(path.read_text())["groups"]:
            for r in g["rules"]:
                if "record" not in r:
                    continue
                metric = r["record"].split(":")[1]
                raw = set(NAME.findall(RECORDED.sub(" ", r["expr"])))
                if raw:
                    assert metric in catalog.BY_NAME, r["record"]
                    assert {n.removesuffix("_total") for n in raw} == {metric}, r["record"]


def test_the_scan_covers_the_dashboards_rules_and_docs() -> None:
    files = {str(p.relative_to(REPO)) for p in scanned_files()}
    assert {"README.md", "docs/metrics.md", "dashboards/alerts/tenantwatch.rules.yml",
            "dashboards/tenantwatch-overview.json"} <= files
    assert any(f.startswith("dashboards/alerts/tests/") for f in files)
    assert any(f.startswith("bench/") and f.endswith(".py") for f in files)
