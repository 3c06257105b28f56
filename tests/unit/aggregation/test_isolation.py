"""IsolationTally: the response check's counts and breaches, labelled within the tenant bounds;
the Prometheus families and log lines built from them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from tenantwatch.aggregation.isolation import (
    MAX_BREACH_SERIES,
    IsolationTally,
    _address,
    _socket_table,
)
from tenantwatch.config import parse_config
from tenantwatch.exporters.isolation import IsolationCollector, report
from tenantwatch.identity import IdentityResolver
from tenantwatch.kernel.records import (
    BreachCount,
    BreachEvent,
    IsolationCounts,
    KernelTick,
    Side,
    ValueFlag,
)

CONFIG = {"targets": [{"process": "nginx"}],
          "tenancy": {"sources": [{"header": "X-Tenant-Context", "side": "client",
                                   "trusted": True},
                                  {"header": "X-Tenant-ID", "side": "server"}],
                      "max_tenants": 4,
                      "response_check": {"header": "X-Served-Tenant"}}}
ACME, BETA = 101, 102  # kernel keys of the requests' identities


def _resolver(**tenancy) -> IdentityResolver:
    data = {**CONFIG, "tenancy": {**CONFIG["tenancy"], **tenancy}}
    r = IdentityResolver(parse_config(data, env={}).tenancy)
    for key, value in ((ACME, b"acme"), (BETA, b"beta")):
        r.resolve(key, value, 0, ValueFlag.NONE, Side.CLIENT)  # learnt from a request head
    return r


def _tick(**kw) -> KernelTick:
    return KernelTick(identities=(), lost={}, targets=1, probes={}, monotonic_ns=0, **kw)


def _event(key: int, served: bytes, **kw) -> BreachEvent:
    base = {"side": Side.CLIENT, "monotonic_ns": 5_000_000_000, "tgid": 4242, "fd": 7,
            "status": 200, "method": "GET", "target": b"GET /orders/9 HTTP/1.1\r\nHos"}
    return BreachEvent(key=key, served=served, **{**base, **kw})


def test_counts_add_up_and_breaches_are_labelled_by_requester_and_served():
    tally = IsolationTally(_resolver(), (Side.CLIENT,), proc="/nonexistent")
    tally.apply(_tick(isolation=(IsolationCounts(Side.CLIENT, checked=10, breaches=2,
                                                 no_header=3, request_identity=1,
                                                 malformed=1),),
                      breaches=(BreachCount(ACME, Side.CLIENT, b"beta", 2),)))
    tally.apply(_tick(isolation=(IsolationCounts(Side.CLIENT, checked=5, breaches=1),),
                      breaches=(BreachCount(ACME, Side.CLIENT, b"beta", 1),)))
    t = tally.totals()
    assert t.checked == {Side.CLIENT: 15}
    assert t.unchecked == {(Side.CLIENT, "no_header"): 3, (Side.CLIENT, "request_identity"): 1,
                           (Side.CLIENT, "malformed"): 1}
    assert t.breaches == {("acme", "beta", Side.CLIENT): 3}


def test_a_difference_of_trailing_blanks_alone_is_no_breach():
    tally = IsolationTally(_resolver(), (Side.CLIENT,), proc="/nonexistent")
    out = tally.apply(_tick(breaches=(BreachCount(ACME, Side.CLIENT, b"acme \t", 1),),
                            breach_events=(_event(ACME, b"acme "),)))
    assert out == () and tally.totals().breaches == {}


def test_served_labels_go_through_the_tenant_bounds():
    tally = IsolationTally(_resolver(), (Side.CLIENT,), proc="/nonexistent")
    tally.apply(_tick(breaches=(
        BreachCount(ACME, Side.CLIENT, b"no spaces allowed", 1),  # fails the pattern
        BreachCount(ACME, Side.CLIENT, b"\xff\xfe", 1),  # not ASCII
        BreachCount(ACME, Side.CLIENT, b"t1", 1), BreachCount(ACME, Side.CLIENT, b"t2", 1),
        BreachCount(ACME, Side.CLIENT, b"t3", 1))))  # max_tenants 4: acme, beta, t1, t2
    assert tally.totals().breaches == {
        ("acme", "__invalid__", Side.CLIENT): 2, ("acme", "t1", Side.CLIENT): 1,
        ("acme", "t2", Side.CLIENT): 1, ("acme", "__other__", Side.CLIENT): 1}


def test_breach_series_are_bounded(monkeypatch):
    import tenantwatch.aggregation.isolation as iso

    monkeypatch.setattr(iso, "MAX_BREACH_SERIES", 2)
    tally = IsolationTally(_resolver(max_tenants=100), (Side.CLIENT,), proc="/nonexistent")
    tally.apply(_tick(breaches=tuple(BreachCount(ACME, Side.CLIENT, f"t{i}".encode(), 1)
                                     for i in range(5))))
    b = tally.totals().breaches
    assert len(b) == 3 and b[("__other__", "__other__", Side.CLIENT)] == 3
    assert sum(b.values()) == 5  # nothing lost
    assert MAX_BREACH_SERIES >= 1000


def test_an_event_becomes_a_record_with_its_connection_from_proc(tmp_path: Path):
    proc = tmp_path
    (proc / "4242" / "fd").mkdir(parents=True)
    (proc / "4242" / "net").mkdir()
    os.symlink("socket:[777]", proc / "4242" / "fd" / "7")
    (proc / "4242" / "net" / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n"
        "   0: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0"
        "        0 777 1 0000000000000000 20 4 30 10 -1\n")
    tally = IsolationTally(_resolver(), (Side.CLIENT,), proc=str(proc),
                           clock=lambda: 1000.0, monotonic=lambda: 10.0)
    (b,) = tally.apply(_tick(breach_events=(_event(ACME, b"beta"),)))
    assert (b.tenant, b.served, b.served_value, b.side) == ("acme", "beta", "beta", Side.CLIENT)
    assert b.connection == "127.0.0.1:40000 -> 127.0.0.1:8080"
    assert b.time_unix == 995.0 and b.pid == 4242 and b.status == 200
    assert b.request_line == "GET /orders/9 HTTP/1.1"
    (gone,) = tally.apply(_tick(breach_events=(_event(BETA, b"acme", fd=8),)))
    assert gone.connection == "unknown (closed)" and gone.tenant == "beta"


def test_addresses_from_proc_net_tcp():
    assert _address("0100007F:1F90") == "127.0.0.1:8080"
    assert _address("0000000000000000FFFF00000100007F:0050") == "127.0.0.1:80"
    assert _address("00000000000000000000000001000000:01BB") == "[::1]:443"
    assert _socket_table("/nonexistent", {(1, 2)}) == {}


def test_the_families_and_the_log_lines(caplog):
    tally = IsolationTally(_resolver(), (Side.CLIENT, Side.SERVER), proc="/nonexistent")
    out = tally.apply(_tick(
        isolation=(IsolationCounts(Side.CLIENT, checked=4, breaches=1, no_header=2),),
        breaches=(BreachCount(BETA, Side.CLIENT, b"acme", 1),),
        breach_events=(_event(BETA, b"acme", target=b"POST /x\x00\xff HTTP/1.1"),)))
    reg = CollectorRegistry()
    reg.register(IsolationCollector(tally.totals))
    text = generate_latest(reg).decode()
    assert 'tenantwatch_isolation_breaches_total{served="acme",side="client",tenant="beta"} 1.0' \
        in text
    assert 'tenantwatch_isolation_responses_checked_total{side="client"} 4.0' in text
    assert 'tenantwatch_isolation_responses_checked_total{side="server"} 0.0' in text
    assert ('tenantwatch_isolation_responses_unchecked_total{reason="no_header",side="client"} '
            '2.0') in text
    with caplog.at_level(logging.ERROR, logger="tenantwatch.isolation"):
        assert report(out) == 1
    (rec,) = caplog.records
    assert rec.levelno == logging.ERROR
    assert "tenant beta got a response served for acme" in rec.getMessage()
    assert '"request_line": "POST /x\\\\x00\\\\xff HTTP/1.1"' in rec.getMessage()
