"""Static checks of dashboards/: Grafana JSON, provisioning, alert rules, their promtool tests,
the Alertmanager example and the runbook anchors (docs/conventions.md, "Alerts and dashboards").

`promtool check rules` / `promtool test rules` run here too: skipped when promtool is missing,
a failure when CI is set (scripts/install-prometheus.sh installs it).  Every expression is also
evaluated by a real Prometheus in tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tenantwatch.exporters import catalog
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
RULES = DASHBOARDS / "alerts" / "tenantwatch.rules.yml"
FLEET_RULES = DASHBOARDS / "alerts" / "tenantwatch.fleet.rules.yml"
RULE_FILES = (RULES, FLEET_RULES)
RULE_TESTS = sorted((DASHBOARDS / "alerts" / "tests").glob("*.yml"))
ALERTMANAGER = DASHBOARDS / "alertmanager.example.yml"
RUNBOOK = REPO / "docs" / "runbook.md"

# Stable uids: links, bookmarks and provisioning depend on them. Changing one is a breaking change.
UIDS = {
    "tenantwatch-overview.json": "tenantwatch-overview",
    "tenantwatch-tenant.json": "tenantwatch-tenant",
    "tenantwatch-node.json": "tenantwatch-node",
    "tenantwatch-health.json": "tenantwatch-health",
    "tenantwatch-fleet.json": "tenantwatch-fleet",
}
# Every series name the dashboards and rules may read: those /metrics has (the metric catalog,
# tenantwatch/exporters/catalog.py; a counter's `_total`, a histogram's `_bucket`, `_sum`, `_count`).
METRICS = {name for m in catalog.METRICS if m.scraped for name in m.series()}
SEVERITIES = {"critical", "warning", "info"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
ALERT_NAME = re.compile(r"^Tenantwatch[A-Z][A-Za-z0-9]*$")
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


# ---------------------------------------------------------------------------- helpers


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dash: dict) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])


def exprs(dash: dict) -> Iterator[tuple[dict, dict]]:
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p, t


# A recorded series (level:metric:operations, docs/fleet.md).
RECORDED = re.compile(r"[a-z_]*:tenantwatch_[a-z0-9_]+:[a-z0-9_]+")


def recorded_names() -> set[str]:
    return {r["record"] for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]
            for r in g["rules"] if "record" in r}


def metric_names(expr: str) -> set[str]:
    """The tenantwatch metrics an expression reads; a recorded series must be one a rule file
    records, and stands for itself."""
    recorded = set(RECORDED.findall(expr))
    assert recorded <= recorded_names(), f"not recorded by any rule file: {recorded}"
    return set(re.findall(r"\btenantwatch_[a-z0-9_]+\b", RECORDED.sub(" ", expr)))


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {slug(m) for m in re.findall(r"^#{1,6} +(.+?) *$", RUNBOOK.read_text(),
                                            re.MULTILINE)}


def alert_rules() -> list[dict]:
    return [r for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]
            for r in g["rules"] if "alert" in r]


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool"
                                        if Path("/usr/bin/promtool").exists() else None)
    require(path is not None, "promtool not installed (scripts/install-prometheus.sh)")
    assert path is not None
    return path


# ---------------------------------------------------------------------------- dashboards


def test_dashboard_files_and_uids_are_stable_and_unique():
    files = {p.name: load(p) for p in dashboard_files()}
    assert set(files) == set(UIDS), "a dashboard was added or renamed: update UIDS on purpose"
    uids = [d["uid"] for d in files.values()]
    assert len(set(uids)) == len(uids)
    for name, dash in files.items():
        assert dash["uid"] == UIDS[name]
        assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
        assert dash.get("title", "").startswith("tenantwatch / ")
        assert "tenantwatch" in dash.get("tags", [])
        assert dash.get("id") is None, "exported ids must not be committed"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_has_a_datasource_variable_and_no_import_placeholders(path):
    text = path.read_text()
    dash = json.loads(text)
    assert "${DS_" not in text and "__inputs" not in dash and "__requires" not in dash
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds is not None and ds["type"] == "datasource" and ds["query"] == "prometheus"
    for p in panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}", v["name"]


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_every_panel_has_nonempty_targets_on_known_metrics(path):
    dash = load(path)
    ids = [p["id"] for p in panels(dash)]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    titles = [p["title"] for p in panels(dash) if p["type"] != "row"]
    assert len(set(titles)) == len(titles), "panel titles must be unique (the e2e test uses them)"
    variables = {v["name"] for v in dash["templating"]["list"]} | GRAFANA_BUILTINS
    for p in panels(dash):
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p.get("title") and p.get("description"), p
        assert p["targets"], p["title"]
        for t in p["targets"]:
            expr = t.get("expr", "")
            assert expr.strip(), f"{p['title']}: empty expr"
            assert t["datasource"]["uid"] == "${datasource}"
            names = metric_names(expr)
            assert names <= METRICS, f"{p['title']}: unknown metrics {names - METRICS}"
            used = set(re.findall(r"\$\{?(\w+)", expr))
            assert used <= variables, f"{p['title']}: undefined variables {used - variables}"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_range_selectors_use_rate_interval(path):
    for p, t in exprs(load(path)):
        expr = t["expr"]
        for fn, rng in re.findall(r"\b(\w+)\((?:[^()\[\]]|\([^()]*\))*\[([^\]]+)\]", expr):
            if fn == "increase" and rng == "$__range":
                continue  # a total over the dashboard's time range
            assert rng == "$__rate_interval", f"{p['title']}: {fn}(...[{rng}])"
        assert "[5m]" not in expr and "[1m]" not in expr


def test_overview_has_red_heatmap_quantiles_and_top_n():
    dash = load(DASHBOARDS / "tenantwatch-overview.json")
    all_exprs = " ".join(t["expr"] for _, t in exprs(dash))
    kinds = {p["type"] for p in panels(dash)}
    assert {"timeseries", "heatmap", "table"} <= kinds
    assert "sum by (tenant) (rate(tenantwatch_http_server_requests_total" in all_exprs
    assert 'status_class="5xx"' in all_exprs
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (tenant, le)" in all_exprs
    heatmaps = [p for p in panels(dash) if p["type"] == "heatmap"]
    assert heatmaps
    for p in heatmaps:
        (t,) = p["targets"]
        assert "_bucket" in t["expr"] and "sum by (le)" in t["expr"]
        assert t["format"] == "heatmap"
    assert "topk($topn, tenantwatch_tenant_cpu_share" in all_exprs
    assert "tenantwatch_cpu_cap_cores" in all_exprs
    tenant = {v["name"]: v for v in dash["templating"]["list"]}["tenant"]
    assert tenant["multi"] and tenant["includeAll"]


def test_detail_node_and_health_dashboards_cover_their_topics():
    def text(name: str) -> str:
        return " ".join(t["expr"] for _, t in exprs(load(DASHBOARDS / name)))

    detail = load(DASHBOARDS / "tenantwatch-tenant.json")
    tenant = {v["name"]: v for v in detail["templating"]["list"]}["tenant"]
    assert not tenant["multi"] and not tenant["includeAll"]
    node = text("tenantwatch-node.json")
    for m in ("tenantwatch_hotspot", "tenantwatch_cpu_cap_cores",
              "tenantwatch_enforcement_actions_total", "tenantwatch_runqueue_delay_seconds_bucket"):
        assert m in node
    health = text("tenantwatch-health.json")
    for m in ("up{", "tenantwatch_probe_attached", "tenantwatch_events_lost_total",
              "tenantwatch_identity_rejected_total", "tenantwatch_ticks_total",
              "tenantwatch_targets", "tenantwatch_build_info"):
        assert m in health


def test_provisioning_yaml():
    files = sorted((DASHBOARDS / "provisioning").glob("*.yaml"))
    docs = {p.name: yaml.safe_load(p.read_text()) for p in files}
    prov = docs["dashboards.yaml"]
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    for name, doc in docs.items():
        assert doc["apiVersion"] == 1, name
        for ds in doc.get("datasources", []):
            assert ds["type"] == "prometheus"


# ---------------------------------------------------------------------------- alert rules


def test_rules_structure():
    names = [g["name"] for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
    assert len(set(names)) == len(names)
    rules = alert_rules()
    assert rules
    anchors = runbook_anchors()
    for r in rules:
        name = r["alert"]
        assert ALERT_NAME.match(name), name
        assert r["labels"]["severity"] in SEVERITIES, name
        assert DURATION.match(str(r.get("for", ""))), f"{name}: `for:` missing"
        ann = r["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(ann), name
        assert ann["summary"].strip() and ann["description"].strip()
        url = ann["runbook_url"]
        assert url.startswith("https://") and "docs/runbook.md#" in url, url
        anchor = url.split("#", 1)[1]
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor}"
        assert anchor in anchors, f"{name}: no '## {name}' heading in docs/runbook.md"
        assert metric_names(r["expr"]) <= METRICS, name
    # Two rules may share a name only with different severities (a warning and a critical twin).
    keys = [(r["alert"], r["labels"]["severity"]) for r in rules]
    assert len(set(keys)) == len(keys)


def test_meta_alerts_exist():
    by_name = {r["alert"]: r for r in alert_rules()}
    assert "up{" in by_name["TenantwatchDown"]["expr"]
    assert by_name["TenantwatchDown"]["labels"]["severity"] == "critical"
    assert "tenantwatch_probe_attached" in by_name["TenantwatchProbeDetached"]["expr"]
    assert "absent(" in by_name["TenantwatchAbsent"]["expr"]


def test_runbook_covers_the_seed_faults():
    anchors = runbook_anchors()
    for a in ("token-mismatch", "requests-all-landing-in-the-default-tenant", "cache-misses",
              "connection-leaks"):
        assert a in anchors
    for link in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()):
        assert link in anchors, f"broken in-page link #{link}"


def test_every_alert_has_firing_and_not_yet_firing_promtool_cases():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] in (["../tenantwatch.rules.yml"],
                                     ["../tenantwatch.fleet.rules.yml"]), path.name
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"


def run_tool(args: list[str]) -> None:
    r = subprocess.run(args, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}"


def test_promtool_check_rules():
    run_tool([promtool(), "check", "rules", *(str(p.relative_to(REPO)) for p in RULE_FILES)])


def test_fleet_recording_rules_follow_the_naming_convention():
    """level:metric:operations, the level being the labels kept (`:` alone: the whole fleet), and
    each recorded series used by a later rule is recorded before it (one group, in order)."""
    levels = {"node_tenant": {"node", "tenant"}, "node": {"node"}, "tenant": {"tenant"}, "": set()}
    seen: set[str] = set()
    for g in yaml.safe_load(FLEET_RULES.read_text())["groups"]:
        for r in g["rules"]:
            for used in RECORDED.findall(r["expr"]):
                assert used in seen, f"{r.get('record') or r['alert']} reads {used} before it is recorded"
            if "record" in r:
                level, metric, ops = r["record"].split(":")
                assert level in levels and metric.startswith("tenantwatch_") and ops, r["record"]
                seen.add(r["record"])


def test_promtool_test_rules():
    assert RULE_TESTS
    run_tool([promtool(), "test", "rules", *(str(p.relative_to(REPO)) for p in RULE_TESTS)])


# ---------------------------------------------------------------------------- alertmanager


def _routes(route: dict) -> Iterator[dict]:
    yield route
    for r in route.get("routes", []):
        yield from _routes(r)


def test_alertmanager_example_routes_by_severity_and_tenant():
    doc = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"] for r in doc["receivers"]}
    routes = list(_routes(doc["route"]))
    for r in routes:
        assert r["receiver"] in receivers
    matchers = " ".join(m for r in routes for m in r.get("matchers", []))
    for sev in SEVERITIES:
        assert f'severity="{sev}"' in matchers
    assert "tenant=~" in matchers
    assert "tenant" in doc["route"]["group_by"]
    assert any("TenantwatchDown" in " ".join(i["source_matchers"]) for i in doc["inhibit_rules"])


def test_alertmanager_example_with_amtool():
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (Debian package prometheus-alertmanager); optional")
    run_tool([amtool, "check-config", str(ALERTMANAGER.relative_to(REPO))])
    cases = {
        "alertname=TenantwatchDown severity=critical": "tenantwatch-pager",
        "alertname=TenantwatchTenantHighErrorRate severity=critical tenant=acme":
            "tenant-team-acme-globex,tenantwatch-pager",
        "alertname=TenantwatchNoisyNeighbour severity=warning tenant=mallory": "tenantwatch-chat",
        "alertname=TenantwatchCpuCapInForce severity=info tenant=mallory": "tenantwatch-info",
        "alertname=SomethingElse severity=critical": "default",
    }
    for labels, want in cases.items():
        r = subprocess.run([amtool, "config", "routes", "test",
                            f"--config.file={ALERTMANAGER}", *labels.split()],
                           check=False, capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == want, (labels, r.stdout, r.stderr)
