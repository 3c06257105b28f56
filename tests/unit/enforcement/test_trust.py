"""A forged header or an unverified token naming another tenant never gets that tenant capped.

The real chain from the kernel's identity counts on: IdentityResolver (config sources) ->
Aggregator -> Detector -> Enforcer in enforce mode on a fixture tree.  Each case has a control
where the same load under a trusted identity is capped, so that the refusal is the trust rule
at work and not a scenario that never flags anyone.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import replace
from pathlib import Path

from tenantwatch.aggregation import Aggregator
from tenantwatch.aggregation.records import HostSample
from tenantwatch.config import parse_config
from tenantwatch.detection import Detector
from tenantwatch.enforcement import Enforcer, StateStore
from tenantwatch.identity import IdentityResolver
from tenantwatch.kernel.records import CpuCounts, Side
from tests.unit.aggregation.fakes import make_counts, make_tick
from tests.unit.enforcement.trees import Clock, settings, tree, v2_cgroup

GATEWAY, CLAIMED, JWT = 0, 1, 2  # source indexes in the config below
OTHERS = {"b": 10, "c": 11, "d": 12}  # trusted, light tenants: key per tenant


def bearer(claims: dict) -> bytes:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(b'{"alg":"RS256"}')
    return f"Bearer {header}.{b64(json.dumps(claims).encode())}.c2ln".encode()


def run(tmp_path: Path, victim_sources: list[tuple[int, bytes, float]]) -> tuple[Enforcer, dict]:
    """Twelve 1 s ticks: b, c, d light and trusted; the victim's requests come in as
    ``victim_sources`` [(source index, raw value, CPU seconds per tick)], under contention."""
    with_logs = logging.getLogger("tenantwatch.config")
    with_logs.disabled = True  # the trusted server-side header warns: expected here
    try:
        config = parse_config({"targets": [{"process": "nginx"}], "tenancy": {"sources": [
            {"header": "X-Gateway-Tenant", "side": "server", "trusted": True},
            {"header": "X-Tenant-ID", "side": "server"},
            {"jwt": {"claim": "tenant_id"}}]}}, env={})
    finally:
        with_logs.disabled = False
    resolver = IdentityResolver(config.tenancy)
    bounds = config.capture.latency_buckets
    agg = Aggregator(resolver, bounds)
    detector = Detector(config.detection, ignore={"common"})
    for t in ("victim", "b", "c", "d"):
        v2_cgroup(tmp_path / f"cg/tenants.slice/tenant-{t}.slice")
    s = settings(tmp_path, mode="enforce", cooldown_seconds=3600)
    clock = Clock()
    enforcer = Enforcer(s, state_store=StateStore(s.state_file), protected={"common"},
                        clock=clock, host_cores=4)
    before = tree(tmp_path / "cg")
    n = len(bounds) + 1
    ok = [0] * n
    ok[5] = 100  # 100 requests of a few ms each
    for i in range(12):
        counts, cpu = [], []
        for name, key in OTHERS.items():
            counts.append(make_counts(key, classes={"2xx": 100}, raw=name.encode(),
                                      source_index=GATEWAY, buckets=ok))
            cpu.append(CpuCounts(key, 1, 0, Side.SERVER, int(0.2e9)))
        for j, (source, raw, seconds) in enumerate(victim_sources):
            key = 100 + j
            counts.append(make_counts(key, classes={"2xx": 100}, raw=raw, source_index=source,
                                      buckets=ok))
            cpu.append(CpuCounts(key, 1, 0, Side.SERVER, int(seconds * 1e9)))
        tick = make_tick(*counts, monotonic_ns=int((i + 1) * 1e9))
        agg.apply(replace(tick, cpu=tuple(cpu)), HostSample({0: 1.0}, psi_some_avg10=50.0))
        result = detector.update(agg.node_tick())
        enforcer.tick(result)
        clock.advance(1)
    after = tree(tmp_path / "cg")
    changed = {k for k in after if after[k] != before.get(k)}
    return enforcer, {"changed": changed, "result": result}


def noisy(out: dict) -> dict[str, bool]:
    return {v.tenant: v.evidence["trusted"] for v in out["result"].noisy}


def test_a_forged_header_naming_a_tenant_never_caps_it(tmp_path: Path) -> None:
    e, out = run(tmp_path, [(CLAIMED, b"victim", 1.4)])
    assert noisy(out) == {"victim": False}  # flagged, but on an unverified identity
    assert out["changed"] == set() and e.caps_in_force() == {}
    assert e.refusals == {"untrusted": 1}


def test_an_unverified_token_naming_a_tenant_never_caps_it(tmp_path: Path) -> None:
    e, out = run(tmp_path, [(JWT, bearer({"tenant_id": "victim"}), 1.4)])
    assert noisy(out) == {"victim": False}
    assert out["changed"] == set() and e.caps_in_force() == {}
    assert e.refusals == {"untrusted": 1}


def test_control_the_same_load_under_the_gateways_trusted_header_is_capped(
        tmp_path: Path) -> None:
    e, out = run(tmp_path, [(GATEWAY, b"victim", 1.4)])
    assert noisy(out) == {"victim": True}
    assert out["changed"] == {"tenants.slice/tenant-victim.slice/cpu.max"}
    assert list(e.caps_in_force()) == ["victim"]


def test_forged_load_on_top_of_a_little_trusted_traffic_never_caps(tmp_path: Path) -> None:
    e, out = run(tmp_path, [(GATEWAY, b"victim", 0.05), (CLAIMED, b"victim", 1.4)])
    assert out["changed"] == set() and e.caps_in_force() == {}
