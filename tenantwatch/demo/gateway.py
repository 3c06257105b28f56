"""A real nginx gateway in a private work directory, proxying to a Backend.

The configuration applies the tenant `map` from the seed snippet: a valid `X-Tenant-ID`
(`^[a-zA-Z0-9-]+$`) becomes `$tenant_root`, anything else becomes "common", and the upstream gets it
as `X-Tenant-Context`. nginx logs every request to `access.log` in `log_format tw` (`LOG_FORMAT`),
the gateway-side ground truth; the harness's `Gateway` (harness/gateway.py, beside tests/) reads
it, and reloads nginx.

Everything nginx writes (pid file, logs, temp dirs) stays inside `workdir`. Only processes this
object started are ever signalled.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

LOG_FORMAT = (
    "$request_id $http_x_tenant_id $tenant_root $status $request_time $upstream_response_time"
)


class GatewayError(RuntimeError):
    """nginx failed to start, reload or stop; the message carries nginx's own output."""


def find_nginx() -> str:
    path = shutil.which("nginx")
    if path:
        return path
    for cand in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(cand, os.X_OK):
            return cand
    raise GatewayError("nginx binary not found (install nginx-light or nginx)")


# ---------------------------------------------------------------- /proc helpers

def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of pid, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may contain spaces or parens: split after the last ')'.
    rest = data[data.rfind(b")") + 2:].split()
    return rest[0].decode(), int(rest[1]), int(rest[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _alive(pid: int, starttime: int | None = None) -> bool:
    """Is this pid (with this start time) running? Reaps it if it is a zombie child of ours.
    Only ever called with pids this module started."""
    st = _proc_stat(pid)
    if st is None:
        return False
    if starttime is not None and st[2] != starttime:
        return False
    if st[0] in ("Z", "X"):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _become_subreaper() -> None:
    """`daemon on` makes the master an orphan; PID 1 here does not reap, so dead masters would
    linger as zombies. As a child subreaper this process inherits (and reaps) them instead."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _children(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st is not None and st[1] == ppid and st[0] not in ("Z", "X"):
            out.append(int(name))
    return sorted(out)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@cache
def _nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], check=False, capture_output=True, text=True, timeout=10)
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


@cache
def _compiled_without(binary: str) -> frozenset[str]:
    out = subprocess.run([binary, "-V"], check=False, capture_output=True, text=True, timeout=10)
    return frozenset(re.findall(r"--without-(http_\w+_module)", out.stderr + out.stdout))


class NginxGateway:
    """nginx (master + `workers` workers) on `host:listen_port`, proxying to `upstream_port`.

    The configuration is built from pieces a subclass may extend (the harness's `Gateway` adds
    TLS, CPU affinity, reuseport, a WebSocket location and extra blocks): `main_directives()`,
    `worker_connections`, `http_directives()`, `listen_directives()` and `server_directives()`;
    `ports()` are the ports start() waits for.
    """

    worker_connections = 1024  # per worker, client and upstream connections together

    def __init__(
        self,
        workdir: Path,
        listen_port: int,
        upstream_port: int,
        workers: int = 2,
        *,
        host: str = "127.0.0.1",
        nginx: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.listen_port = int(listen_port)
        self.upstream_port = int(upstream_port)
        self.workers = int(workers)
        self.host = host
        self.nginx = nginx or find_nginx()
        self.conf_path = self.workdir / "nginx.conf"
        self.pid_path = self.workdir / "nginx.pid"
        self.error_log = self.workdir / "error.log"
        self.access_log = self.workdir / "access.log"
        self._master: tuple[int, int] | None = None  # (pid, starttime) of the master we started
        self._seen: dict[int, int] = {}  # every worker pid we saw -> starttime

    # ---------------------------------------------------------------- config

    def main_directives(self) -> str:
        """Extra lines for the main context (none here)."""
        return ""

    def http_directives(self) -> str:
        """Extra lines for the http block, after the upstream (none here)."""
        return ""

    def listen_directives(self) -> str:
        """The server block's listen (and ssl_*) directives."""
        return f"listen {self.host}:{self.listen_port};"

    def server_directives(self) -> str:
        """Extra lines for the server block, after the locations (none here)."""
        return ""

    def ports(self) -> list[int]:
        """The ports nginx listens on: start() waits until each accepts a connection."""
        return [self.listen_port]

    def render_config(self) -> str:
        w = self.workdir
        tmp = w / "tmp"
        without = _compiled_without(self.nginx)
        temp_paths = [f"client_body_temp_path {tmp}/client_body;", f"proxy_temp_path {tmp}/proxy;"]
        for module, directive in (
            ("http_fastcgi_module", "fastcgi_temp_path"),
            ("http_uwsgi_module", "uwsgi_temp_path"),
            ("http_scgi_module", "scgi_temp_path"),
        ):
            if module not in without:
                temp_paths.append(f"{directive} {tmp}/{directive.split('_')[0]};")
        user = "user root root;" if os.geteuid() == 0 else ""
        temp = "\n    ".join(temp_paths)
        return f"""# written by {type(self).__module__}.{type(self).__qualname__}
daemon on;
master_process on;
{user}
worker_processes {self.workers};
pid {self.pid_path};
error_log {self.error_log} warn;
{self.main_directives()}

events {{
    worker_connections {self.worker_connections};
}}

http {{
    default_type text/plain;
    {temp}

    log_format tw '{LOG_FORMAT}';
    access_log {self.access_log} tw;

    map $http_x_tenant_id $tenant_root {{
        default "common";
        "~^[a-zA-Z0-9-]+$" $http_x_tenant_id;
    }}

    upstream tw_backend {{
        server 127.0.0.1:{self.upstream_port};
        keepalive 16;
    }}

    keepalive_requests 100000;
    keepalive_timeout 65s;

{self.http_directives()}

    server {{
        {self.listen_directives()}
        keepalive_requests 100000;

        location = /direct {{
            return 200 "ok\\n";
        }}

        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Tenant-Context $tenant_root;
            proxy_pass http://tw_backend;
        }}

{self.server_directives()}
    }}
}}
"""

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        self.conf_path.write_text(self.render_config())
        return self.conf_path

    def _cmd(self, *args: str) -> list[str]:
        cmd = [self.nginx, "-c", str(self.conf_path), "-p", f"{self.workdir}/"]
        if _nginx_version(self.nginx) >= (1, 19, 5):
            cmd += ["-e", str(self.error_log)]  # never touch the compiled-in error log
        return cmd + list(args)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(*args), check=False, capture_output=True, text=True,
                              timeout=30)

    def _error_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ---------------------------------------------------------------- processes

    def _master_pid(self) -> int | None:
        """The master's pid if the master we started is alive, else None."""
        if self._master is None:
            return None
        pid, start = self._master
        return pid if _alive(pid, start) else None

    def worker_pids(self) -> list[int]:
        """Worker processes of our master (not those still draining after a reload)."""
        master = self._master_pid()
        if master is None:
            return []
        out = []
        for pid in _children(master):
            cmd = _cmdline(pid)
            if not cmd.startswith("nginx: worker process") or "shutting down" in cmd:
                continue
            st = _proc_stat(pid)
            if st is not None:
                self._seen.setdefault(pid, st[2])
            out.append(pid)
        return out

    def _record_children(self) -> None:
        master = self._master_pid()
        if master is None:
            return
        for pid in _children(master):
            st = _proc_stat(pid)
            if st is not None:
                self._seen.setdefault(pid, st[2])

    def _our_pids(self) -> list[int]:
        """Every still-alive process we started (master and any worker we have seen)."""
        pids = []
        if self._master is not None and _alive(*self._master):
            pids.append(self._master[0])
        self._record_children()
        pids += [p for p, s in self._seen.items() if _alive(p, s)]
        return sorted(set(pids))

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> Self:
        if self._master_pid() is not None:
            return self
        self.write_config()
        test = self._run("-t")
        if test.returncode != 0:
            raise GatewayError(f"nginx -t failed for {self.conf_path}:\n{test.stderr}{test.stdout}")
        _become_subreaper()
        try:
            self.pid_path.unlink()
        except FileNotFoundError:
            pass
        run = self._run()
        if run.returncode != 0:
            raise GatewayError(f"nginx failed to start:\n{run.stderr}{run.stdout}\n"
                               f"{self._error_tail()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._master is None:
                try:
                    pid = int(self.pid_path.read_text().strip())
                except (OSError, ValueError):
                    pid = None
                if pid is not None:
                    st = _proc_stat(pid)
                    if st is not None:
                        self._master = (pid, st[2])
            if self._master is not None:
                if not _alive(*self._master):
                    break
                if (len(self.worker_pids()) >= self.workers
                        and all(_port_open(self.host, port) for port in self.ports())):
                    return self
            time.sleep(0.05)
        self.stop()
        raise GatewayError(f"nginx did not come up on {self.host}:{self.listen_port} within "
                           f"{timeout}s:\n{self._error_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful quit, then SIGKILL whatever we started that is still alive. Idempotent."""
        if self._master is None:
            return
        self._record_children()
        if _alive(*self._master):
            run = self._run("-s", "quit")
            if run.returncode != 0 and _alive(*self._master):
                try:
                    os.kill(self._master[0], signal.SIGQUIT)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(*self._master):
                time.sleep(0.05)
        if _alive(*self._master):
            try:
                os.kill(self._master[0], signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid, start in list(self._seen.items()):
            if _alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self._our_pids():
            time.sleep(0.05)
        self._master = None
        self._seen.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
