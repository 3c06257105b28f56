"""`tenantwatch demo`: a local nginx gateway, a backend, four tenants, and tenantwatch.

Everything runs on loopback and is stopped (by pid) on Ctrl-C or after --duration.
The daemon runs in this process (same code as `tenantwatch run`) on an embedded config.
"""

from __future__ import annotations

import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from tenantwatch.config import parse_config
from tenantwatch.demo.backend import Backend
from tenantwatch.demo.gateway import NginxGateway
from tenantwatch.demo.traffic import Client
from tenantwatch.errors import TenantwatchError

# Tenants and their relative request rates; "mallory" also sends a forged
# X-Tenant-Context header, which the trusted (client-side) source ignores.
TENANTS = {"acme": 8, "globex": 4, "initech": 2, "mallory": 1}
REQUESTS_PER_SECOND = 60  # gentle: the demo should not load the machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_config(listen_port: int):
    return parse_config({
        "listen": f"127.0.0.1:{listen_port}",
        "targets": [{"process": "nginx"}],
        "tenancy": {
            "sources": [
                {"header": "X-Tenant-Context", "side": "client", "trusted": True},
                {"header": "X-Tenant-ID", "side": "server"},
            ],
            "default": "common",
        },
    }, env={})


def _traffic(port: int, stop: threading.Event) -> None:
    rng = random.Random(7)
    names = list(TENANTS)
    weights = [TENANTS[n] for n in names]
    client = Client("127.0.0.1", port)
    while not stop.is_set():
        tenant = rng.choices(names, weights)[0]
        headers = [("X-Tenant-Context", "acme")] if tenant == "mallory" else []
        path = "/sleep/20" if tenant == "acme" and rng.random() < 0.1 else "/"
        try:
            client.request(tenant, path=path, headers=headers)
            if rng.random() < 0.02:
                client.request("bad tenant!", path="/")  # fails the pattern: __invalid__
        except OSError:
            client = Client("127.0.0.1", port)
        stop.wait(1.0 / REQUESTS_PER_SECOND)


def run_demo(duration: float | None = None) -> int:
    from tenantwatch.daemon import Daemon
    from tenantwatch.exporters.documents import tenants_document
    from tenantwatch.top import render_table

    api_port = _free_port()
    gw_port = _free_port()
    stop = threading.Event()
    print("tenantwatch demo: starting a backend, an nginx gateway and tenantwatch "
          "(compiling the probes takes a few seconds) ...", flush=True)
    with Backend() as backend, tempfile.TemporaryDirectory(prefix="tenantwatch-demo-") as d:
        gateway = NginxGateway(Path(d), gw_port, backend.port)
        gateway.start()
        daemon = Daemon(demo_config(api_port))
        try:
            daemon.start()
        except TenantwatchError as e:
            gateway.stop()
            print(f"cannot start tenantwatch: {e}", file=sys.stderr)
            return 1
        workers = [threading.Thread(target=_traffic, args=(gw_port, stop), daemon=True)
                   for _ in range(2)]
        for w in workers:
            w.start()
        started = time.monotonic()
        previous = None
        try:
            while not stop.is_set():
                time.sleep(daemon.config.capture.tick_seconds)
                daemon.tick()
                payload = tenants_document(daemon.snapshot(), daemon.detection)
                table = render_table(payload, previous)
                previous = payload
                sys.stdout.write("\033[2J\033[H" if sys.stdout.isatty() else "\n")
                print(f"gateway http://127.0.0.1:{gw_port}/  (nginx, {len(gateway.worker_pids())}"
                      f" workers) -> backend :{backend.port}")
                print(f"metrics http://127.0.0.1:{api_port}/metrics   "
                      f"tenants http://127.0.0.1:{api_port}/api/v1/tenants")
                print(table)
                print("server = client->nginx (X-Tenant-ID, claimed); client = nginx->backend "
                      "(X-Tenant-Context, trusted). Ctrl-C to stop.", flush=True)
                if duration is not None and time.monotonic() - started >= duration:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=5)
            daemon.shutdown()
            gateway.stop()
    print("tenantwatch demo: stopped and cleaned up.")
    return 0
