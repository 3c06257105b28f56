"""Every BPF program compiles, verifies and attaches on this kernel; the ABI mirrors match."""

from __future__ import annotations

import ctypes as ct
import re
from pathlib import Path

from tenantwatch.kernel import abi, dfa

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"


def test_every_program_loads_and_every_tracepoint_attaches(probes):
    declared = re.findall(r"TRACEPOINT_PROBE\((\w+),\s*(\w+)\)", (BPF_DIR / "http.c").read_text())
    assert len(probes.probes) == len(declared) > 20
    assert all(probes.probes.values()), [p for p, ok in probes.probes.items() if not ok]
    # tw_parse, tw_token, tw_token_emit and tw_h2 are loaded separately: the tail-call array.
    assert probes.tail_calls() == 4


def _sizes(probes, name: str) -> tuple:
    """(key_size, value_size) as the kernel has them (bcc's own ctypes mangle 2-D arrays)."""
    info = dict(line.split(":", 1) for line in
                Path(f"/proc/self/fdinfo/{probes.map_fd(name)}").read_text().splitlines()
                if ":" in line)
    return int(info["key_size"]), int(info["value_size"])


def test_abi_sizes_match_the_compiled_maps(probes):
    assert _sizes(probes, "tw_agg0") == (ct.sizeof(abi.AggKey), ct.sizeof(abi.AggVal))
    assert _sizes(probes, "tw_ctl")[1] == ct.sizeof(abi.Ctl)
    assert _sizes(probes, "tw_names")[1] == ct.sizeof(abi.Name)
    assert _sizes(probes, "tw_dfa")[1] == ct.sizeof(dfa.Dfa)
    assert _sizes(probes, "tw_tokbufs")[1] == ct.sizeof(abi.TokenEvent)
    assert _sizes(probes, "tw_pfx")[1] == ct.sizeof(abi.Pfx)
    assert _sizes(probes, "tw_breach") == (ct.sizeof(abi.BreachKey), ct.sizeof(abi.BreachVal))
    assert _sizes(probes, "tw_breach_scratch")[1] == ct.sizeof(abi.BreachEvent)


def test_generated_dfa_header_is_current():
    assert (BPF_DIR / "include" / "tw_dfa.h").read_text() == dfa.header_text()


def test_drain_is_empty_without_traffic(probes):
    tick = probes.drain()
    assert tick.identities == () or all(c.request_heads == 0 for c in tick.identities)
    assert tick.targets == 0


def test_more_targets_than_the_map_holds_are_counted_not_fatal(probes):
    fake = set(range(10_000_000, 10_000_000 + 5000))  # ids no process has: the map does not care
    try:
        probes.set_targets(fake)
        lost = probes.drain().lost
        assert lost.get("target_map_full") == 5000 - 4096
    finally:
        probes.set_targets(set())
    assert probes.targets() == set()
