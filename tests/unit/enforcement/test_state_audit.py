"""The state file (atomic, strict on load) and the audit log (append, failures logged once)."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from tenantwatch.enforcement import AuditLog, CpuLimit, Lease, StateFileError, StateStore


def lease(tenant: str = "acme") -> Lease:
    return Lease(tenant, f"/sys/fs/cgroup/t/{tenant}", 7, 2, 0.5, "noisy",
                 CpuLimit(None, 100_000, 100), CpuLimit(50_000, 100_000, 100),
                 1.0, 2.0, 3.0, 4.0)


def test_round_trip_atomic_and_private(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "lib/caps.json"))
    store.save({"acme": lease(), "globex": lease("globex")})
    assert store.load() == {"acme": lease(), "globex": lease("globex")}
    assert [p.name for p in (tmp_path / "lib").iterdir()] == ["caps.json"]  # no temp file left
    assert stat.S_IMODE((tmp_path / "lib/caps.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "lib").stat().st_mode) == 0o700
    doc = json.loads((tmp_path / "lib/caps.json").read_text())
    assert doc["version"] == 1 and doc["leases"][0]["lease_expires_unix"] == 4.0


@pytest.mark.parametrize("text,message", [
    ("{", "Expecting"), ("[]", "version 1"), ('{"version": 1, "leases": {}}', "version 1"),
    ('{"version": 1, "leases": [{"tenant": "a"}]}', "leases\\[0\\]"),
    (json.dumps({"version": 1, "leases": [{
        "tenant": "a", "path": "/x", "inode": 1, "version": 2, "cores": 1, "trigger": "noisy",
        "original": {"quota_us": "max", "period_us": 1}, "written": None, "taken_at": 0,
        "changed_at": 0, "renewed_at": 0, "lease_expires_unix": 0}]}), "quota_us"),
])
def test_a_malformed_state_file_is_an_error_not_a_guess(tmp_path: Path, text: str,
                                                         message: str) -> None:
    (tmp_path / "caps.json").write_text(text)
    with pytest.raises(StateFileError, match=message):
        StateStore(str(tmp_path / "caps.json")).load()


def test_an_unwritable_state_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "caps.json").mkdir()
    with pytest.raises(StateFileError, match="cannot write"):
        StateStore(str(tmp_path / "caps.json")).save({})
    assert [p.name for p in tmp_path.iterdir()] == ["caps.json"]


def test_audit_appends_json_lines_and_logs_a_failure_once(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(str(tmp_path / "a/audit.jsonl"))
    log.write({"action": "would_cap", "evidence": {"trusted": True}})
    log.write({"action": "cap"})
    lines = (tmp_path / "a/audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["action"] for x in lines] == ["would_cap", "cap"]
    bad = AuditLog(str(tmp_path / "a"))  # a directory: every write fails
    with caplog.at_level(logging.ERROR):
        bad.write({"action": "cap"})
        bad.write({"action": "cap"})
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
