"""The test and benchmark harness: what tests/ and bench/ use and the product does not.

Not part of the tenantwatch package (the wheel and the .deb take tenantwatch/ only); the
classes `tenantwatch demo` needs (`Backend`, `NginxGateway`, `Client`) stay in
`tenantwatch.demo`, and the harness imports them from there.

- `traffic`: `drive()`, an exact number of requests per tenant over keep-alive connections,
  counted by (tenant, status) on the client side.
- `many_clients`: tens of thousands of keep-alive connections from a few processes
  (`python -m harness.many_clients`, `ClientFleet`).

Importable from the repository root (pytest puts it on the path) and, for
`.venv/bin/python bench/NAME.py`, from the venv, where `make deps` installs it editable
(harness/pyproject.toml).
"""
