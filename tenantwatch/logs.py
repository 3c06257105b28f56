"""Logging of the daemon and the CLI: formats (text, json, logfmt), journald priorities, setup.

`tenantwatch run` installs one stderr handler (setup_logging); a reload changes its level and
format in place (apply_logging).  Under systemd, stderr is the journal (JOURNAL_STREAM): each
line then starts with its syslog priority ("<3>" for an error), which journald reads
(SyslogLevelPrefix=, on by default), so `journalctl -p warning` works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping

LOG_FORMATS = ("text", "json", "logfmt")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _logfmt_value(v: str) -> str:
    """A logfmt value: bare when it has no space, quote, equals sign or control character."""
    if v and not any(c in v for c in ' "=\\') and v.isprintable():
        return v
    return json.dumps(v)  # quoted, with \\", \\\\ and \\n escapes, as logfmt readers take them


class LogfmtFormatter(logging.Formatter):
    """ts=1765000000.123 level=info logger=tenantwatch.daemon msg="..." (one line a record)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = [("ts", f"{record.created:.3f}"), ("level", record.levelname.lower()),
                  ("logger", record.name), ("msg", record.getMessage())]
        if record.exc_info:
            fields.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields)


# syslog priorities (sd-daemon.h SD_ERR ...) by logging level, for journald
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    return next((p for level, p in _PRIORITIES if levelno >= level), 7)


def journal_stream(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Is `fd` the journal stream systemd gave this service (JOURNAL_STREAM=dev:inode)?"""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class JournalPrefix(logging.Formatter):
    """Each line of a record starts with its syslog priority ("<3>" for an error)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def make_formatter(fmt: str, journal: bool | None = None) -> logging.Formatter:
    """The stderr formatter of `fmt` (text | json | logfmt), with journald priorities when
    stderr is the journal (`journal` None: detect it)."""
    inner: logging.Formatter
    if fmt == "json":
        inner = JsonFormatter()
    elif fmt == "logfmt":
        inner = LogfmtFormatter()
    else:
        inner = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    if journal is None:
        journal = journal_stream()
    return JournalPrefix(inner) if journal else inner


def setup_logging(fmt: str, level: str) -> None:
    """One stderr handler on the root logger, in format `fmt` at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def apply_logging(fmt: str | None, level: str) -> None:
    """For a reload: set the root log level and, when `fmt` is given, the format of the stderr
    handlers setup_logging installed; no handler is replaced."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if fmt is None:
        return
    for h in root.handlers:
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr:
            h.setFormatter(make_formatter(fmt))
