"""`top` and `status` client side: render_table on payloads, run_top/run_status against a live
ApiServer on port 0 and against a closed port."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tenantwatch import top
from tenantwatch.exporters import tenants_payload
from tenantwatch.top import (
    CLEAR_SCREEN,
    normalize_base_url,
    render_table,
    run_status,
    run_top,
)
from tests.unit.exporters.live import LiveApi, free_port
from tests.unit.exporters.snapshots import make_snapshot


@pytest.fixture
def live_api() -> Iterator[LiveApi]:
    api = LiveApi()
    api.server.start()
    try:
        yield api
    finally:
        api.server.stop()


def entry(tenant: str, requests: int, side: str = "server", p50: Any = 0.01) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "side": side,
        "trusted": False,
        "requests": requests,
        "requests_by_class": {"2xx": requests, "4xx": 0, "5xx": 0},
        "rx_bytes": 0,
        "tx_bytes": 0,
        "latency_p50_seconds": p50,
        "latency_p99_seconds": 0.1,
        "latency_sum_seconds": 0.0,
        "connections_active": 1,
        "connections_opened": 1,
    }


def payload(taken_at: Any, *tenants: dict[str, Any]) -> dict[str, Any]:
    return {
        "taken_at": taken_at,
        "tenants": list(tenants),
        "identity_rejected": {"pattern": 2},
        "events_lost": {},
    }


def rows(table: str) -> list[list[str]]:
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("TENANT"))
    return [line.split() for line in lines[header + 1 :]]


def test_render_table_columns_and_values() -> None:
    table = render_table(tenants_payload(make_snapshot()))
    header = table.splitlines()[2]
    assert header.split() == [
        "TENANT",
        "SIDE",
        "REQ/S",
        "REQUESTS",
        "2XX",
        "4XX",
        "5XX",
        "P50",
        "MS",
        "P99",
        "MS",
        "ACTIVE",
        "CPU%",
        "FLAGS",
    ]
    assert "identity rejected: 4" in table and "events lost: 2" in table
    # no previous payload: no rate, sorted by total requests; no CPU share or flags yet
    assert rows(table) == [
        ["acme", "server", "-", "10", "7", "2", "1", "10.0", "100", "3", "-"],
        ["acme", "client", "-", "9", "9", "0", "0", "10.0", "10.0", "2", "-"],
        ["globex", "server", "-", "3", "3", "0", "0", "1.0", "1.0", "0", "-"],
    ]


def test_render_table_shows_cpu_share_and_flags() -> None:
    payload = dict(tenants_payload(make_snapshot()))
    payload["cpu_share"] = {"acme": 0.8125, "globex": 0.1}
    payload["flags"] = {"acme": ["NOISY", "HOT:worker42"]}
    got = {r[0] + "/" + r[1]: r[10:] for r in rows(render_table(payload))}
    assert got["acme/server"] == ["81.2", "NOISY,HOT:worker42"]
    assert got["globex/server"] == ["10.0"]


def test_render_table_rate_from_the_daemons_timestamps() -> None:
    before = payload(100.0, entry("big", 1000), entry("fast", 10))
    now = payload(102.0, entry("big", 1010), entry("fast", 50), entry("new", 4))
    table = render_table(now, before, interval=1.0)
    assert [(r[0], r[2]) for r in rows(table)] == [("fast", "20.0"), ("big", "5.0"), ("new", "2.0")]


def test_render_table_rate_falls_back_to_the_interval() -> None:
    before = payload(None, entry("a", 10))
    now = payload(None, entry("a", 40))
    assert rows(render_table(now, before, interval=3.0))[0][2] == "10.0"
    assert rows(render_table(now, before))[0][2] == "-"


def test_render_table_counter_reset_counts_from_zero() -> None:
    before = payload(10.0, entry("a", 100))
    now = payload(11.0, entry("a", 7))
    assert rows(render_table(now, before))[0][2] == "7.0"


def test_render_table_missing_latency_and_no_tenants() -> None:
    assert rows(render_table(payload(1.0, entry("a", 0, p50=None))))[0][7] == "-"
    assert "(no traffic seen yet)" in render_table(payload(1.0))


def test_run_top_once(live_api: LiveApi) -> None:
    out = io.StringIO()
    assert run_top(live_api.url, once=True, out=out) == 0
    text = out.getvalue()
    assert CLEAR_SCREEN not in text
    assert "globex" in text


def test_run_top_frames_and_rates(live_api: LiveApi, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = iter([make_snapshot(taken_at=100.0), make_snapshot(taken_at=101.0)])
    monkeypatch.setattr(
        top.time, "sleep", lambda _s: setattr(live_api, "snapshot", next(snapshots))
    )
    out = io.StringIO()
    assert run_top(live_api.url, interval=0.01, out=out, iterations=3) == 0
    frames = out.getvalue().split(CLEAR_SCREEN)[1:]
    assert len(frames) == 3
    assert " - " in frames[0]
    assert "0.0" in frames[2]  # same counters one daemon second later: 0 req/s


def test_run_top_ctrl_c_exits_0(live_api: LiveApi, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(top.time, "sleep", interrupt)
    assert run_top(live_api.url, interval=0.01, out=io.StringIO()) == 0


def test_run_top_daemon_unreachable(capsys: pytest.CaptureFixture) -> None:
    port = free_port()
    assert run_top(f"http://127.0.0.1:{port}", once=True, out=io.StringIO()) == 3
    assert f"cannot reach the daemon at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_run_top_before_first_snapshot(live_api: LiveApi, capsys: pytest.CaptureFixture) -> None:
    live_api.snapshot = None
    assert run_top(live_api.url, once=True, out=io.StringIO()) == 4
    assert "HTTP 503: no snapshot yet" in capsys.readouterr().err
    out = io.StringIO()
    assert run_top(live_api.url, interval=0.01, out=out, iterations=1) == 0
    assert "HTTP 503" in out.getvalue()


def test_run_status_running(live_api: LiveApi) -> None:
    out = io.StringIO()
    assert run_status(live_api.url, out=out) == 0
    assert out.getvalue() == (
        f"tenantwatch is running at {live_api.url}: events_lost=2, ticks=42\n"
    )


def test_run_status_unhealthy(live_api: LiveApi) -> None:
    live_api.health = {"ok": False}
    out = io.StringIO()
    assert run_status(live_api.url, out=out) == 4
    assert "unhealthy (HTTP 503)" in out.getvalue()


def test_run_status_not_running() -> None:
    out = io.StringIO()
    port = free_port()
    assert run_status(f"127.0.0.1:{port}", out=out) == 3
    assert "not running" in out.getvalue()


def test_run_status_no_answer_is_unknown() -> None:
    # a socket that accepts connections (backlog) but never answers
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        out = io.StringIO()
        assert run_status(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.2, out=out) == 4
    assert "state unknown" in out.getvalue()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:9477", "http://127.0.0.1:9477"),
        ("http://127.0.0.1:9477/", "http://127.0.0.1:9477"),
        ("0.0.0.0:9477", "http://127.0.0.1:9477"),
        ("[::]:9477", "http://[::1]:9477"),
        ("https://gw.example:9477", "https://gw.example:9477"),
    ],
)
def test_normalize_base_url(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected
