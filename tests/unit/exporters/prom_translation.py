"""The Prometheus translation of OTLP metrics, for tests: what an OpenTelemetry Collector's
Prometheus exporter or Prometheus' own OTLP receiver (2.47+) makes of each point, with metric
suffixes on (the default).  Written from the rules of the Prometheus OTLP translator
(prometheus/otlptranslator: BuildCompliantName): the name's characters outside
[a-zA-Z0-9_:] become `_`; the unit, mapped to a word (s -> seconds, By -> bytes, ...; a `{...}`
annotation is dropped), is appended unless the name already ends with it; `_ratio` for unit `1`
on a gauge; `_total` on a monotonic sum; a histogram gives `_bucket{le}` (cumulative), `_sum`
and `_count`.  Used because no collector and no Prometheus with an OTLP receiver can be
installed here (Debian 12 has Prometheus 2.42)."""

from __future__ import annotations

import re

from tests.unit.exporters.otlp_receiver import Point

UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "Cel": "celsius",
              "W": "watts", "J": "joules", "%": "percent"}

Sample = tuple[str, frozenset, float]  # (sample name, labels, value)


def prometheus_name(name: str, unit: str, kind: str, monotonic: bool | None) -> str:
    out = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    word = "" if unit.startswith("{") else UNIT_WORDS.get(unit, "")
    if unit == "1" and kind == "gauge":
        word = "ratio"
    if word and not out.endswith("_" + word):
        out += "_" + word
    if kind == "sum" and monotonic:
        out += "_total"
    return out


def go_float(v: float) -> str:
    """le values as Prometheus writes them."""
    return "+Inf" if v == float("inf") else repr(float(v))


def samples(points: list[Point]) -> set[Sample]:
    out: set[Sample] = set()
    for p in points:
        name = prometheus_name(p.metric, p.unit, p.kind, p.is_monotonic)
        labels = {k: str(v) for k, v in p.attributes.items()}
        if p.kind == "histogram":
            running = 0
            for bound, n in zip([*p.explicit_bounds, float("inf")], p.bucket_counts):
                running += n
                out.add((name + "_bucket", frozenset({**labels, "le": go_float(bound)}.items()),
                         float(running)))
            out.add((name + "_sum", frozenset(labels.items()), float(p.sum)))
            out.add((name + "_count", frozenset(labels.items()), float(p.count)))
        else:
            out.add((name, frozenset(labels.items()), float(p.value)))
    return out
