"""The test and benchmark harness: what tests/ and bench/ use and the product does not.

Not part of the tenantwatch package (the wheel and the .deb take tenantwatch/ only); the
classes `tenantwatch demo` needs (`Backend`, `NginxGateway`, `Client`) stay in
`tenantwatch.demo`, and the harness subclasses them with what only tests and benchmarks need.

- `backend`: `RecordingBackend`, the demo's Backend counting what it received per
  X-Tenant-Context (`received`, `total`, `reset()`) and its WebSocket sessions (`websockets`,
  `websockets_active`): the upstream side's ground truth.
- `gateway`: `Gateway`, the demo's NginxGateway plus `reload()` (`nginx -s reload`, case 4) and
  its access log read back (`access_log_records()`, `wait_access_log()`).
- `client`: `WireClient`, the demo's Client plus `pipeline()` (case 2), `split_request()`
  (case 3), `send_raw()` and `reset()` (a RST, case 5).
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
