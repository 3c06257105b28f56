"""Real demo components shared by the tests and `tenantwatch demo`.

- `Backend`: threaded HTTP/1.1 upstream counting received X-Tenant-Context values.
- `NginxGateway`: a private nginx applying the tenant map and proxying to the Backend.
- `Client` / `drive`: raw-socket ground-truth client (keep-alive, pipelining, split heads).
"""

from tenantwatch.demo.backend import Backend
from tenantwatch.demo.gateway import GatewayError, NginxGateway, find_nginx
from tenantwatch.demo.traffic import Client, ProtocolError, Response, drive

__all__ = [
    "Backend",
    "Client",
    "GatewayError",
    "NginxGateway",
    "ProtocolError",
    "Response",
    "drive",
    "find_nginx",
]
