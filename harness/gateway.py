"""The demo's nginx gateway with what only tests and benchmarks do to it: `nginx -s reload`
(case 4) and reading its access log, the gateway-side ground truth.

`Gateway` is `tenantwatch.demo.NginxGateway` (same config, same processes, same access log in
`log_format tw`, `LOG_FORMAT`) plus `reload()`, `access_log_records()` and `wait_access_log()`.
"""

from __future__ import annotations

import re
import time

from tenantwatch.demo.gateway import GatewayError, NginxGateway, _alive

# The fields of LOG_FORMAT (tenantwatch.demo.gateway). request_id is 32 hex digits; the tenant
# header may contain spaces, so anchor the rest from the right: tenant_root is "common" or matched
# ^[a-zA-Z0-9-]+$; upstream_response_time is "-", a number, or several separated by ", " / " : "
# when nginx tried more than one upstream.
_LOG_RE = re.compile(
    r"^(?P<request_id>[0-9a-f]{32}) (?P<tenant_id>.*) (?P<tenant_root>[A-Za-z0-9-]+) "
    r"(?P<status>\d{3}) (?P<request_time>[0-9.]+) "
    r"(?P<upstream_response_time>-|[0-9.]+(?:(?:, | : )(?:-|[0-9.]+))*)$"
)


class Gateway(NginxGateway):
    """NginxGateway that tests and benchmarks can reload and whose access log they read."""

    def reload(self, timeout: float = 10.0, wait_old_exit: bool = False) -> list[int]:
        """Rewrite the config (attributes may have changed), `nginx -s reload`, and wait until a
        full set of new workers runs and every old worker is shutting down or gone (so
        worker_pids() returns only new ones). Returns the new worker pids. With `wait_old_exit`, also wait
        until the old workers have exited."""
        master = self.master_pid()
        if master is None:
            raise GatewayError("reload: nginx is not running")
        old = set(self.worker_pids(include_shutting_down=True))
        self.write_config()
        test = self._run("-t")
        if test.returncode != 0:
            raise GatewayError(f"nginx -t failed for {self.conf_path}:\n{test.stderr}{test.stdout}")
        run = self._run("-s", "reload")
        if run.returncode != 0:
            raise GatewayError(f"nginx -s reload failed:\n{run.stderr}{run.stdout}")
        deadline = time.monotonic() + timeout
        new: list[int] = []
        while time.monotonic() < deadline:
            current = self.worker_pids()  # old workers drop out once "shutting down"
            new = [p for p in current if p not in old]
            if len(new) >= self.workers and len(new) == len(current):
                break
            if self.master_pid() is None:
                raise GatewayError(f"nginx master died during reload:\n{self._error_tail()}")
            time.sleep(0.05)
        else:
            raise GatewayError(f"reload: only {len(new)}/{self.workers} new workers after "
                               f"{timeout}s:\n{self._error_tail()}")
        if wait_old_exit:
            while time.monotonic() < deadline:
                if not any(_alive(p, self._seen.get(p)) for p in old):
                    break
                time.sleep(0.05)
            else:
                raise GatewayError(f"reload: old workers still running after {timeout}s")
        return new

    # ---------------------------------------------------------------- access log

    def access_log_records(self) -> list[dict]:
        """Parsed access log lines: request_id, tenant_id (None when nginx logged "-"),
        tenant_root, status (int), request_time (float), upstream_response_time (float, summed over
        tries; None when there was no upstream). Unparseable lines come back as {"raw": line}."""
        try:
            text = self.access_log.read_text(encoding="latin-1")
        except FileNotFoundError:
            return []
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # a line nginx is still writing
        records = []
        for line in text.splitlines():
            m = _LOG_RE.match(line)
            if m is None:
                records.append({"raw": line})
                continue
            d: dict = m.groupdict()
            d["tenant_id"] = None if d["tenant_id"] == "-" else d["tenant_id"]
            d["status"] = int(d["status"])
            d["request_time"] = float(d["request_time"])
            times = [float(t) for t in re.split(r", | : ", d["upstream_response_time"]) if t != "-"]
            d["upstream_response_time"] = sum(times) if times else None
            records.append(d)
        return records

    def wait_access_log(self, count: int, timeout: float = 5.0) -> list[dict]:
        """nginx writes the log line after the response; wait (bounded) for `count` records."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.access_log_records()
            if len(records) >= count or time.monotonic() >= deadline:
                return records
            time.sleep(0.02)
