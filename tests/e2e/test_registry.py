"""Known tenants from Redis, end to end: a real redis-server (started here), nginx, the daemon.

The seed's records (`tenant:config:{id}`) say which tenants exist: only those, when active, get
a label and a slot; a suspended tenant and a flood of unknown values are counted under their own
reasons and never take a slot.  Redis going away leaves the last good registry in use, said
stale on /healthz and in the metrics; Redis coming back makes it fresh again.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections import Counter

import pytest

from harness.traffic import drive
from tests.conftest import _free_port
from tests.e2e.conftest import Daemon

redis = pytest.importorskip("redis")
HOST = "127.0.0.1"
RECORDS = {"tenant:config:reg-a": '{"status": "active"}',
           "tenant:config:reg-b": '{"status": "active", "cpu": 1.0}',
           "tenant:config:reg-s": '{"status": "suspended"}'}


class RedisServer:
    """A redis-server of our own on a free port, without persistence."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not installed (make deps)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        pytest.fail("redis-server did not answer within 10 s")

    def client(self):
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer(_free_port()).start()
    yield server
    server.stop()


def until(what, timeout: float = 15.0, every: float = 0.3):
    """Poll `what()` until it is truthy (bounded); returns its last value."""
    deadline = time.monotonic() + timeout
    got = what()
    while not got and time.monotonic() < deadline:
        time.sleep(every)
        got = what()
    return got


def test_only_registered_active_tenants_get_labels_and_redis_outages_are_survived(
        daemon_factory, e2e_gateway, redis_server, tmp_path):
    redis_server.client().mset(RECORDS)
    d: Daemon = daemon_factory(tenancy_extra=(
        f"  max_tenants: 20\n"
        f"  registry: {{redis: 'redis://{HOST}:{redis_server.port}/0', refresh_seconds: 1,"
        f" backup_file: '{tmp_path}/registry.json'}}\n"))
    junk = {f"junk-{i:03d}": 1 for i in range(60)}  # three times the slots
    sent = drive(HOST, e2e_gateway.listen_port, {"reg-a": 5, "reg-b": 3, "reg-s": 2, **junk},
                 connections=3, seed=21)
    assert sum(sent.values()) == 70

    def settled():
        m = d.metrics()
        return m if m.by_tenant("server", "reg-") == Counter({"reg-a": 5, "reg-b": 3}) else None

    m = until(settled)
    assert m, d.metrics().by_tenant("server")
    labels = m.tenant_labels("server") | m.tenant_labels("upstream")
    assert not {t for t in labels if t.startswith(("junk-", "reg-s"))}, labels
    rejected = m.rejected()
    assert rejected["unregistered"] >= 60 and rejected["suspended"] >= 2, rejected
    assert m.value("tenantwatch_registry_tenants", state="all") == 3
    assert m.value("tenantwatch_registry_stale") == 0
    assert d.healthz()["registry"]["state"] == "ok"

    # Redis goes away: the last good registry stays in use, said stale
    redis_server.stop()
    assert until(lambda: d.healthz()["registry"]["state"] == "stale")
    assert d.metrics().value("tenantwatch_registry_stale") == 1
    drive(HOST, e2e_gateway.listen_port, {"reg-a": 2, "junk-x": 1}, connections=1, seed=22)
    assert until(lambda: d.metrics().by_tenant("server", "reg-a")["reg-a"] == 7)
    assert "junk-x" not in d.metrics().tenant_labels("server")

    # Redis comes back (restored from its own backup, here: the records again): fresh
    redis_server.start().client().mset(RECORDS)
    assert until(lambda: d.healthz()["registry"]["state"] == "ok")
    assert d.metrics().value("tenantwatch_registry_stale") == 0
    assert d.metrics().value("tenantwatch_registry_read_failures_total") >= 1
    with socket.create_connection((HOST, redis_server.port)):
        pass  # still up for the module's teardown
