"""The daemon: the composition root.  It builds the stages, runs the tick loop, and answers
signals and systemd; no stage logic lives here.

A tick: kernel (KernelProbes.drain) -> http2 (H2Tracker.merge: HPACK in user space)
-> aggregation (Aggregator.apply, with identity: IdentityResolver) -> isolation -> spans
-> power -> detection (Detector.update) -> enforcement (Enforcer.tick); exporters
(ApiServer, TenantCollector, OTLP) read what the stages publish.  docs/pipeline.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import select
import signal
import threading
import time
from typing import Any, Callable

from prometheus_client import ProcessCollector

from tenantwatch import __version__
from tenantwatch.aggregation import Aggregator
from tenantwatch.aggregation.backends import BackendCpuReader
from tenantwatch.aggregation.host import HostSampler
from tenantwatch.aggregation.isolation import IsolationTally
from tenantwatch.aggregation.power import PowerMeter, PowerModel
from tenantwatch.aggregation.records import Snapshot
from tenantwatch.config import Config, load_config
from tenantwatch.config.reload import reload_changes
from tenantwatch.detection import DetectionResult, Detector
from tenantwatch.enforcement import AuditLog, Enforcer, Placer, StateStore
from tenantwatch.errors import ConfigError
from tenantwatch.exporters import ApiServer, TenantCollector
from tenantwatch.exporters.detection import DetectionCollector, hotspots_payload
from tenantwatch.exporters.documents import health_document, tenants_document
from tenantwatch.exporters.enforcement import EnforcementCollector
from tenantwatch.exporters.exposition import Exposition
from tenantwatch.exporters.isolation import IsolationCollector
from tenantwatch.exporters.isolation import report as report_breaches
from tenantwatch.exporters.otel import OtelMetricsExporter, otel_requested
from tenantwatch.exporters.otel_traces import OtelSpanExporter, traces_requested
from tenantwatch.exporters.power import PowerCollector
from tenantwatch.exporters.registry import RegistryCollector
from tenantwatch.exporters.self_metrics import stage_error_counts, stage_errors, tick_duration
from tenantwatch.exporters.web_config import load_web_config
from tenantwatch.h2 import H2Tracker
from tenantwatch.h2 import compiled as h2_compiled
from tenantwatch.identity import IdentityResolver
from tenantwatch.identity.jwt_verifier import build_verifiers, total_counts
from tenantwatch.identity.registry import TenantRegistry
from tenantwatch.kernel.configure import http_probes
from tenantwatch.kernel.interface import KernelProbes
from tenantwatch.kernel.records import KernelTick
from tenantwatch.kernel.sweep import ConnectionSweeper
from tenantwatch.kernel.targets import ProcessScanner
from tenantwatch.logs import apply_logging
from tenantwatch.memory import after_compile, fixed_mmap_threshold, tune_gc
from tenantwatch.systemd import sd_notify, watchdog_interval

log = logging.getLogger(__name__)

# /healthz turns unhealthy when the tick loop has not completed for this many ticks.
STALL_TICKS = 5
# The stages of a tick, in order, each isolated (Daemon._stage): tenantwatch_stage_errors_total.
# retarget and sweep run on some ticks only (rescan_seconds; kernel/sweep.py).
TICK_STAGES = ("retarget", "sweep", "drain", "http2", "aggregate", "isolation", "spans",
               "power", "detect", "enforce")
FAILED = object()  # what Daemon._stage gives for a stage that raised
# IdentityResolver's key cache: at least this, else twice capture.max_identities
MIN_IDENTITY_CACHE = 65536


def identity_cache_size(config: Config) -> int:
    """Keys the resolver remembers: twice the identities one tick can hold, at least 65536.
    Smaller than the keys in use (40k tenants on two sides), a key evicted between its request
    head and its response folds that response into __unattributed__ (bench/scale.py at 4x)."""
    return max(MIN_IDENTITY_CACHE, 2 * config.capture.max_identities)


# Between ticks, the kernel's event buffers are read this often (HTTP/2 bytes: Daemon._poll_h2).
EVENT_POLL_SECONDS = 0.05


class Daemon:
    """One running tenantwatch: probes, pipeline, HTTP endpoints."""

    def __init__(self, config: Config, config_path: str | None = None,
                 probes: KernelProbes | None = None) -> None:
        """`probes`: the kernel side (kernel/interface.py); by default the BPF probes the
        config describes (kernel/loader.py HttpProbes)."""
        self.config = config
        self.config_path = config_path
        self.stop_event = threading.Event()
        self.probes: KernelProbes = probes if probes is not None else http_probes(config)
        self.scanner = ProcessScanner([t.process for t in config.targets])
        self.sweeper = ConnectionSweeper(self.probes)  # connections of targets that left
        self.verifiers = build_verifiers(config.tenancy.sources)  # jwt sources with keys
        # known tenants from Redis (tenancy.registry), asked before a value takes a label
        self.tenant_registry = TenantRegistry(config.tenancy.registry, config.tenancy.pattern) \
            if config.tenancy.registry is not None else None
        self.resolver = IdentityResolver(config.tenancy, cache_size=identity_cache_size(config),
                                         verifiers=self.verifiers,
                                         registry=self.tenant_registry)
        # HTTP/2: HPACK decoded in user space, per connection, in order (docs/http2.md)
        self.h2 = H2Tracker(config.tenancy.sources, config.capture.latency_buckets,
                            max_connections=config.capture.max_connections,
                            budget_ns_per_tick=round(config.capture.h2_budget_ms_per_tick * 1e6))
        self.aggregator = Aggregator(self.resolver, config.capture.latency_buckets)
        # the response-side tenant check (tenancy.response_check, docs/isolation.md)
        self.isolation = IsolationTally(self.resolver, config.tenancy.response_check.sides) \
            if config.tenancy.response_check is not None else None
        self.host = HostSampler(backends=BackendCpuReader(config.enforcement.cgroup))
        # the node's energy (RAPL, else the configured model) shared by the tenants' CPU time
        p = config.power
        self.power = PowerMeter(PowerModel(p.idle_watts, p.max_watts)
                                if p.idle_watts is not None and p.max_watts is not None else None)
        default = config.tenancy.default
        self.detector = Detector(config.detection, ignore={default} if default else ())
        self.detection: DetectionResult | None = None
        e = config.enforcement
        self.placer = None
        if e.placement is not None and e.mode != "off":
            pattern = re.compile(config.tenancy.pattern)
            self.placer = Placer(e.placement, e.cgroup, gateway_pids=self._gateway_pids,
                                 valid_tenant=lambda t: bool(pattern.fullmatch(t)),
                                 dry_run=e.mode != "enforce")
        self.enforcer = Enforcer(
            e, state_store=StateStore(e.state_file), audit_log=AuditLog(e.audit_log),
            gateway_pids=self._gateway_pids,
            tenant_of_pid=self.placer.tenant_of_pid if self.placer else None,
            protected={default} if default else (),
            quota_source=self.tenant_registry.quotas if self.tenant_registry else None)
        self.exposition = Exposition()  # /metrics: these collectors, in this order
        self.registry = self.exposition.registry
        metrics = self.exposition
        metrics.register(TenantCollector(self.snapshot, {
            "version": __version__, "kernel": platform.release()},
            jwt_counts=(lambda: total_counts(self.verifiers)) if self.verifiers else None,
            histogram_sides=config.metrics.histogram_sides))
        # the other stages' published state: on /metrics, and bridged into OTLP as well
        state_collectors: list = [DetectionCollector(lambda: self.detection),
                                  EnforcementCollector(self.enforcer.payload)]
        if self.tenant_registry is not None:
            state_collectors.append(RegistryCollector(self.tenant_registry.status))
        if self.isolation is not None:
            state_collectors.append(IsolationCollector(self.isolation.totals))
        state_collectors.append(PowerCollector(self.power.totals))
        for collector in state_collectors:
            metrics.register(collector)
        # the daemon's own CPU, memory and file descriptors (process_*), from /proc/self
        metrics.register(ProcessCollector(registry=None))
        # how long each tick takes: a tick that runs late delays every number
        self.tick_duration = metrics.register(tick_duration())
        self.stage_errors = metrics.register(stage_errors(TICK_STAGES))
        state_collectors.append(self.stage_errors)
        self.api = ApiServer(config.listen_host, config.listen_port, self.snapshot, self.health,
                             self.exposition,
                             tenants=lambda snap: tenants_document(snap, self.detection),
                             extra_routes={
                                 "/api/v1/hotspots": lambda: hotspots_payload(self.detection),
                                 "/api/v1/caps": lambda: (200, self.enforcer.payload()),
                             },
                             web=load_web_config(config.web_config_file)
                             if config.web_config_file else None)
        otel = config.otel
        self.otel_metrics = None
        if otel_requested(otel.endpoint):
            try:
                self.otel_metrics = OtelMetricsExporter(
                    self.snapshot, endpoint=otel.endpoint, interval_seconds=otel.interval_seconds,
                    resource_attributes=otel.resource_attributes, collectors=state_collectors)
            except ImportError as err:
                log.error("OpenTelemetry export requested but unavailable: %s", err)
        self.otel_spans = OtelSpanExporter(
            endpoint=otel.endpoint, resource_attributes=otel.resource_attributes) \
            if traces_requested(otel.endpoint) and (config.capture.slow_request_seconds > 0
                                                    or self.isolation is not None) \
            else None
        self._ready = False
        self._ticks = 0
        self._last_tick = time.monotonic()
        self._reload_requested = False
        self._status = ""  # the STATUS= line last sent
        self._status_note = ""  # appended to STATUS= (a rejected reload)
        self._last_ping = 0.0
        self._wake_fds: tuple[int, int] | None = None  # signal handlers -> run loop

    # ------------------------------------------------------------------ views

    def snapshot(self) -> Snapshot:
        snap = self.aggregator.snapshot(self._ready)
        return snap

    def health(self) -> dict[str, Any]:
        return health_document(
            self.aggregator.snapshot(self._ready), ready=self._ready,
            last_tick_age=time.monotonic() - self._last_tick,
            stall_after=STALL_TICKS * self.config.capture.tick_seconds,
            drain_path=self.probes.drain_path, h2_decoder=h2_compiled.STATUS,
            stage_errors=stage_error_counts(self.stage_errors),
            registry=self.tenant_registry.status() if self.tenant_registry is not None else None)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Attach probes, serve HTTP, then say READY (in that order)."""
        for verifier in self.verifiers.values():  # key files now (JwksError); URLs in background
            verifier.start()
        if self.tenant_registry is not None:  # one read now (else the backup), then a thread
            self.tenant_registry.start()
        self.probes.load()
        after_compile()  # the compiler's heap and code are not needed any more: ~90 MB of RSS
        self.enforcer.start()  # reconcile caps left by an earlier run (state file)
        self._retarget()
        self.api.start()
        self._ready = True
        self._apply()
        for exporter in (self.otel_metrics, self.otel_spans):
            if exporter is not None and not exporter.start():
                log.error("OpenTelemetry export could not start; continuing without it")
        log.info("tenantwatch %s ready: %d probes, %d target processes, listening on %s:%s; "
                 "HTTP/2 decoder: %s", __version__, sum(self.probes.probes.values()),
                 len(self.probes.targets()), self.config.listen_host, self.api.port,
                 h2_compiled.STATUS)
        self._status = self.status_line()
        sd_notify(f"READY=1\nSTATUS={self._status}")
        self._last_ping = time.monotonic()

    def status_line(self) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status`)."""
        attached, probes, targets, tenants, lost = self.aggregator.summary()
        line = (f"{attached}/{probes} probes attached, {targets} target processes, "
                f"{tenants} tenants; listening on {self.config.listen_host}:{self.api.port}")
        if lost:
            line += f"; {lost} events lost"
        return line + (f"; {self._status_note}" if self._status_note else "")

    def notify_alive(self) -> None:
        """WATCHDOG=1, with STATUS= when the status line changed."""
        msg = "WATCHDOG=1"
        status = self.status_line()
        if status != self._status:
            self._status = status
            msg += f"\nSTATUS={status}"
        sd_notify(msg)
        self._last_ping = time.monotonic()

    def _gateway_pids(self) -> set:
        """Every traced gateway process: a cgroup holding one is never capped."""
        pids = set(self.scanner.scan())
        if self.probes.loaded:
            pids |= self.probes.targets()
        return pids

    def _retarget(self) -> None:
        if self.placer is not None:
            self.placer.place()
        # the scan's names, and what the kernel added (fork/exec) while it lives
        added, removed = self.probes.set_targets(
            self.scanner.scan() | self.scanner.live_processes(self.probes.targets()))
        self.sweeper.saw(added | removed)
        if added or removed:
            log.info("targets: +%d -%d", len(added), len(removed))

    def tick(self) -> None:
        started = time.monotonic()
        try:
            self._tick()
        finally:
            self.tick_duration.observe(time.monotonic() - started)

    def _tick(self) -> None:
        self._ticks += 1
        if self._ticks % max(1, int(self.config.capture.rescan_seconds
                                    / self.config.capture.tick_seconds)) == 0:
            self._stage("retarget", self._retarget)
        self._stage("sweep", self.sweeper.tick)
        self._apply()
        self._last_tick = time.monotonic()

    def _apply(self) -> None:
        """Drain the kernel once and run the stages after it, each isolated (TICK_STAGES): a
        stage that raises is logged and counted (tenantwatch_stage_errors_total{stage}), and the
        stages that would act on its missing result are skipped this tick; the daemon goes on.
        What a failed drain did not read stays in the kernel's map: a later drain reads it
        (late, not lost)."""
        if not self._collect():
            return  # detection and enforcement would act on the last tick's numbers again
        node = self.aggregator.node_tick()
        if node is None:
            return
        self._stage("power", self.power.apply, node, self._tenant_labels)
        detection = self._stage("detect", self.detector.update, node)
        if detection is FAILED:
            return
        self.detection = detection
        for change in detection.changes:  # one structured line per change
            log.warning("detection %s", json.dumps(change.as_dict(), sort_keys=True))
        self._stage("enforce", self.enforcer.tick, detection, self.aggregator.backend_usage())

    def _collect(self) -> bool:
        """drain -> http2 -> aggregate -> isolation -> spans, each isolated; False when the
        drain or the aggregation failed (no new numbers this tick).  The final drain at
        shutdown runs this too."""
        tick = self._stage("drain", self.probes.drain)
        if tick is FAILED:
            return False
        merged = self._stage("http2", self.h2.merge, tick)
        if merged is not FAILED:
            tick = merged  # else: this tick's HTTP/2 streams are missing
        if self._stage("aggregate", self._aggregate, tick) is FAILED:
            return False
        breaches: tuple = ()
        if self.isolation is not None:
            found = self._stage("isolation", self._isolation, tick)
            breaches = () if found is FAILED else found
        if self.otel_spans is not None:
            self._stage("spans", self._export_spans, breaches)
        return True

    def _isolation(self, tick: KernelTick) -> tuple:
        assert self.isolation is not None
        breaches = self.isolation.apply(tick)
        report_breaches(breaches)
        return breaches

    def _tenant_labels(self) -> set[str]:
        """Every label with a row in the snapshot (reserved and default ones included)."""
        return self.aggregator.tenant_labels()

    def _aggregate(self, tick: KernelTick) -> None:
        self.aggregator.apply(tick, self.host.sample(self.resolver.tenants()),
                              self.config.capture.tick_seconds)

    def _export_spans(self, breaches: tuple) -> None:
        assert self.otel_spans is not None
        self.otel_spans.export(self.aggregator.slow_spans())
        self.otel_spans.export_breaches(breaches)

    def _stage(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), or FAILED when it raised (logged with its traceback, counted)."""
        try:
            return fn(*args)
        except Exception:
            self.stage_errors.labels(stage=name).inc()
            log.exception("tick stage %s failed; the tick goes on without it", name)
            return FAILED

    def run(self) -> int:
        self._wake_fds = os.pipe()
        for fd in self._wake_fds:
            os.set_blocking(fd, False)
        self._install_signals()
        fixed_mmap_threshold()  # a big /metrics body is unmapped after each scrape
        try:
            self.start()
            tune_gc()  # after the probes and the HTTP server exist: they are frozen
            self.loop()
        finally:
            self.shutdown()
            for fd in self._wake_fds:
                os.close(fd)
            self._wake_fds = None
        return 0

    def loop(self) -> None:
        """Tick every tick_seconds; ping the watchdog at least every WATCHDOG_USEC/2, also when
        a tick is longer than that; reload on SIGHUP at once, not at the next tick.  Between
        ticks, every EVENT_POLL_SECONDS, HTTP/2 events are read and decoded (_poll_h2)."""
        watchdog = watchdog_interval()
        next_tick = time.monotonic() + self.config.capture.tick_seconds
        while not self.stop_event.is_set():
            wait = min(next_tick - time.monotonic(), EVENT_POLL_SECONDS)
            if watchdog is not None:
                wait = min(wait, self._last_ping + watchdog - time.monotonic())
            self._sleep(max(0.0, wait))
            if self.stop_event.is_set():
                break
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + self.config.capture.tick_seconds
                self.notify_alive()
                continue
            self._poll_h2()
            if watchdog is not None and time.monotonic() >= self._last_ping + watchdog:
                self.notify_alive()

    def _poll_h2(self) -> None:
        """HTTP/2 bytes between ticks: the ring buffer (4 MiB) holds about 0.1 s of a busy
        HTTP/2 gateway, so it is read every EVENT_POLL_SECONDS and its events decoded at once;
        the tick's merge() takes their counts."""
        try:
            events = self.probes.poll_h2()
            if events:
                self.h2.feed(events)
        except Exception:  # the tick's drain reads them, or counts their loss
            log.exception("reading HTTP/2 events between ticks failed")

    def _sleep(self, seconds: float) -> None:
        """Sleep until `seconds` passed or a signal handler woke the loop."""
        if self._wake_fds is None:
            self.stop_event.wait(seconds)
            return
        r = self._wake_fds[0]
        if select.select([r], [], [], seconds)[0]:
            try:
                while os.read(r, 64):
                    pass
            except BlockingIOError:
                pass

    def _wakeup(self) -> None:
        if self._wake_fds is not None:
            try:
                os.write(self._wake_fds[1], b"x")
            except OSError:  # full pipe: the loop wakes anyway
                pass

    def reload(self) -> None:
        """SIGHUP: re-read the config; a bad one keeps the running config.

        log_level and log_format apply at once; any other changed key is named in the log as
        needing a restart (probes, listen and the identity pipeline are built at start)."""
        sd_notify("RELOADING=1\nSTATUS=reloading configuration")
        try:
            self._status_note = self._reload() or ""
        finally:
            self._status = self.status_line()
            sd_notify(f"READY=1\nSTATUS={self._status}")

    def _reload(self) -> str | None:
        """Returns a note for the STATUS= line, or None."""
        if not self.config_path:
            log.warning("reload: no config file to re-read (started without --config or "
                        "$TENANTWATCH_CONFIG); nothing changed")
            return None
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload rejected, keeping the running config: %s", e)
            return "last reload rejected, running the previous config (see the log)"
        applied, pending = reload_changes(self.config, new)
        if applied:
            apply_logging(new.log_format if "log_format" in applied else None, new.log_level)
            self.config = dataclasses.replace(self.config, log_level=new.log_level,
                                              log_format=new.log_format)
        if not applied and not pending:
            log.info("reload: configuration unchanged")
        elif applied:
            log.warning("reload: applied %s", ", ".join(
                f"{k}={getattr(new, k)}" for k in applied))
        if pending:
            log.warning("reload: %s changed; restart tenantwatch to apply (the running daemon "
                        "keeps the previous values)", ", ".join(pending))
            return f"restart needed to apply {', '.join(pending)}"
        return None

    def shutdown(self) -> None:
        """Final drain, detach everything, stop serving (idempotent)."""
        sd_notify("STOPPING=1\nSTATUS=stopping")
        try:
            self.enforcer.stop()  # restores the original limits unless keep_on_exit
        except Exception:
            log.exception("restoring CPU caps failed; run `tenantwatch release-caps`")
        if self.probes.loaded:  # the final drain; a failed stage is logged, the detach goes on
            self._collect()
        for exporter in (self.otel_metrics, self.otel_spans):
            if exporter is not None:
                exporter.shutdown()  # final export; never raises
        self.probes.close()
        for verifier in self.verifiers.values():
            verifier.stop()
        if self.tenant_registry is not None:
            self.tenant_registry.stop()
        self.api.stop()
        self._ready = False
        log.info("tenantwatch stopped")

    def _install_signals(self) -> None:
        def stop(signum, _frame):
            log.info("signal %d: stopping", signum)
            self.stop_event.set()
            self._wakeup()

        def hup(_signum, _frame):
            self._reload_requested = True
            self._wakeup()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

