"""systemd's side channel: sd_notify datagrams and the watchdog's interval.

No dependency: one AF_UNIX datagram per message to $NOTIFY_SOCKET.  Outside systemd (no
$NOTIFY_SOCKET) every call is a no-op.  docs/operations.md, "systemd: `Type=notify`".
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


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


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC (systemd's WatchdogSec=), or
    None when no watchdog is set for this process ($WATCHDOG_PID names another one)."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
