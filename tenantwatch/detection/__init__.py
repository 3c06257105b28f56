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
from tenantwatch.detection.settings import DetectionSettings, parse_detection

__all__ = [
    "RESERVED", "CpuTick", "DetectionResult", "DetectionSettings", "Detector", "Hotspot",
    "NodeTick", "TenantTick", "Verdict", "WorkerTick", "parse_detection",
]
