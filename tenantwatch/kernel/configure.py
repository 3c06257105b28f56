"""The kernel side as the config asks for it: HttpProbes built from a Config.

Turns the tenancy sources, the response check and the capture section into the loader's own
records (KernelSource, KernelResponseCheck); the daemon calls http_probes(config) once.
"""

from __future__ import annotations

from tenantwatch.config import Config
from tenantwatch.kernel.loader import HttpProbes, KernelResponseCheck, KernelSource
from tenantwatch.kernel.records import Side


def kernel_sources(config: Config) -> list[KernelSource]:
    """The identity sources as the kernel needs them (header names and sides)."""
    out = []
    for s in config.tenancy.sources:
        sides = (s.side,) if s.side is not None else (Side.SERVER, Side.CLIENT)
        out.append(KernelSource(header=s.header, sides=tuple(sides), token=s.kind == "jwt",
                                trusted=s.trusted))
    return out


def kernel_response_check(config: Config) -> KernelResponseCheck | None:
    """tenancy.response_check as the kernel needs it."""
    rc = config.tenancy.response_check
    if rc is None:
        return None
    return KernelResponseCheck(header=rc.header, sides=rc.sides,
                               events_per_cpu_per_second=rc.events_per_second)


def http_probes(config: Config) -> HttpProbes:
    """The BPF probes this config describes (not loaded yet: HttpProbes.load)."""
    capture = config.capture
    return HttpProbes(
        sources=kernel_sources(config),
        process_names=[t.process for t in config.targets],
        latency_bounds_seconds=capture.latency_buckets,
        max_connections=capture.max_connections,
        max_identities=capture.max_identities,
        slow_request_seconds=capture.slow_request_seconds,
        slow_requests_per_cpu_per_second=capture.slow_requests_per_second,
        tokens_per_cpu_per_second=capture.tokens_per_second,
        tls=capture.tls,
        response_check=kernel_response_check(config),
        sides=capture.sides,
    )
