"""The daemon: wiring, signals, sd_notify and the tick loop; no stage logic lives here.

kernel (HttpProbes.drain) -> identity (IdentityResolver, inside the Aggregator)
-> aggregation (Aggregator.apply / snapshot) -> exporters (ApiServer, TenantCollector).
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry

from tenantwatch import __version__
from tenantwatch.aggregation import Aggregator
from tenantwatch.aggregation.records import Snapshot
from tenantwatch.config import Config, load_config
from tenantwatch.errors import ConfigError
from tenantwatch.exporters import ApiServer, TenantCollector
from tenantwatch.identity import IdentityResolver
from tenantwatch.kernel.loader import HttpProbes, KernelSource
from tenantwatch.kernel.records import Side
from tenantwatch.kernel.targets import ProcessScanner

log = logging.getLogger(__name__)

# Connection state of processes that exited is swept this often (in ticks): a
# sweep walks the whole connection map, so not every tick.
SWEEP_EVERY_TICKS = 10
# /healthz turns unhealthy when the tick loop has not completed for this many ticks.
STALL_TICKS = 5


def sd_notify(message: str) -> bool:
    """Send one sd_notify datagram to $NOTIFY_SOCKET (no dependency needed)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", addr, e)
        return False


def kernel_sources(config: Config) -> list:
    """The identity sources as the kernel needs them (header names and sides)."""
    out = []
    for s in config.tenancy.sources:
        sides = (s.side,) if s.side is not None else (Side.SERVER, Side.CLIENT)
        out.append(KernelSource(header=s.header, sides=tuple(sides)))
    return out


class Daemon:
    """One running tenantwatch: probes, pipeline, HTTP endpoints."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.stop_event = threading.Event()
        self.probes = HttpProbes(
            sources=kernel_sources(config),
            process_names=[t.process for t in config.targets],
            latency_bounds_seconds=config.capture.latency_buckets,
            max_connections=config.capture.max_connections,
        )
        self.scanner = ProcessScanner([t.process for t in config.targets])
        self.resolver = IdentityResolver(config.tenancy)
        self.aggregator = Aggregator(self.resolver, config.capture.latency_buckets)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(TenantCollector(self.snapshot, {
            "version": __version__, "kernel": platform.release()}))
        self.api = ApiServer(config.listen_host, config.listen_port, self.snapshot, self.health,
                             self.registry)
        self._ready = False
        self._ticks = 0
        self._last_tick = time.monotonic()
        self._reload_requested = False

    # ------------------------------------------------------------------ views

    def snapshot(self) -> Snapshot:
        snap = self.aggregator.snapshot(self._ready)
        return snap

    def health(self) -> dict[str, Any]:
        snap = self.aggregator.snapshot(self._ready)
        age = time.monotonic() - self._last_tick
        stalled = age > STALL_TICKS * self.config.capture.tick_seconds
        detached = [p for p, ok in snap.probes.items() if not ok]
        lost = dict(snap.events_lost)
        return {
            "ok": self._ready and not stalled,
            "ready": self._ready,
            "last_tick_age_seconds": round(age, 3),
            "targets": snap.targets,
            "probes_detached": detached,
            "events_lost": lost,
            "events_lost_total": sum(lost.values()),
            "identity_rejected": dict(snap.identity_rejected),
            "drain_path": self.probes.drain_path,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Attach probes, serve HTTP, then say READY (in that order)."""
        self.probes.load()
        self._retarget()
        self.api.start()
        self._ready = True
        self.aggregator.apply(self.probes.drain())
        log.info("tenantwatch %s ready: %d probes, %d target processes, listening on %s:%s",
                 __version__, sum(self.probes.probes.values()), len(self.probes.targets()),
                 self.config.listen_host, self.api.port)
        sd_notify("READY=1\nSTATUS=probes attached")

    def _retarget(self) -> None:
        added, removed = self.probes.set_targets(self.scanner.scan()
                                                 | self._kernel_added_alive())
        if added or removed:
            log.info("targets: +%d -%d", len(added), len(removed))

    def _kernel_added_alive(self) -> set:
        """Targets the kernel added (fork/exec) that are still alive processes."""
        return {t for t in self.probes.targets() if self.scanner.alive(t)
                and _is_process(t)}

    def tick(self) -> None:
        self._ticks += 1
        if self._ticks % max(1, int(self.config.capture.rescan_seconds
                                    / self.config.capture.tick_seconds)) == 0:
            self._retarget()
        if self._ticks % SWEEP_EVERY_TICKS == 0:
            self.probes.forget_connections(self.probes.targets())
        self.aggregator.apply(self.probes.drain())
        self._last_tick = time.monotonic()
        sd_notify("WATCHDOG=1")

    def run(self) -> int:
        self._install_signals()
        self.start()
        try:
            while not self.stop_event.wait(self.config.capture.tick_seconds):
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                self.tick()
        finally:
            self.shutdown()
        return 0

    def reload(self) -> None:
        """SIGHUP: re-read the config; a bad one keeps the running config."""
        if not self.config_path:
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload rejected, keeping the running config: %s", e)
            return
        if new == self.config:
            log.info("reload: configuration unchanged")
            return
        log.warning("reload: configuration changed; restart tenantwatch to apply probe or "
                    "listen changes (only the log level is applied live)")
        logging.getLogger().setLevel(new.log_level.upper())

    def shutdown(self) -> None:
        """Final drain, detach everything, stop serving (idempotent)."""
        sd_notify("STOPPING=1")
        if self.probes._bpf is not None:
            try:
                self.aggregator.apply(self.probes.drain())
            except Exception:  # the final flush must not block the detach
                log.exception("final drain failed")
        self.probes.close()
        self.api.stop()
        self._ready = False
        log.info("tenantwatch stopped")

    def _install_signals(self) -> None:
        def stop(signum, _frame):
            log.info("signal %d: stopping", signum)
            self.stop_event.set()

        def hup(_signum, _frame):
            self._reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)


def _is_process(tgid: int) -> bool:
    """The kernel's fork hook may add thread ids; only thread-group leaders are processes."""
    try:
        with open(f"/proc/{tgid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1]) == tgid
    except OSError:
        return False
    return False
