#!/usr/bin/env python3
"""Compile the HTTP/2 stage (tenantwatch/h2/) with mypyc into build/h2-native/.

Run with the project's venv (``.venv/bin/python scripts/build_h2_native.py``; ``make deps`` does):
needs mypy (the ``native`` extra), a C compiler and the Python headers (gcc, python3-dev).  The
same source files are compiled, unchanged; tenantwatch/h2/compiled.py uses the build only while
its stamp matches the sources (docs/http2.md).  Idempotent: a build of the current sources is
left alone (``--force`` rebuilds).  The new build is made in a temporary directory, imported
and checked in a fresh interpreter, and only then moved into place, so a failed or interrupted
build leaves the previous state (or none) and the package runs as Python.

Exit status: 0 built or up to date, 1 the build failed (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tenantwatch.h2 import compiled  # its stamp check and digest

_CHECK = """
from tenantwatch.h2 import compiled
from tenantwatch.h2 import session, tracker
assert compiled.STATUS == "compiled (mypyc)", compiled.STATUS
assert compiled.compiled(session) and compiled.compiled(tracker)
"""


def _build(out: Path, work: Path) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    # Errors of the modules imported but not compiled are theirs, not the build's.
    paths = ["--follow-imports=silent", "--ignore-missing-imports",
             *(f"tenantwatch/h2/{m}.py" for m in compiled.MODULES)]
    cwd = os.getcwd()
    os.chdir(REPO)  # mypyc names modules by their path from here
    try:
        setup(name="tenantwatch-h2-compiled",
              ext_modules=mypycify(paths, group_name=f"{compiled.PACKAGE}.{compiled.GROUP}",
                                   target_dir=str(work / "c")),
              script_args=["-q", "build_ext", "--build-lib", str(out),
                           "--build-temp", str(work / "temp")])
    finally:
        os.chdir(cwd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--build-dir", type=Path, default=compiled.TREE_BUILD_DIR)
    args = ap.parse_args()
    dest: Path = args.build_dir
    digest = compiled.source_digest()
    files, _why = compiled.check(dest)
    if files is not None and not args.force:
        print(f"h2 compiled build: ok (up to date, {dest})")
        return 0
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print("h2 compiled build: FAILED: mypy is not installed (pip install -e '.[native]')")
        return 1
    print(f"h2 compiled build: compiling {len(compiled.MODULES)} modules with mypyc "
          f"(about a minute) ...", flush=True)
    t0 = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="h2-native.", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        out = tmp / "out"
        log = tmp / "log"
        # The compiler's chatter goes to a log, shown when it fails.
        with open(log, "w") as fh:
            child = subprocess.run(
                [sys.executable, __file__, "--_compile", str(out), str(tmp / "work")],
                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, check=False,
                env=dict(os.environ, TW_H2_COMPILED="0"))
        if child.returncode != 0:
            print(log.read_text()[-4000:])
            print("h2 compiled build: FAILED (mypyc or the C compiler; the Python modules "
                  "stay in use)")
            return 1
        (out / compiled.STAMP_NAME).write_text(json.dumps(
            {"digest": digest, "python": sys.version.split()[0], "built": time.time()}))
        env = dict(os.environ, PYTHONPATH=str(REPO), TW_H2_COMPILED="1",
                   TW_H2_BUILD_DIR=str(out))
        probe = subprocess.run([sys.executable, "-c", _CHECK], env=env, cwd=tmp,
                               capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            print(probe.stdout + probe.stderr)
            print("h2 compiled build: FAILED: the compiled modules do not import")
            return 1
        old = tmp / "old"
        if dest.exists():
            dest.rename(old)
        out.rename(dest)
    print(f"h2 compiled build: done ({time.monotonic() - t0:.0f} s, {dest})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_compile":
        _build(Path(sys.argv[2]), Path(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
