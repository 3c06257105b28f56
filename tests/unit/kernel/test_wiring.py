"""The kernel side's wiring out of the daemon: probes built from a config (kernel/configure.py),
which processes stay traced (kernel/targets.py) and when the connection table is swept
(kernel/sweep.py).  No BPF: HttpProbes is only constructed, /proc is a fixture tree."""

from __future__ import annotations

from pathlib import Path

from tenantwatch.config import parse_config
from tenantwatch.kernel import sweep
from tenantwatch.kernel.configure import http_probes
from tenantwatch.kernel.records import Side
from tenantwatch.kernel.sweep import ConnectionSweeper
from tenantwatch.kernel.targets import ProcessScanner
from tests.unit.test_sd_notify import SweepProbes


def test_probes_are_built_from_the_config():
    config = parse_config({
        "targets": [{"process": "nginx"}, {"process": "envoy"}],
        "tenancy": {"sources": [{"header": "X-Tenant-ID", "side": "server"},
                                {"jwt": {"claim": "tenant_id"}}],
                    "response_check": {"header": "X-Served-Tenant"}},
        "capture": {"max_connections": 2048, "tls": False, "slow_request_seconds": 0.25,
                    "latency_buckets": [0.01, 0.1, 1.0]},
    }, env={})
    p = http_probes(config)
    assert p.process_names == ("nginx", "envoy")
    assert [(s.header, s.sides, s.token) for s in p.sources] == [
        ("x-tenant-id", (Side.SERVER,), False),
        ("authorization", (Side.SERVER, Side.CLIENT), True)]
    assert p.max_connections == 2048 and p.max_identities == config.capture.max_identities
    assert p.tls is False and p.slow_ns == 250_000_000
    assert p.bounds == (0.01, 0.1, 1.0)
    assert p.response_check is not None and p.response_check.header == "x-served-tenant"
    assert p.sides == config.capture.sides


def _proc(root: Path, tgid: int, leader: int) -> None:
    d = root / str(tgid)
    d.mkdir()
    (d / "comm").write_text("nginx\n")
    (d / "status").write_text(f"Name:\tnginx\nTgid:\t{leader}\nPid:\t{tgid}\n")


def test_only_live_thread_group_leaders_stay_traced(tmp_path):
    _proc(tmp_path, 100, 100)
    _proc(tmp_path, 101, 100)  # a thread of 100 (the fork hook may add thread ids)
    scanner = ProcessScanner(["nginx"], proc=str(tmp_path))
    assert scanner.live_processes({100, 101, 102}) == {100}  # 102: gone
    assert scanner.scan() == {100, 101}


class _Probes(SweepProbes):
    """test_sd_notify's stand-in, closing 3 connections a walk."""

    def forget_connections(self, live) -> int:
        super().forget_connections(live)
        return 3


def test_the_sweep_walks_when_a_target_left_and_at_the_backstop():
    probes = _Probes()
    s = ConnectionSweeper(probes)  # type: ignore[arg-type]
    s.saw({10, 11})
    assert [s.tick() for _ in range(sweep.EVERY_TICKS)] == [0] * sweep.EVERY_TICKS
    assert probes.sweeps == []  # a sweep tick, nobody left
    probes.live = {10}
    assert sum(s.tick() for _ in range(sweep.EVERY_TICKS)) == 3
    assert probes.sweeps == [{10}]
    for _ in range(sweep.BACKSTOP_TICKS - 2 * sweep.EVERY_TICKS):
        s.tick()
    assert probes.sweeps == [{10}, {10}]  # nobody left since: the backstop
