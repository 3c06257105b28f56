"""Detection stage: per-tick node records -> noisy-neighbour and hotspot verdicts with evidence."""

from tenantwatch.detection.detector import RESERVED, Detector
from tenantwatch.detection.records import (
    CpuTick,
    DetectionResult,
    Hotspot,
    NodeTick,
    TenantTick,
    Verdict,
    WorkerTick,
)

__all__ = [
    "RESERVED", "CpuTick", "DetectionResult", "Detector", "Hotspot", "NodeTick", "TenantTick",
    "Verdict", "WorkerTick",
]
