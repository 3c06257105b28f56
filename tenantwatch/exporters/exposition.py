"""The /metrics body: the daemon's collectors in order, each encoded in the format the scraper
asked for (prometheus_client's content negotiation), a collector with ``render(openmetrics)``
writing its own text (TenantCollector: the per-tenant families, tenant_text.py).

``registry`` is an ordinary CollectorRegistry holding the same collectors, for anything that
wants the library's view (tests, describe).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

EOF_LINE = "# EOF\n"


class Exposition:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._collectors: list[Any] = []

    def register(self, collector: Any) -> Any:
        self.registry.register(collector)
        self._collectors.append(collector)
        return collector

    def encode(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) for a scrape with this Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        openmetrics = content_type.startswith("application/openmetrics-text")
        parts = []
        for collector in self._collectors:
            render = getattr(collector, "render", None)
            if render is not None:
                parts.append(render(openmetrics))
                continue
            text = encoder(collector).decode()
            if openmetrics and text.endswith(EOF_LINE):
                text = text[: -len(EOF_LINE)]
            parts.append(text)
        if openmetrics:
            parts.append(EOF_LINE)
        return "".join(parts).encode(), content_type
