"""Status classes: :status classes and the gRPC status -> HTTP class mapping."""

from __future__ import annotations

import pytest

from tenantwatch.h2.status import grpc_class, http_class
from tenantwatch.kernel.records import STATUS_CLASSES


def cls(i: int) -> str:
    return STATUS_CLASSES[i]


@pytest.mark.parametrize(("status", "want"), [
    (100, "1xx"), (200, "2xx"), (204, "2xx"), (301, "3xx"), (404, "4xx"), (503, "5xx"),
    (599, "5xx"), (600, "none"), (99, "none"), (None, "none"), (-1, "none"),
])
def test_http_class(status: int | None, want: str) -> None:
    assert cls(http_class(status)) == want


GRPC = {0: "2xx", 1: "4xx", 2: "5xx", 3: "4xx", 4: "5xx", 5: "4xx", 6: "4xx", 7: "4xx",
        8: "4xx", 9: "4xx", 10: "4xx", 11: "4xx", 12: "5xx", 13: "5xx", 14: "5xx", 15: "5xx",
        16: "4xx", 17: "5xx", 99: "5xx"}


@pytest.mark.parametrize(("code", "want"), sorted(GRPC.items()))
def test_grpc_class(code: int, want: str) -> None:
    assert cls(grpc_class(str(code).encode())) == want


@pytest.mark.parametrize("value", [b"", b"abc", b"-1", b"1e3", b"9999999999"])
def test_unreadable_grpc_status_is_5xx(value: bytes) -> None:
    assert cls(grpc_class(value)) == "5xx"
