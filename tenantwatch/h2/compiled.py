"""The HTTP/2 stage's own modules compiled to C with mypyc, used when a build of exactly the
sources in this tree exists; else the same modules run as Python.

The decoder costs about 17 µs of one core per request as Python and about 5 µs compiled
(docs/http2.md).  The compiled modules are built from these very files, unchanged, by
``scripts/build_h2_native.py`` (run by ``make deps``) into ``build/h2-native/`` of the source
tree (``make install`` copies it beside its venv), with a stamp naming the digest of the
sources and of the interpreter they were built for.  At the package's import
(tenantwatch/h2/__init__.py), ``enable()`` compares the stamp with the files as they are now:
when they match, a finder hands the interpreter the compiled module for each name in
``MODULES``; when they do not (a source edited since, or one of the ``DEPENDS`` whose types the
compiled code relies on, another interpreter, no build), the Python files are used and
``STATUS`` says why.  A stale build is therefore never run.  ``TW_H2_COMPILED=0`` in the
environment forces the Python modules (the tests run both).

This module is never compiled itself.
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

PACKAGE = "tenantwatch.h2"
# The modules compiled (all of the package but this one and __init__).
MODULES = ("records", "status", "huffman", "frames", "hpack_lazy", "identity", "counts",
           "session", "tracker")
# The project's modules whose types the compiled code was built against (it may read a
# NamedTuple's field by its position): a change to them makes a build stale too.
DEPENDS = ("kernel/records.py", "config/records.py")
# mypyc's shared library of the group: PACKAGE + "." + GROUP + "__mypyc"
GROUP = "_compiled"
# Where a build is looked for: TW_H2_BUILD_DIR (a build checked before it is moved in); else
# the source tree's (an editable install); else beside the venv, where scripts/install.sh
# copies the tree's build.
TREE_BUILD_DIR = Path(__file__).resolve().parents[2] / "build" / "h2-native"
VENV_BUILD_DIR = Path(sys.prefix) / "share" / "tenantwatch" / "h2-native"
BUILD_DIR = Path(os.environ.get("TW_H2_BUILD_DIR")
                 or (TREE_BUILD_DIR if TREE_BUILD_DIR.is_dir() else VENV_BUILD_DIR))
STAMP_NAME = "stamp.json"
ENV = "TW_H2_COMPILED"

# What the package runs: "compiled (mypyc)" or "python (<why>)"; set by enable().
STATUS = "python (not checked)"


def source_digest(package_dir: Path | None = None) -> str:
    """SHA-256 of the interpreter's tag, the compiled modules' sources in MODULES order, and
    the DEPENDS files (from the project's package directory, the parent of package_dir)."""
    package_dir = package_dir or Path(__file__).resolve().parent
    h = hashlib.sha256(sys.implementation.cache_tag.encode())
    files = [(name, package_dir / f"{name}.py") for name in MODULES]
    files += [(dep, package_dir.parent / dep) for dep in DEPENDS]
    for name, path in files:
        h.update(b"\0" + name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def extension_files(build_dir: Path) -> dict[str, Path]:
    """Module name -> the compiled file for it in ``build_dir`` (what a build must hold)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    pkg = build_dir / Path(*PACKAGE.split("."))
    files = {f"{PACKAGE}.{m}": pkg / f"{m}{suffix}" for m in MODULES}
    files[f"{PACKAGE}.{GROUP}__mypyc"] = pkg / f"{GROUP}__mypyc{suffix}"
    return files


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the compiled file of each module of a checked build."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(self, fullname, path, target=None):
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def check(build_dir: Path = BUILD_DIR) -> tuple[dict[str, Path] | None, str]:
    """(the compiled files, "compiled (mypyc)") when the build in ``build_dir`` is of these
    sources, else (None, "python (<why>)")."""
    if os.environ.get(ENV, "1") == "0":
        return None, f"python ({ENV}=0)"
    stamp = build_dir / STAMP_NAME
    try:
        built = json.loads(stamp.read_text())
    except FileNotFoundError:
        return None, "python (no compiled build: scripts/build_h2_native.py makes one)"
    except (OSError, ValueError) as e:
        return None, f"python (unreadable {stamp}: {e})"
    if not isinstance(built, dict) or built.get("digest") != source_digest():
        return None, "python (the compiled build is of other sources or another interpreter)"
    files = extension_files(build_dir)
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        return None, f"python (compiled build incomplete: {missing[0]} missing)"
    return files, "compiled (mypyc)"


def enable(build_dir: Path = BUILD_DIR) -> str:
    """Put the finder in place when the build matches (once); gives and sets STATUS."""
    global STATUS
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return STATUS
    already = [m for m in MODULES if f"{PACKAGE}.{m}" in sys.modules]
    if already:
        STATUS = f"python ({PACKAGE}.{already[0]} was imported before the check)"
        return STATUS
    files, STATUS = check(build_dir)
    if files is not None:
        sys.meta_path.insert(0, _Finder(files))
    return STATUS


def compiled(module) -> bool:
    """Whether ``module`` was loaded from a compiled file."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)
