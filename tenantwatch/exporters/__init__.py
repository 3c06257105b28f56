"""Exporters: read aggregation Snapshots and serve them (Prometheus /metrics, JSON API, health)."""

from tenantwatch.exporters.documents import tenants_payload
from tenantwatch.exporters.http_api import ApiServer
from tenantwatch.exporters.prometheus import TenantCollector

__all__ = ["ApiServer", "TenantCollector", "tenants_payload"]
