"""Prints the kernel matrix table after a run of tests/vm/test_matrix.py (and keeps it in
TW_VM_CACHE/last-matrix.md, with the raw results in last-matrix.json)."""

from __future__ import annotations

import json

from tests.vm import harness


def _paths(p: dict | None) -> str:
    if not p:
        return "-"
    return f"{p.get('probe_read')}, {p.get('events')}, {p.get('drain')}"


def row(name: str, entry: dict) -> list[str]:
    if entry.get("not_tested"):
        # fetch_failed: install-vm-deps.sh's reason (what could not be fetched, and why); else
        # the kernel cache is missing or incomplete, which fails under CI
        what = "not tested" if entry.get("fetch_failed") else "NOT TESTED (kernel cache)"
        return [name, what, entry["not_tested"], "-", "-", "-", "-"]
    run = entry.get("run")
    res = entry.get("result")
    secs = f"{run.seconds:.0f}" if run is not None else "-"
    label = f"{name} ({run.kernel})" if run is not None else name
    if res is None:
        return [label, f"NO: {run.describe() if run else 'no run'}", "-", "-", "-", "-", secs]
    steps = res.get("steps", {})

    load = steps.get("load", {})
    if load.get("ok"):
        window = f", {load['window']} parser steps a run" if load.get("window") else ""
        loads = (f"yes ({load['attached']}/{load['probes']} tracepoints, "
                 f"{load.get('tail_calls', '?')} tail-called programs"
                 f"{' and their TLS copies' if load.get('tls_tail_calls') else ''}{window}, "
                 f"{load['seconds']:.0f}s)")
    else:
        loads = f"NO: {str(load.get('error', 'failed'))[:120]}"

    fallbacks = _paths(load.get("paths"))
    forced = steps.get("forced")
    if forced is not None:
        fallbacks += ("; forced " + _paths(forced.get("paths")) + ": "
                      + ("exact" if forced.get("ok") else "FAILED"))

    counts = steps.get("counts", {})
    if counts.get("ok"):
        n = sum(sum(c.values()) for c in counts["got"]["server"].values())
        counts_s = f"yes ({n} requests, server+client+backend)"
        if counts.get("big_heads", {}).get("ok"):
            counts_s += "; 16 KiB heads whole"
    else:
        counts_s = f"NO: {str(counts.get('error', 'failed'))[:80]}"

    d = steps.get("daemon", {})
    if d.get("ok"):
        daemon_s = f"ready {d['ready_seconds']:.0f}s, counts exact, exit 0"
    else:
        daemon_s = (f"NO: {str(d.get('error', ''))[:60]} ready={d.get('ready')} "
                    f"exit={d.get('exit')}")

    cg = steps.get("cgroup")
    if cg is None:
        cgroup_s = "n/a (v1 host: tests/kernel/test_cgroup_v1.py)" if name == "host" else "-"
    elif cg.get("ok"):
        cgroup_s = (f"{cg['measured_cores']:.3f} cores at cap {cg['cap_cores']} "
                    f"(uncapped {cg['uncapped_cores']:.2f})")
    else:
        cgroup_s = f"NO: {str(cg.get('error', 'failed'))[:80]}"
    return [label, loads, fallbacks, counts_s, daemon_s, cgroup_s, secs]


HEADER = ["kernel", "loads", "fallbacks (probe read, events, drain)", "counts exact",
          "daemon ready/stop", "cgroup v2 cap", "seconds"]


def table(results: dict) -> str:
    rows = [HEADER] + [row(k, v) for k, v in results.items()]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("---" for _ in HEADER) + " |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.vm.test_matrix import RESULTS

    if not RESULTS:
        return
    text = table(RESULTS)
    terminalreporter.section("kernel matrix")
    terminalreporter.write_line(text)
    try:
        (harness.CACHE / "last-matrix.md").write_text(text + "\n")
        raw = {k: {"not_tested": v.get("not_tested"), "result": v.get("result"),
                   "seconds": round(v["run"].seconds, 1) if v.get("run") else None,
                   "exit_status": v["run"].exit_status if v.get("run") else None}
               for k, v in RESULTS.items()}
        (harness.CACHE / "last-matrix.json").write_text(json.dumps(raw, indent=1, default=str))
        terminalreporter.write_line(f"(also in {harness.CACHE}/last-matrix.md)")
    except OSError:
        pass
