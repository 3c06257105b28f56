"""The fast /metrics path (TenantCollector.render, tenant_text.py) against the library's encoders:
byte-for-byte the same text for the same snapshots, plain and OpenMetrics, with odd values
(escapes in labels, big and fractional numbers, a row without a histogram)."""

from __future__ import annotations

import dataclasses
import random
from types import MappingProxyType

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.openmetrics import exposition as om

from tenantwatch.aggregation.records import TenantSideStats
from tenantwatch.exporters import TenantCollector, tenant_text
from tenantwatch.exporters.exposition import Exposition
from tenantwatch.kernel.records import STATUS_CLASSES, Side
from tests.unit.exporters.snapshots import ACME_CLIENT, ACME_SERVER, GLOBEX_SERVER, make_snapshot

BUILD = {"version": "0.1.0", "kernel": "6.1.0-test"}


def library(collector: TenantCollector, openmetrics: bool) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    if openmetrics:
        return om.generate_latest(registry).decode()
    return generate_latest(registry).decode()


def random_rows(rng: random.Random, n: int) -> tuple[TenantSideStats, ...]:
    rows = []
    names = [f"t-{i:05d}" for i in range(n)] + ['we"ird\\na\nme', "__other__", "ütf"]
    for name in names:
        for side in (Side.SERVER, Side.CLIENT):
            if rng.random() < 0.3:
                continue
            big = rng.choice([0, 1, 7, 123456789, 10 ** 15, 2 ** 53 + 1])
            buckets = sorted(rng.randrange(0, 1000) for _ in range(4))
            rows.append(TenantSideStats(
                tenant=name, side=side, trusted=rng.random() < 0.5,
                requests_by_class=MappingProxyType(
                    {c: rng.choice([0, 3, big]) for c in STATUS_CLASSES if rng.random() < 0.8}),
                rx_bytes=big, tx_bytes=rng.randrange(10 ** 9),
                # a row whose histogram does not match the bounds is left out of that family
                latency_buckets=tuple(buckets) if rng.random() < 0.9 else (1, 2),
                latency_sum_seconds=rng.random() * 1e4,
                connections_opened=rng.randrange(100), connections_active=rng.randrange(5),
                cpu_seconds=rng.random() * 100, connections_closed=rng.randrange(50),
                connection_seconds=rng.random() * 1e6))
    rows.sort(key=lambda r: (r.tenant, r.side.value))
    return tuple(rows)


@pytest.mark.parametrize("openmetrics", [False, True])
@pytest.mark.parametrize("seed,rows_per_piece", [(0, None), (1, None), (2, 1), (3, 3), (4, 7)])
def test_the_fast_text_is_the_libraries_byte_for_byte(seed: int, rows_per_piece: int | None,
                                                      openmetrics: bool, monkeypatch) -> None:
    if rows_per_piece is not None:  # families cut into pieces anywhere: the same bytes
        monkeypatch.setattr(tenant_text, "ROWS_PER_PIECE", rows_per_piece)
    rng = random.Random(seed)
    snap = make_snapshot(*random_rows(rng, 40))
    collector = TenantCollector(lambda: snap, BUILD, jwt_counts=lambda: {"ok": 3, "bad": 1})
    want = library(collector, openmetrics)
    if openmetrics:
        want = want[: -len("# EOF\n")]
    assert collector.render(openmetrics) == want


def test_a_family_in_pieces_is_the_family_and_a_scrape_is_in_pieces(monkeypatch) -> None:
    rows = random_rows(random.Random(11), 30)
    bounds = ["0.005", "0.05", "0.5", "+Inf"]
    for name in sorted(tenant_text.FAMILIES):
        whole = tenant_text.family(name, rows, bounds)
        for n in (1, 2, 5, 64, 10_000):
            pieces = list(tenant_text.family_pieces(name, rows, bounds, rows_per_piece=n))
            assert "".join(pieces) == whole, (name, n)
            assert len(pieces) <= max(1, -(-len(rows) // n)), (name, n)
    with pytest.raises(ValueError):
        next(tenant_text.family_pieces(tenant_text.CPU, rows, bounds, rows_per_piece=0))
    with pytest.raises(KeyError):
        next(tenant_text.family_pieces("tenantwatch_nope", rows, bounds))
    snap = make_snapshot(*rows)
    collector = TenantCollector(lambda: snap, BUILD)
    body = collector.render()
    monkeypatch.setattr(tenant_text, "ROWS_PER_PIECE", 4)
    parts = list(collector.render_parts())
    assert "".join(parts) == body
    assert max(len(p) for p in parts) < len(body) / 20  # no part is a whole family


@pytest.mark.parametrize("sides", [(), ("client",), ("server",)])
def test_histograms_of_a_side_can_be_left_out(sides) -> None:
    snap = make_snapshot(*random_rows(random.Random(7), 10))
    collector = TenantCollector(lambda: snap, BUILD, histogram_sides=sides)
    text = collector.render()
    assert text == library(collector, False)
    for side in ("server", "client"):
        has = f"tenantwatch_http_{side}_request_duration_seconds_bucket{{" in text
        assert has is (side in sides)
        assert f"tenantwatch_http_{side}_requests_total{{" in text  # counters stay


@pytest.mark.parametrize("openmetrics", [False, True])
def test_the_shared_snapshot_and_none(openmetrics: bool) -> None:
    for snap in (make_snapshot(), make_snapshot(ACME_SERVER), None):
        collector = TenantCollector(lambda s=snap: s, BUILD)
        want = library(collector, openmetrics)
        assert collector.render(openmetrics) + ("# EOF\n" if openmetrics else "") == want


def test_a_changed_row_shows_in_the_next_scrape() -> None:
    snap = make_snapshot(ACME_CLIENT, ACME_SERVER, GLOBEX_SERVER)
    collector = TenantCollector(lambda: snap, BUILD)
    first = collector.render()
    assert collector.render() == first
    changed = dataclasses.replace(GLOBEX_SERVER, rx_bytes=301)
    snap = make_snapshot(ACME_CLIENT, ACME_SERVER, changed)
    text = collector.render()
    assert 'tenantwatch_http_server_received_bytes_total{tenant="globex"} 301.0' in text
    assert text == library(TenantCollector(lambda: snap, BUILD), False)


@pytest.mark.parametrize("accept,openmetrics", [
    (None, False), ("text/plain", False),
    ("application/openmetrics-text; version=1.0.0", True)])
def test_the_exposition_joins_collectors_like_the_registry(accept, openmetrics) -> None:
    snap = make_snapshot()
    exposition = Exposition()
    exposition.register(TenantCollector(lambda: snap, BUILD))
    exposition.register(ProcessCollector(registry=None, pid=lambda: "self"))
    body, content_type = exposition.encode(accept)
    assert content_type.startswith("application/openmetrics-text") is openmetrics
    text = body.decode()
    # the process collector's values move between two reads: compare everything else
    want = (om.generate_latest if openmetrics else generate_latest)(exposition.registry).decode()

    def stable(t: str) -> list[str]:
        return [line for line in t.splitlines() if not line.startswith("process_")]

    assert stable(text) == stable(want)
    assert text.count("# EOF") == (1 if openmetrics else 0)
    assert text.endswith("# EOF\n") is openmetrics
