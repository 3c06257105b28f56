"""The demo's nginx gateway with what only tests and benchmarks need.

`Gateway` is `tenantwatch.demo.NginxGateway` (same config, same processes, same access log in
`log_format tw`, `LOG_FORMAT`) plus, in its configuration, a TLS listener, worker CPU affinity,
more worker connections, reuseport, a WebSocket location and extra http/server lines; and, to
drive and inspect it, `reload()` (`nginx -s reload`, case 4), `master_pid()`, `our_pids()` and its
access log read back (`access_log_records()`, `wait_access_log()`), the gateway-side ground truth.
"""

from __future__ import annotations

import re
import resource
import time
from pathlib import Path

from tenantwatch.demo.gateway import GatewayError, NginxGateway, _alive, find_nginx

__all__ = ["Gateway", "GatewayError", "alive", "find_nginx"]

# The fields of LOG_FORMAT (tenantwatch.demo.gateway). request_id is 32 hex digits; the tenant
# header may contain spaces, so anchor the rest from the right: tenant_root is "common" or matched
# ^[a-zA-Z0-9-]+$; upstream_response_time is "-", a number, or several separated by ", " / " : "
# when nginx tried more than one upstream.
_LOG_RE = re.compile(
    r"^(?P<request_id>[0-9a-f]{32}) (?P<tenant_id>.*) (?P<tenant_root>[A-Za-z0-9-]+) "
    r"(?P<status>\d{3}) (?P<request_time>[0-9.]+) "
    r"(?P<upstream_response_time>-|[0-9.]+(?:(?:, | : )(?:-|[0-9.]+))*)$"
)

# location /ws: WebSocket upgrades passed on (Upgrade, and Connection "upgrade" when the client
# asked for one, else "" so that keep-alive to the upstream stays possible), with the same
# X-Tenant-Context as location /.
WS_MAP = """\
    map $http_upgrade $tw_connection_upgrade {
        default upgrade;
        "" "";
    }
"""
WS_LOCATION = """\
        location /ws {
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $tw_connection_upgrade;
            proxy_set_header X-Tenant-Context $tenant_root;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_pass http://tw_backend;
        }
"""


def alive(pid: int, starttime: int | None = None) -> bool:
    """Is this pid (with this start time, from /proc/PID/stat) running?  A zombie child of
    ours is reaped (and is not alive)."""
    return _alive(pid, starttime)


class Gateway(NginxGateway):
    """NginxGateway that tests and benchmarks configure further, reload, and whose access log
    they read.

    `extra_http` is inserted into the http block, `extra_server` into the server block.
    `location /ws` proxies WebSocket upgrades.

    `tls_port` (with `ssl_certificate` and `ssl_certificate_key`, files the caller made) adds a
    second `listen ... ssl` (HTTP/1.1 only, no http2) to the same server block: the same
    locations, the same tenant map, the same plain-HTTP upstream.

    `cpu_affinity` is nginx's worker_cpu_affinity (a bitmask per worker, e.g. "10": CPU 1), for
    benchmarks that keep the workers off the load generator's CPU.  `worker_connections` counts
    client and upstream connections together; past 1024 a worker also needs the open-file limit
    raised (worker_rlimit_nofile, set to twice this); this machine's hard limit is 20 000 per
    process, so big tests spread over several workers.  `reuseport` gives each worker its own
    listening socket: the kernel spreads connections evenly instead of waking whichever worker
    is idle.
    """

    def __init__(
        self,
        workdir: Path,
        listen_port: int,
        upstream_port: int,
        workers: int = 2,
        extra_http: str = "",
        *,
        extra_server: str = "",
        host: str = "127.0.0.1",
        nginx: str | None = None,
        tls_port: int | None = None,
        ssl_certificate: str | Path | None = None,
        ssl_certificate_key: str | Path | None = None,
        cpu_affinity: str | None = None,
        worker_connections: int = 1024,
        reuseport: bool = False,
    ) -> None:
        super().__init__(workdir, listen_port, upstream_port, workers, host=host, nginx=nginx)
        if cpu_affinity is not None and not all(
                m and set(m) <= {"0", "1"} for m in cpu_affinity.split()):
            raise GatewayError(f"cpu_affinity {cpu_affinity!r}: bitmasks of 0 and 1 expected")
        self.cpu_affinity = cpu_affinity
        self.worker_connections = int(worker_connections)
        self.reuseport = bool(reuseport)
        self.extra_http = extra_http
        self.extra_server = extra_server
        self.tls_port = None if tls_port is None else int(tls_port)
        if self.tls_port is not None and (ssl_certificate is None or ssl_certificate_key is None):
            raise GatewayError("tls_port needs ssl_certificate and ssl_certificate_key")
        self.ssl_certificate = None if ssl_certificate is None else Path(ssl_certificate).resolve()
        self.ssl_certificate_key = (None if ssl_certificate_key is None
                                    else Path(ssl_certificate_key).resolve())

    # ---------------------------------------------------------------- config

    def main_directives(self) -> str:
        lines = [super().main_directives()]
        if self.cpu_affinity:
            lines.append(f"worker_cpu_affinity {self.cpu_affinity};")
        if self.worker_connections > 1024:
            lines.append(f"worker_rlimit_nofile {self._nofile()};")
        return "\n".join(line for line in lines if line)

    def _nofile(self) -> int:
        """Open files per worker: twice its connections, within the hard limit."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        want = 2 * self.worker_connections
        return want if hard == resource.RLIM_INFINITY else min(want, hard)

    def http_directives(self) -> str:
        return super().http_directives() + WS_MAP + "\n" + self.extra_http

    def listen_directives(self) -> str:
        listen = f"listen {self.host}:{self.listen_port}{' reuseport' if self.reuseport else ''};"
        if self.tls_port is None:
            return listen
        return (f"{listen}\n"
                f"        listen {self.host}:{self.tls_port} ssl;\n"
                f"        ssl_certificate {self.ssl_certificate};\n"
                f"        ssl_certificate_key {self.ssl_certificate_key};\n"
                f"        ssl_protocols TLSv1.2 TLSv1.3;")

    def server_directives(self) -> str:
        return super().server_directives() + WS_LOCATION + "\n" + self.extra_server

    def ports(self) -> list[int]:
        return super().ports() + ([] if self.tls_port is None else [self.tls_port])

    # ---------------------------------------------------------------- processes

    def master_pid(self) -> int | None:
        """The master's pid if the master we started is alive, else None."""
        return self._master_pid()

    def our_pids(self) -> list[int]:
        """Every still-alive process we started (master and any worker we have seen)."""
        return self._our_pids()

    def reload(self, timeout: float = 10.0, wait_old_exit: bool = False) -> list[int]:
        """Rewrite the config (attributes may have changed), `nginx -s reload`, and wait until a
        full set of new workers runs and every old worker is shutting down or gone (so
        worker_pids() returns only new ones). Returns the new worker pids. With `wait_old_exit`, also wait
        until the old workers have exited."""
        master = self.master_pid()
        if master is None:
            raise GatewayError("reload: nginx is not running")
        old = set(self.our_pids()) - {master}  # every worker, draining ones too
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
