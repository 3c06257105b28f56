"""The test and benchmark harness: what tests/ and bench/ use and the product does not.

Not part of the tenantwatch package (the wheel and the .deb take tenantwatch/ only); the
classes `tenantwatch demo` needs (`Backend`, `NginxGateway`, `Client`) stay in
`tenantwatch.demo`, and the harness imports them from there.

- `traffic`: `drive()`, an exact number of requests per tenant over keep-alive connections,
  counted by (tenant, status) on the client side.
- `many_clients`: tens of thousands of keep-alive connections from a few processes
  (`python -m harness.many_clients`, `ClientFleet`).
- `metrics`: a /metrics scrape as {sample name: [(labels, value)]} (prometheus_client's parser),
  and the daemon's counters a benchmark reads (`Counts`).
- `processes`: the daemon as a child process (`Daemon`), free ports, a GET, CPU ticks from /proc.
- `workload`: what the nginx benchmarks run: wrk scripts and runs, browser-sized heads, the
  `--layout` of nginx and wrk, the untraced upstream nginx, a TLS listener.
- `bench`: the benchmarks' error, their median, kernel.bpf_stats_enabled for a run.

Importable from the repository root (pytest puts it on the path) and, for
`.venv/bin/python bench/NAME.py`, from the venv, where `make deps` installs it editable
(harness/pyproject.toml).
"""
