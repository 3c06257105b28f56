"""Client side of `tenantwatch top` and `tenantwatch status`: reads a running daemon's HTTP API.

Takes: the daemon's base URL (``http://127.0.0.1:9477``, or a bare ``listen`` address).
Gives: a live per-tenant table from ``/api/v1/tenants`` (``top``) and a one-line state from
``/healthz`` (``status``), with the exit codes of docs/conventions.md: 0 running, 3 not running,
4 unknown.  Only the standard library is used, so both work on a node without extras.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TextIO

EXIT_RUNNING = 0
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4

CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, clear screen
TENANTS_PATH = "/api/v1/tenants"
HEALTH_PATH = "/healthz"


def normalize_base_url(url_or_listen: str) -> str:
    """``127.0.0.1:9477`` or ``http://host:port/`` -> ``http://host:port``.

    A wildcard listen address (``0.0.0.0``, ``[::]``) becomes the matching loopback address.
    """
    url = url_or_listen.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    scheme, rest = url.split("://", 1)
    if rest.startswith("0.0.0.0:") or rest == "0.0.0.0":
        rest = "127.0.0.1" + rest[len("0.0.0.0") :]
    elif rest.startswith("[::]"):
        rest = "[::1]" + rest[len("[::]") :]
    return f"{scheme}://{rest}"


def fetch_json(url: str, timeout: float) -> Any:
    """GET ``url`` and decode its JSON body.

    Raises ``urllib.error.HTTPError`` for non-2xx answers (its ``read()`` holds the body),
    ``urllib.error.URLError`` when the daemon cannot be reached, ``ValueError`` for a body that
    is not JSON.
    """
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000.0
    if ms < 1:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def _rates(
    payload: Mapping[str, Any],
    previous_payload: Mapping[str, Any] | None,
    interval: float | None,
) -> dict[tuple[str, str], float] | None:
    """req/s per (tenant, side) from the delta to the previous payload, None when unknown."""
    if previous_payload is None:
        return None
    elapsed: float | None = None
    now, before = payload.get("taken_at"), previous_payload.get("taken_at")
    if isinstance(now, (int, float)) and isinstance(before, (int, float)) and now > before:
        elapsed = float(now - before)  # the daemon's own clock: exact tick spacing
    elif interval:
        elapsed = interval
    if not elapsed:
        return None
    old = {(t["tenant"], t["side"]): t["requests"] for t in previous_payload.get("tenants", [])}
    rates = {}
    for t in payload.get("tenants", []):
        key = (t["tenant"], t["side"])
        delta = t["requests"] - old.get(key, 0)
        if delta < 0:  # the tenant expired and came back: its counter restarted
            delta = t["requests"]
        rates[key] = delta / elapsed
    return rates


def render_table(
    payload: Mapping[str, Any],
    previous_payload: Mapping[str, Any] | None = None,
    interval: float | None = None,
) -> str:
    """One frame of `top`: a header line and one row per (tenant, side).

    req/s is the request delta to ``previous_payload`` over the daemon's ``taken_at`` spacing
    (``interval`` when the timestamps cannot tell); "-" without a previous payload.  Rows are
    sorted by req/s, then total requests, both descending.
    """
    rates = _rates(payload, previous_payload, interval)
    tenants: list[Mapping[str, Any]] = list(payload.get("tenants", []))

    def sort_key(t: Mapping[str, Any]) -> tuple[float, int, str, str]:
        rate = rates.get((t["tenant"], t["side"]), 0.0) if rates is not None else 0.0
        return (-rate, -int(t.get("requests", 0)), t["tenant"], t["side"])

    tenants.sort(key=sort_key)
    headers = [
        "TENANT",
        "SIDE",
        "REQ/S",
        "REQUESTS",
        "2XX",
        "4XX",
        "5XX",
        "P50 MS",
        "P99 MS",
        "ACTIVE",
        "CPU%",
        "FLAGS",
    ]
    shares: Mapping[str, float] = payload.get("cpu_share", {}) or {}
    flags: Mapping[str, list] = payload.get("flags", {}) or {}
    rows: list[list[str]] = []
    for t in tenants:
        by_class = t.get("requests_by_class", {})
        rate = "-" if rates is None else f"{rates.get((t['tenant'], t['side']), 0.0):.1f}"
        rows.append(
            [
                str(t["tenant"]),
                str(t["side"]),
                rate,
                str(t.get("requests", 0)),
                str(by_class.get("2xx", 0)),
                str(by_class.get("4xx", 0)),
                str(by_class.get("5xx", 0)),
                _ms(t.get("latency_p50_seconds")),
                _ms(t.get("latency_p99_seconds")),
                str(t.get("connections_active", 0)),
                f"{100 * shares[t['tenant']]:.1f}" if t["tenant"] in shares else "-",
                ",".join(flags.get(t["tenant"], [])),
            ]
        )
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        # tenant and side left-aligned, numbers right-aligned
        out = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    taken_at = payload.get("taken_at")
    when = (
        datetime.fromtimestamp(taken_at).strftime("%H:%M:%S")
        if isinstance(taken_at, (int, float))
        else "?"
    )
    rejected = sum(payload.get("identity_rejected", {}).values())
    lost = sum(payload.get("events_lost", {}).values())
    title = (
        f"tenantwatch top  {when}  tenants: {len({t['tenant'] for t in tenants})}"
        f"  identity rejected: {rejected}  events lost: {lost}"
    )
    body = [line(headers)] + [line(r) for r in rows]
    if not rows:
        body.append("(no traffic seen yet)")
    return "\n".join([title, ""] + body) + "\n"


def _http_error_text(exc: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(exc.read().decode("utf-8")).get("error", "")
    except (ValueError, AttributeError, OSError):
        detail = ""
    return f"HTTP {exc.code}" + (f": {detail}" if detail else "")


def run_top(
    base_url: str,
    interval: float = 1.0,
    once: bool = False,
    out: TextIO | None = None,
    iterations: int | None = None,
) -> int:
    """Show the live table until Ctrl-C (exit 0), ``iterations`` frames, or one frame (``once``).

    Exit 3 with a message on stderr when the daemon cannot be reached, 4 when ``once`` and the
    daemon answered with an error.
    """
    out = out if out is not None else sys.stdout
    base = normalize_base_url(base_url)
    url = base + TENANTS_PATH
    timeout = max(1.0, interval)
    current: Mapping[str, Any] | None = None
    previous: Mapping[str, Any] | None = None
    frames = 0
    try:
        while True:
            try:
                payload = fetch_json(url, timeout)
                # Keep the last payload from a different tick, so req/s stays meaningful when
                # we poll faster than the daemon ticks.
                if current is None or payload.get("taken_at") != current.get("taken_at"):
                    previous, current = current, payload
                frame = render_table(current, previous, interval)
            except urllib.error.HTTPError as exc:
                if once:
                    print(
                        f"tenantwatch top: {base} answered {_http_error_text(exc)}", file=sys.stderr
                    )
                    return EXIT_UNKNOWN
                frame = f"tenantwatch top: {base} answered {_http_error_text(exc)}\n"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                print(
                    f"tenantwatch top: cannot reach the daemon at {base}: {reason}", file=sys.stderr
                )
                return EXIT_NOT_RUNNING
            if not once:
                out.write(CLEAR_SCREEN)
            out.write(frame)
            out.flush()
            frames += 1
            if once or (iterations is not None and frames >= iterations):
                return EXIT_RUNNING
            time.sleep(interval)
    except KeyboardInterrupt:
        out.write("\n")
        return EXIT_RUNNING


def _is_refused(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, ConnectionRefusedError) or isinstance(exc, ConnectionRefusedError)


def run_status(base_url: str, timeout: float = 2.0, out: TextIO | None = None) -> int:
    """GET /healthz: 0 running and healthy, 3 nothing listening, 4 anything else."""
    out = out if out is not None else sys.stdout
    base = normalize_base_url(base_url)
    try:
        health = fetch_json(base + HEALTH_PATH, timeout)
    except urllib.error.HTTPError as exc:
        print(f"tenantwatch at {base}: unhealthy ({_http_error_text(exc)})", file=out)
        return EXIT_UNKNOWN
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if _is_refused(exc):
            print(f"tenantwatch is not running (nothing listening at {base})", file=out)
            return EXIT_NOT_RUNNING
        reason = getattr(exc, "reason", exc)
        print(f"tenantwatch at {base}: state unknown ({reason})", file=out)
        return EXIT_UNKNOWN
    details = ""
    if isinstance(health, dict):
        scalars = []
        for key, value in sorted(health.items()):
            if isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
                value = sum(value.values())  # e.g. events_lost by reason -> total
            if key != "ok" and isinstance(value, (str, int, float, bool)):
                scalars.append(f"{key}={value}")
        details = (": " + ", ".join(scalars)) if scalars else ""
    print(f"tenantwatch is running at {base}{details}", file=out)
    return EXIT_RUNNING
