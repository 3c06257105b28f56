"""What `tenantwatch demo` runs (run.py): real components on loopback, stopped by pid.

- `Backend`: threaded HTTP/1.1 upstream (and WebSocket echo) that nginx proxies to.
- `NginxGateway`: a private nginx applying the tenant map and proxying to the Backend.
- `Client`: raw-socket HTTP/1.1 keep-alive client.

The tests and benchmarks use them too, and subclasses in `harness/` (beside tests/, not part of
the package) that add what only they need: `RecordingBackend` counts what the Backend received,
`Gateway` reloads nginx and reads its access log, `WireClient` pipelines requests, splits heads,
sends raw bytes and resets. The counted `drive()`, the many-connection clients, /metrics parsing
and the benchmarks' helpers are there too.
"""

from tenantwatch.demo.backend import Backend
from tenantwatch.demo.gateway import GatewayError, NginxGateway, find_nginx
from tenantwatch.demo.traffic import Client, ProtocolError, Response

__all__ = [
    "Backend",
    "Client",
    "GatewayError",
    "NginxGateway",
    "ProtocolError",
    "Response",
    "find_nginx",
]
