"""The auth service behind nginx's auth_request in the e2e tests (examples/nginx-auth-request.conf):
200 with "X-Auth-Tenant: <tenant>" for a known Authorization value, else 401."""

from __future__ import annotations

from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler


def auth_handler(keys: Mapping[str, str]) -> type[BaseHTTPRequestHandler]:
    """A handler class answering for `keys` (Authorization value -> tenant)."""

    class Auth(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            tenant = keys.get(self.headers.get("Authorization", ""))
            self.send_response(200 if tenant else 401)
            if tenant:
                self.send_header("X-Auth-Tenant", tenant)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    return Auth
