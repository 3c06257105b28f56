"""What `tenantwatch demo` runs (run.py): real components on loopback, stopped by pid.

- `Backend`: threaded HTTP/1.1 upstream that nginx proxies to.
- `NginxGateway`: a private nginx applying the tenant map and proxying to the Backend.
- `Client`: raw-socket HTTP/1.1 keep-alive client.

Product code only: the tests and benchmarks use these through subclasses in the harness
(`harness/`, beside tests/; never packaged, never imported from here) that add what only they
need: `RecordingBackend` counts what the Backend received and echoes WebSocket sessions,
`Gateway` adds TLS, CPU affinity, reuseport, a WebSocket location and extra config, reloads nginx
and reads its access log, `WireClient` pipelines requests, splits heads, sends raw bytes and
resets. The classes offer the hooks for that: `Backend.handler`, the config pieces of
`NginxGateway.render_config()`.
"""

from tenantwatch.demo.backend import Backend
from tenantwatch.demo.gateway import GatewayError, NginxGateway, find_nginx
from tenantwatch.demo.traffic import Client

__all__ = [
    "Backend",
    "Client",
    "GatewayError",
    "NginxGateway",
    "find_nginx",
]
