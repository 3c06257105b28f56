"""The test harness itself, against the real thing: Backend + nginx + raw-socket client agree."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

from harness.client import WireClient
from harness.gateway import alive as _alive
from harness.traffic import drive

TENANTS = {"alpha": 23, "beta": 7, None: 3}
EXPECTED_UPSTREAM = Counter({"alpha": 23, "beta": 7, "common": 3})


def test_counts_agree_client_backend_access_log(gateway, backend):
    got = drive("127.0.0.1", gateway.listen_port, TENANTS, connections=4, seed=1)
    assert got == Counter({("alpha", 200): 23, ("beta", 200): 7, (None, 200): 3})

    assert backend.received == EXPECTED_UPSTREAM

    records = gateway.wait_access_log(33)
    assert len(records) == 33, records
    assert Counter(r["tenant_root"] for r in records) == EXPECTED_UPSTREAM
    assert Counter(r["tenant_id"] for r in records) == Counter(TENANTS)
    assert {r["status"] for r in records} == {200}
    assert all(r["upstream_response_time"] is not None for r in records)
    assert len({r["request_id"] for r in records}) == 33


def test_one_connection_carries_several_tenants(gateway, backend):
    with WireClient("127.0.0.1", gateway.listen_port) as c:
        statuses = [c.request(t) for t in ["alpha", "beta", "alpha", None, "beta"]]
        assert c.connects == 1
        assert c.last_response.body == b"tenant-context=beta\n"
    assert statuses == [200] * 5
    assert backend.received == Counter({"alpha": 2, "beta": 2, "common": 1})


def test_invalid_tenant_header_maps_to_common(gateway, backend):
    with WireClient("127.0.0.1", gateway.listen_port) as c:
        assert c.request("bad tenant!") == 200
        assert c.request("a/b") == 200
    assert backend.received == Counter({"common": 2})


def test_direct_location_does_not_reach_upstream(gateway, backend):
    with WireClient("127.0.0.1", gateway.listen_port) as c:
        assert c.request("alpha", "/direct") == 200
        assert c.last_response.body == b"ok\n"
    assert backend.total == 0
    (rec,) = gateway.wait_access_log(1)
    assert rec["tenant_root"] == "alpha" and rec["upstream_response_time"] is None


def test_pipelined_requests_one_write(gateway, backend):
    reqs = [("alpha", "/"), ("beta", "/status/404"), (None, "/"), ("alpha", "/sleep/20"),
            ("beta", "/")]
    with WireClient("127.0.0.1", gateway.listen_port) as c:
        assert c.pipeline(reqs) == [200, 404, 200, 200, 200]
        assert c.connects == 1
    assert backend.received == Counter({"alpha": 2, "beta": 2, "common": 1})


def test_split_request_head(gateway, backend):
    with WireClient("127.0.0.1", gateway.listen_port) as c:
        head = c.build_request("gamma", "/")
        name_at = head.index(b"X-Tenant-ID")
        # inside the method, inside a header name, inside the value, before the blank line
        cuts = [2, name_at + 4, name_at + len(b"X-Tenant-ID: ga"), len(head) - 2]
        assert c.split_request("gamma", cuts) == 200
        big = [(f"X-Pad-{i}", "p" * 200) for i in range(40)]  # head larger than one read
        assert c.split_request("delta", [1000, 5000], headers=big) == 200
    assert backend.received == Counter({"gamma": 1, "delta": 1})


def test_backend_status_and_chunked_free_paths(backend):
    with WireClient("127.0.0.1", backend.port) as c:
        assert c.request(None, "/status/503", headers=[("X-Tenant-Context", "t1")]) == 503
        assert c.request(None, "/", method="POST", body=b"hello",
                         headers=[("X-Tenant-Context", "t1")]) == 200
        assert c.request(None, "/") == 200
        assert c.connects == 1
    assert backend.received == Counter({"t1": 2, None: 1})


def test_reload_keeps_master_changes_workers(gateway, backend):
    master = gateway.master_pid()
    old = set(gateway.worker_pids())
    assert master is not None and len(old) == 2
    new = set(gateway.reload())
    assert gateway.master_pid() == master
    assert len(new) == 2 and not (new & old)
    assert set(gateway.worker_pids()) == new
    got = drive("127.0.0.1", gateway.listen_port, {"alpha": 5, "beta": 5}, connections=2)
    assert got == Counter({("alpha", 200): 5, ("beta", 200): 5})


def test_reload_under_load_loses_nothing(gateway, backend):
    tenants = {"alpha": 150, "beta": 150, None: 50}
    result = {}
    t = threading.Thread(target=lambda: result.update(
        got=drive("127.0.0.1", gateway.listen_port, tenants, connections=4, seed=7,
                  path="/sleep/1", deadline=60)))
    t.start()
    time.sleep(0.1)
    gateway.reload(wait_old_exit=True)
    t.join(timeout=90)
    assert not t.is_alive()
    assert result["got"] == Counter({("alpha", 200): 150, ("beta", 200): 150, (None, 200): 50})
    assert backend.received == Counter({"alpha": 150, "beta": 150, "common": 50})
    records = gateway.wait_access_log(350)
    assert Counter(r["tenant_root"] for r in records) == backend.received


def test_stop_leaves_no_process_of_ours(gateway):
    pids = [gateway.master_pid()] + gateway.worker_pids()
    starts = {}
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            starts[pid] = int(f.read().rsplit(")", 1)[1].split()[19])
    gateway.stop()
    assert gateway.master_pid() is None
    assert gateway.our_pids() == []
    assert not [p for p in pids if _alive(p, starts[p])]
    assert not os.path.exists(f"/proc/{pids[0]}") or not _alive(pids[0], starts[pids[0]])
    gateway.stop()  # idempotent
