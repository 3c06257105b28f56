"""The /metrics body: the daemon's collectors in order, each encoded in the format the scraper
asked for (prometheus_client's content negotiation), a collector with ``render(openmetrics)``
writing its own text (TenantCollector: the per-tenant families, tenant_text.py).

``registry`` is an ordinary CollectorRegistry holding the same collectors, for anything that
wants the library's view (tests, describe).
"""

from __future__ import annotations

from collections.abc import Iterator
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
        parts, content_type = self.encode_parts(accept)
        return b"".join(parts), content_type

    def encode_parts(self, accept: str | None) -> tuple[Iterator[bytes], str]:
        """The body in parts (a collector's each, or what its render_parts yields), each
        encoded when the caller asks for it: a caller that keeps only the bytes (or compresses
        each part) holds a body of 50 MB (10k tenants) once, not two or three times over."""
        encoder, content_type = choose_encoder(accept or "")
        openmetrics = content_type.startswith("application/openmetrics-text")
        return self._parts(encoder, openmetrics), content_type

    def _parts(self, encoder: Any, openmetrics: bool) -> Iterator[bytes]:
        for collector in self._collectors:
            render = getattr(collector, "render_parts", None)
            if render is not None:
                for text in render(openmetrics):
                    yield text.encode()
                continue
            body = encoder(collector)
            if openmetrics and body.endswith(EOF_LINE.encode()):
                body = body[: -len(EOF_LINE)]
            yield body
        if openmetrics:
            yield EOF_LINE.encode()
