"""Status class of a finished HTTP/2 stream: the :status class, or the gRPC status mapped to one.

Indexes are positions in kernel.records.STATUS_CLASSES ("1xx" .. "5xx", "none").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from tenantwatch.kernel.records import STATUS_CLASSES

CLASS_2XX: Final = STATUS_CLASSES.index("2xx")
CLASS_4XX: Final = STATUS_CLASSES.index("4xx")
CLASS_5XX: Final = STATUS_CLASSES.index("5xx")
CLASS_NONE: Final = STATUS_CLASSES.index("none")

# gRPC status code -> the HTTP status gRPC gateways answer with (google.rpc.Code comments,
# grpc-gateway's HTTPStatusFromCode); only its class is kept.  Any other code is 5xx.
GRPC_HTTP_STATUS: Mapping[int, int] = MappingProxyType({
    0: 200,  # OK
    1: 499,  # CANCELLED (client closed request)
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
})


def http_class(status: int | None) -> int:
    """Class index of an HTTP status; "none" when absent or outside 100..599."""
    if status is None or not 100 <= status <= 599:
        return CLASS_NONE
    return status // 100 - 1


def grpc_class(grpc_status: bytes) -> int:
    """Class index of a grpc-status header value (an unparseable value is 5xx)."""
    code = parse_int(grpc_status)
    return http_class(GRPC_HTTP_STATUS.get(code, 500)) if code is not None else CLASS_5XX


def parse_int(value: bytes) -> int | None:
    """A non-negative decimal of at most 9 digits, or None."""
    if 0 < len(value) <= 9 and value.isdigit():
        return int(value)
    return None
