"""What `tenantwatch demo` runs (run.py): real components on loopback, stopped by pid.

- `Backend`: threaded HTTP/1.1 upstream counting received X-Tenant-Context values.
- `NginxGateway`: a private nginx applying the tenant map and proxying to the Backend.
- `Client`: raw-socket HTTP/1.1 client (keep-alive, pipelining, split heads).

The tests and benchmarks use these classes too; what only they need (the counted `drive()`,
the many-connection clients, /metrics parsing, the benchmarks' helpers) is in `harness/`,
beside tests/, which is not part of the package.
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
