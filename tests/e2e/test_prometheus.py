"""A real Prometheus scraping a real daemon that watches real nginx traffic, evaluating every
PromQL expression of dashboards/*.json and dashboards/alerts/tenantwatch.rules.yml.

- Every expression (panel targets, template-variable queries, alert rules) must parse and
  evaluate through /api/v1/query.
- The panels in EXPECT_DATA must return data; those marked "tenant" must return a series for
  each tenant this test sent. Panels over metrics the daemon does not export yet (CPU,
  detection, enforcement, run-queue delay) only have to parse.
- Every rule group loads and evaluates with health "ok", and a healthy daemon triggers no
  meta-alert; after the daemon stops, TenantwatchDown goes pending.

Prometheus is the Debian package (scripts/install-prometheus.sh), started with a generated
config (scrape and rule evaluation every second, storage in a tmp dir, a free loopback port) and
stopped by pid. Traffic is gentle (~50 req/s) and bounded in time.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from harness.client import WireClient
from tests.conftest import _free_port, require, require_root
from tests.e2e.conftest import Daemon, LoopbackService

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
RULES = DASHBOARDS / "alerts" / "tenantwatch.rules.yml"
# the fleet's rules run here on one unlabelled node too (its instance is the node)
RULE_FILES = (RULES, DASHBOARDS / "alerts" / "tenantwatch.fleet.rules.yml")

HOST = "127.0.0.1"
TENANTS = ("tw-prom-acme", "tw-prom-globex", "tw-prom-initech")
INVALID = "bad tenant!"  # rejected by tenantwatch's pattern -> __invalid__ (reason "pattern")
TRAFFIC_MIN_SECONDS = 15.0  # drive at least this long before evaluating
TRAFFIC_MAX_SECONDS = 45.0  # hard bound on the traffic thread
MIN_SCRAPES = 10  # scrapes that saw the test's tenants before evaluating

# Grafana's variables as the dashboards would get them for this test.
# $__rate_interval: at least 4 x the 1 s scrape interval.
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__interval_ms": "5000",
            "__range": "60s", "__range_s": "60"}

# (dashboard uid, panel title) -> "tenant": a series per test tenant; "any": non-empty.
EXPECT_DATA = {
    ("tenantwatch-overview", "Request rate by tenant"): "tenant",
    ("tenantwatch-overview", "5xx error ratio by tenant"): "tenant",
    ("tenantwatch-overview", "Responses by status class"): "tenant",
    ("tenantwatch-overview", "Latency p50 / p95 / p99 by tenant"): "tenant",
    ("tenantwatch-overview", "4xx ratio by tenant"): "tenant",
    ("tenantwatch-overview", "Latency heatmap (gateway)"): "any",
    ("tenantwatch-overview", "Upstream latency p50 / p95 / p99 by tenant"): "tenant",
    ("tenantwatch-overview", "Mean latency by tenant: gateway vs upstream"): "tenant",
    ("tenantwatch-overview", "Upstream request rate by tenant and status class"): "tenant",
    ("tenantwatch-overview", "Bytes received / sent by tenant"): "tenant",
    ("tenantwatch-overview", "Active connections by tenant and side"): "tenant",
    ("tenantwatch-overview", "New connections by tenant and side"): "tenant",
    ("tenantwatch-overview", "Top $topn tenants by request rate"): "tenant",
    ("tenantwatch-tenant", "Request rate"): "any",
    ("tenantwatch-tenant", "5xx ratio"): "any",
    ("tenantwatch-tenant", "p99 latency"): "any",
    ("tenantwatch-tenant", "Active connections"): "any",
    ("tenantwatch-tenant", "Requests by status class"): "any",
    ("tenantwatch-tenant", "Upstream requests by status class"): "any",
    ("tenantwatch-tenant", "Gateway latency p50 / p95 / p99"): "any",
    ("tenantwatch-tenant", "Upstream latency p50 / p95 / p99"): "any",
    ("tenantwatch-tenant", "Latency heatmap (gateway)"): "any",
    ("tenantwatch-tenant", "Bytes received / sent"): "any",
    ("tenantwatch-tenant", "Active connections by side"): "any",
    ("tenantwatch-tenant", "Requests by node"): "any",
    ("tenantwatch-node", "Requests per node"): "any",
    ("tenantwatch-node", "Client connections per node"): "any",
    ("tenantwatch-health", "Daemons up"): "any",
    ("tenantwatch-health", "Daemons down"): "any",
    ("tenantwatch-health", "Probes detached"): "any",
    ("tenantwatch-health", "Gateway processes traced"): "any",
    ("tenantwatch-health", "Tenant labels in use"): "any",
    ("tenantwatch-health", "Events lost"): "any",
    ("tenantwatch-health", "Probes"): "any",
    ("tenantwatch-health", "Aggregation ticks per second"): "any",
    ("tenantwatch-health", "Gateway processes traced per node"): "any",
    ("tenantwatch-health", "Identities rejected by reason"): "any",
    ("tenantwatch-health", "Requests in reserved and default tenants"): "any",
    ("tenantwatch-health", "Share of requests in the default tenant"): "any",
    ("tenantwatch-health", "Scrape duration"): "any",
    ("tenantwatch-health", "Samples per scrape"): "any",
    ("tenantwatch-health", "Build"): "any",
}
# Meta-alerts a healthy daemon must not trigger (not even pending).
HEALTHY_QUIET = ("TenantwatchDown", "TenantwatchAbsent", "TenantwatchProbeDetached",
                 "TenantwatchTickStalled", "TenantwatchNoTargets", "TenantwatchTickSlow",
                 "TenantwatchKernelTableFull")


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    require(Path(path).exists(), "prometheus not installed (scripts/install-prometheus.sh)")
    return path


def wait_for(pred, timeout: float, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------- prometheus


@dataclass
class Prometheus(LoopbackService):
    workdir: Path
    target: str
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def write_config(self) -> Path:
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(r) for r in RULE_FILES],
            "scrape_configs": [{"job_name": "tenantwatch",
                                "static_configs": [{"targets": [self.target]}]}],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def start(self, binary: str) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        for _attempt in range(3):  # the free port can be taken between probing and bind
            self.port = _free_port()
            data = self.workdir / f"data-{self.port}"
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                     f"--web.listen-address={HOST}:{self.port}", "--log.level=warn",
                     "--storage.tsdb.retention.time=1h"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=str(self.workdir))
            if wait_for(self._ready_or_exited, 30.0) and self.proc.poll() is None:
                return self
            self.stop()
        pytest.fail(f"prometheus did not become ready\n{self.log_text()}", pytrace=False)

    def api(self, path: str, params: dict | None = None) -> dict:
        url = f"{self.url}/api/v1/{path}"
        data = urllib.parse.urlencode(params).encode() if params else None
        try:
            with urllib.request.urlopen(url, data=data, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:  # 400/422: a bad or failing expression
            body = json.load(e)
        return body

    def query(self, expr: str) -> dict:
        return self.api("query", {"query": expr})


# ---------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """Keep-alive clients for TENANTS, plus no-tenant and invalid requests, ~50 req/s."""

    port: int
    stop_event: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    errors: list = field(default_factory=list)
    started: float = 0.0
    thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="prom-traffic", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        who = [*TENANTS, None, INVALID]
        clients = {t: WireClient(HOST, self.port) for t in who}
        deadline = self.started + TRAFFIC_MAX_SECONDS
        i = 0
        try:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                for t in who:
                    if i % 10 == 3:
                        path = "/status/503"
                    elif i % 7 == 2:
                        path = "/status/404"
                    elif i % 5 == 1:
                        path = "/sleep/20"
                    else:
                        path = "/"
                    try:
                        clients[t].request(t, path)
                        self.sent += 1
                    except OSError as e:  # keep going: the test checks what was scraped
                        self.errors.append(repr(e))
                        clients[t].close()
                i += 1
                self.stop_event.wait(0.1)
        finally:
            for c in clients.values():
                c.close()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=15)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prometheus(daemon: Daemon, tmp_path_factory) -> Iterator[Prometheus]:
    require_root()
    binary = prometheus_binary()
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), f"{HOST}:{daemon.port}")
    prom.start(binary)
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def scraped(prometheus: Prometheus, e2e_gateway) -> Iterator[Prometheus]:
    """Traffic for TENANTS running, at least TRAFFIC_MIN_SECONDS old, with MIN_SCRAPES scrapes
    of every test tenant in Prometheus, and every rule evaluated once."""
    traffic = Traffic(e2e_gateway.listen_port).start()
    tenant_re = "|".join(TENANTS)
    probe = (f"count_over_time(sum by (tenant) (tenantwatch_http_server_requests_total"
             f'{{job="tenantwatch", tenant=~"{tenant_re}"}})[60s:1s])')

    def enough() -> bool:
        if traffic.elapsed() < TRAFFIC_MIN_SECONDS:
            return False
        res = prometheus.query(probe)
        counts = {r["metric"].get("tenant"): float(r["value"][1])
                  for r in res.get("data", {}).get("result", [])}
        return all(counts.get(t, 0) >= MIN_SCRAPES for t in TENANTS)

    try:
        if not wait_for(enough, TRAFFIC_MAX_SECONDS - 5, interval=1.0):
            pytest.fail(f"Prometheus did not get {MIN_SCRAPES} scrapes of {TENANTS} "
                        f"(sent {traffic.sent}, errors {traffic.errors[:3]}); last answer: "
                        f"{prometheus.query(probe)}\n{prometheus.log_text()}", pytrace=False)
        assert wait_for(lambda: rules_evaluated(prometheus), 15.0), prometheus.api("rules")
        yield prometheus
    finally:
        traffic.stop()


def rules_evaluated(prom: Prometheus) -> bool:
    groups = prom.api("rules").get("data", {}).get("groups", [])
    return bool(groups) and all(r.get("health") != "unknown"
                                for g in groups for r in g["rules"])


# ---------------------------------------------------------------------------- expressions


def dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))]


def panels(dash: dict) -> Iterator[dict]:
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])


def substitute(expr: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"no test value for Grafana variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def grafana_variables(instance: str) -> dict[str, str]:
    # Grafana escapes a value's regex metacharacters inside the PromQL string: 127\\.0\\.0\\.1
    escaped = re.escape(instance).replace("\\", "\\\\")
    return {**BUILTINS, "job": "tenantwatch", "instance": escaped, "tenant": "|".join(TENANTS),
            "topn": "10", "default_tenant": "common"}


def label_values_to_promql(query: str) -> str:
    """Grafana's label_values(selector, label) as an expression with the same series."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.DOTALL)
    assert m, f"unsupported variable query {query!r}"
    return f"group by ({m.group(2)}) ({m.group(1)})"


def tenants_of(result: list[dict]) -> set[str]:
    return {r["metric"].get("tenant") for r in result}


def test_every_expression_parses_and_main_panels_have_data(scraped: Prometheus, daemon: Daemon):
    variables = grafana_variables(f"{HOST}:{daemon.port}")
    failures: list[str] = []
    seen: set[tuple[str, str]] = set()
    evaluated = 0
    for dash in dashboards():
        uid = dash["uid"]
        for v in dash["templating"]["list"]:
            if v["type"] != "query":
                continue
            expr = substitute(label_values_to_promql(v["query"]["query"]), variables)
            res = scraped.query(expr)
            evaluated += 1
            if res.get("status") != "success":
                failures.append(f"{uid} variable ${v['name']}: {expr}: {res.get('error')}")
            elif not res["data"]["result"]:
                failures.append(f"{uid} variable ${v['name']}: no values: {expr}")
        for p in panels(dash):
            for t in p.get("targets", []):
                expr = substitute(t["expr"], variables)
                res = scraped.query(expr)
                evaluated += 1
                where = f"{uid} / {p['title']} [{t['refId']}]: {expr}"
                if res.get("status") != "success":
                    failures.append(f"{where}: {res.get('errorType')}: {res.get('error')}")
                    continue
                want = EXPECT_DATA.get((uid, p["title"]))
                if want is None:
                    continue
                seen.add((uid, p["title"]))
                result = res["data"]["result"]
                if not result:
                    failures.append(f"{where}: no data")
                elif want == "tenant" and not set(TENANTS) <= tenants_of(result):
                    failures.append(f"{where}: tenants {sorted(tenants_of(result))}, "
                                    f"want all of {TENANTS}")
    for r in (r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"]):
        res = scraped.query(r["expr"])
        evaluated += 1
        if res.get("status") != "success":
            failures.append(f"rule {r.get('alert') or r['record']}: {res.get('errorType')}: "
                            f"{res.get('error')}")
    assert not failures, f"{len(failures)} of {evaluated} expressions failed:\n" + "\n".join(
        failures)
    assert set(EXPECT_DATA) <= seen, f"EXPECT_DATA names missing panels: {set(EXPECT_DATA) - seen}"

    # Spot-check values: the test's tenants have a positive request rate.
    res = scraped.query(substitute(
        'sum by (tenant) (rate(tenantwatch_http_server_requests_total'
        '{job=~"$job", tenant=~"$tenant"}[$__rate_interval]))', variables))
    rates = {r["metric"]["tenant"]: float(r["value"][1]) for r in res["data"]["result"]}
    assert all(rates.get(t, 0) > 0 for t in TENANTS), rates
    # The daemon's own process (process_*): its memory, CPU and open files are scraped.
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds"):
        res = scraped.query(substitute(f'{name}{{job=~"$job"}}', variables))
        values = [float(r["value"][1]) for r in res["data"]["result"]]
        assert values and all(v > 0 for v in values), (name, res)


def test_rule_groups_load_healthy_and_no_meta_alert(scraped: Prometheus):
    file_groups = [g for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]]
    groups = {g["name"]: g for g in scraped.api("rules")["data"]["groups"]}
    assert set(groups) == {g["name"] for g in file_groups}
    for fg in file_groups:
        g = groups[fg["name"]]
        assert len(g["rules"]) == len(fg["rules"]), fg["name"]
        for r in g["rules"]:
            assert r["health"] == "ok", (r["name"], r.get("lastError"))
    alerts = scraped.api("alerts")["data"]["alerts"]
    noisy = [a for a in alerts if a["labels"]["alertname"] in HEALTHY_QUIET]
    assert not noisy, noisy
    # one node, unlabelled: the fleet rules take its instance as the node, and a fleet of one
    # has no skew (every tenant's node share is its fleet share)
    skew = scraped.query("node_tenant:tenantwatch_cpu_skew:ratio1m")["data"]["result"]
    assert skew and {r["metric"]["node"] for r in skew} == {scraped.target}, skew
    assert all(abs(float(r["value"][1]) - 1) < 1e-9 for r in skew
               if r["value"][1] != "NaN"), skew


def test_tenantwatch_down_goes_pending_when_the_daemon_stops(scraped: Prometheus,
                                                             daemon: Daemon):
    """Runs last in this module: it stops the module's daemon."""
    instance = f"{HOST}:{daemon.port}"
    assert daemon.stop() == 0, daemon.log_text()[-3000:]

    def pending() -> list[dict]:
        return [a for a in scraped.api("alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == "TenantwatchDown"
                and a["labels"].get("instance") == instance]

    got = wait_for(pending, 15.0)
    assert got, scraped.api("alerts")
    (alert,) = got
    assert alert["state"] == "pending"  # `for: 2m` has not elapsed
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"].endswith("#tenantwatchdown")


# ---------------------------------------------------------------------------- TLS, basic auth


class _SecuredPrometheus(Prometheus):
    """Two jobs on the same target over HTTPS: `secure` with the right basic auth, `anonymous`
    with none."""

    ca: str = ""
    password_file: str = ""

    def write_config(self) -> Path:
        tls = {"ca_file": self.ca}
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "secure", "scheme": "https", "tls_config": tls,
                 "basic_auth": {"username": "prometheus", "password_file": self.password_file},
                 "static_configs": [{"targets": [self.target]}]},
                {"job_name": "anonymous", "scheme": "https", "tls_config": tls,
                 "static_configs": [{"targets": [self.target]}]},
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path


def test_a_real_prometheus_scrapes_over_tls_with_auth_and_is_refused_without(
        daemon_factory, tmp_path) -> None:
    import bcrypt

    require_root()
    binary = prometheus_binary()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=tenantwatch", "-addext", f"subjectAltName=IP:{HOST}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    (tmp_path / "pass").write_text("s3cret-for-prometheus")
    hashed = bcrypt.hashpw(b"s3cret-for-prometheus", bcrypt.gensalt(rounds=6)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config: {{cert_file: {cert}, key_file: {key}}}\n"
                   f"basic_auth_users: {{prometheus: '{hashed}'}}\n")
    d = daemon_factory(f"web_config_file: {web}\n", start=False)
    d.start(wait=False)
    prom = _SecuredPrometheus(tmp_path / "prom", f"{HOST}:{d.port}")
    prom.ca, prom.password_file = str(cert), str(tmp_path / "pass")
    prom.start(binary)
    try:
        def up() -> dict:
            res = prom.query("up")
            return {r["metric"]["job"]: float(r["value"][1])
                    for r in res.get("data", {}).get("result", [])}

        def anonymous_target() -> dict:
            targets = prom.api("targets")["data"]["activeTargets"]
            return next((t for t in targets if t["labels"]["job"] == "anonymous"), {})

        # The daemon starts beside Prometheus (wait=False): a first anonymous scrape can come
        # before it listens and fail with "connection refused"; wait for one that reached it.
        assert wait_for(lambda: up().get("secure") == 1 and "anonymous" in up()
                        and "connection refused" not in anonymous_target().get("lastError", ""),
                        60.0), (up(), anonymous_target(), prom.log_text())
        assert up()["anonymous"] == 0
        res = prom.query('tenantwatch_build_info{job="secure"}')
        assert res["data"]["result"], res
        anon = anonymous_target()
        assert "401" in anon["lastError"], anon
    finally:
        prom.stop()
        d.stop()
