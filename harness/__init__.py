"""The test and benchmark harness: what tests/ and bench/ use and the product does not.

Not part of the tenantwatch package (the wheel and the .deb take tenantwatch/ only; nothing under
tenantwatch/ imports it). `tenantwatch.demo` keeps only what `tenantwatch demo` runs (`Backend`,
`NginxGateway`, `Client`); the harness subclasses them with what only tests and benchmarks need,
and tests and benchmarks import them from here, never from `tenantwatch.demo`.

- `backend`: `RecordingBackend`, the demo's Backend counting what it received per
  X-Tenant-Context (`received`, `total`, `reset()`) and echoing WebSocket sessions
  (`websockets`, `websockets_active`): the upstream side's ground truth; `Backend` itself for
  the benchmarks.
- `gateway`: `Gateway`, the demo's NginxGateway plus a TLS listener, worker CPU affinity, more
  worker connections, reuseport, `location /ws` and extra http/server lines; `reload()`
  (`nginx -s reload`, case 4), `master_pid()`, `our_pids()` and its access log read back
  (`access_log_records()`, `wait_access_log()`).
- `client`: `WireClient`, the demo's Client plus `build_request()`, `exchange()` (the whole
  response), `pipeline()` (case 2), `split_request()` (case 3), `send_raw()` and `reset()` (a RST,
  case 5).
- `websocket`: RFC 6455 frames, masking and the handshake's accept key.
- `traffic`: `drive()`, an exact number of requests per tenant over keep-alive connections,
  counted by (tenant, status) on the client side.
- `many_clients`: tens of thousands of keep-alive connections from a few processes
  (`python -m harness.many_clients`, `ClientFleet`).
- `metrics`: a /metrics scrape as {sample name: [(labels, value)]} (`parse_metrics`,
  prometheus_client's parser; `parse_selected`, a fast line filter for the scale test's and
  bench's 50 MB scrapes), the end-to-end tests' `Metrics` and the benchmarks' `Counts`.
- `processes`: the daemon as a child process (`Daemon`, the tests' and the benchmarks'), free
  ports, a GET, CPU ticks from /proc.
- `workload`: what the nginx benchmarks run: wrk scripts and runs, browser-sized heads, the
  `--layout` of nginx and wrk, the untraced upstream nginx, a TLS listener.
- `bench`: the benchmarks' error, their median, kernel.bpf_stats_enabled for a run.

Importable from the repository root (pytest puts it on the path; the kernel matrix's guests run
`python -m tests.vm.guest_check` there) and, for `.venv/bin/python bench/NAME.py`, from the venv,
where `make deps` installs it editable (harness/pyproject.toml).
"""
