"""journald priorities: when stderr is the journal stream systemd gave the service
(JOURNAL_STREAM=dev:inode), each log line starts with its syslog priority ("<3>" ...), which
journald reads, so `journalctl -p warning` shows the daemon's warnings and errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from tenantwatch.logs import JournalPrefix, journal_stream, make_formatter, syslog_priority


def test_levels_map_to_syslog_priorities() -> None:
    assert [syslog_priority(x) for x in (logging.CRITICAL, logging.ERROR, logging.WARNING,
                                         logging.INFO, logging.DEBUG)] == [2, 3, 4, 6, 7]


def test_the_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    f = tmp_path / "stream"
    with open(f, "w") as fh:
        st = os.fstat(fh.fileno())
        assert journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fh.fileno())
        assert not journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fh.fileno())
        assert not journal_stream({"JOURNAL_STREAM": "junk"}, fh.fileno())
        assert not journal_stream({}, fh.fileno())


def test_every_line_of_a_record_carries_the_prefix() -> None:
    f = JournalPrefix(logging.Formatter("%(levelname)s %(message)s"))
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "one\ntwo", None, None)
    assert f.format(rec) == "<4>WARNING one\n<4>two"
    assert isinstance(make_formatter("json", journal=True), JournalPrefix)
    assert not isinstance(make_formatter("text", journal=False), JournalPrefix)


def test_the_daemon_logs_with_priorities_on_its_journal_stream(tmp_path: Path) -> None:
    """`tenantwatch run` with a bad config, its stderr a file named as its journal stream."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: []\n")
    err = tmp_path / "stderr"
    with open(err, "w") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        rc = subprocess.run([sys.executable, "-m", "tenantwatch.cli", "run", "--config", str(bad)],
                            stderr=fh, stdout=subprocess.DEVNULL, env=env, timeout=60, check=False).returncode
    assert rc != 0
    lines = err.read_text().splitlines()
    assert any(x.startswith("<3>ERROR tenantwatch: bad configuration") for x in lines), lines
    with open(err, "w") as fh:  # not the journal: plain lines
        env.pop("JOURNAL_STREAM")
        subprocess.run([sys.executable, "-m", "tenantwatch.cli", "run", "--config", str(bad)],
                       stderr=fh, stdout=subprocess.DEVNULL, env=env, timeout=60, check=False)
    assert err.read_text().startswith("ERROR tenantwatch: bad configuration")


def test_logfmt_lines():
    import logging

    from tenantwatch.logs import LogfmtFormatter

    rec = logging.LogRecord("tenantwatch.daemon", logging.WARNING, __file__, 1,
                            'cap on "acme" = 0.5 cores', None, None)
    rec.created = 1765000000.1234
    line = LogfmtFormatter().format(rec)
    assert line == ('ts=1765000000.123 level=warning logger=tenantwatch.daemon '
                    'msg="cap on \\"acme\\" = 0.5 cores"')
    rec2 = logging.LogRecord("x", logging.INFO, __file__, 1, "ready", None, None)
    assert LogfmtFormatter().format(rec2).endswith(" level=info logger=x msg=ready")
    assert "\n" not in LogfmtFormatter().format(
        logging.LogRecord("x", logging.INFO, __file__, 1, "two\nlines", None, None))


def test_the_daemon_does_not_import_the_cli():
    import subprocess
    import sys

    code = ("import sys, tenantwatch.daemon; "
            "print('tenantwatch.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
