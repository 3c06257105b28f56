"""tenantwatch: per-tenant attribution of API gateway traffic and CPU with eBPF."""

__version__ = "0.1.0"
