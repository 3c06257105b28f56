"""Config is imported by the stages, in one direction only: tenantwatch/config imports nothing
from a stage but two modules of shared records, identity/records.py (RESERVED_LABELS) and
kernel/records.py (Side).

Checked twice: in the source (every import statement of every module under tenantwatch/config,
at the top, in a function or under TYPE_CHECKING, read with ast), and at run time (a fresh
interpreter that imports tenantwatch.config loads no stage module beyond what those two records
modules load themselves).  And with no cycle left through config, config and every module that
imports it import on their own, each in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tenantwatch

PACKAGE = Path(tenantwatch.__file__).resolve().parent
ROOT = PACKAGE.parent
CONFIG = PACKAGE / "config"
# what config must not import (a module of one of these, or the package itself) ...
STAGES = ("tenantwatch.enforcement", "tenantwatch.detection", "tenantwatch.identity",
          "tenantwatch.kernel", "tenantwatch.exporters", "tenantwatch.aggregation",
          "tenantwatch.h2", "tenantwatch.demo", "tenantwatch.daemon", "tenantwatch.cli")
# ... but these records, the vocabulary config and the stages share
SHARED_RECORDS = ("tenantwatch.identity.records", "tenantwatch.kernel.records")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in the file, wherever it stands; ``from a import b``
    gives ``a.b`` (b may be a submodule), a relative import its absolute name, and
    ``importlib.import_module("a")`` / ``__import__("a")`` with a literal name ``a``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root) if path.name == "__init__.py" else \
        module_name(path, root).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                and (getattr(node.func, "attr", None) == "import_module"
                     or getattr(node.func, "id", None) in ("__import__", "import_module")):
            yield node.lineno, node.args[0].value


def forbidden(name: str) -> bool:
    if any(name == r or name.startswith(r + ".") for r in SHARED_RECORDS):
        return False
    return any(name == s or name.startswith(s + ".") for s in STAGES)


def test_the_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "tenantwatch" / "config"
    pkg.mkdir(parents=True)
    source = pkg / "x.py"
    source.write_text(
        "import importlib\n"
        "import tenantwatch.h2.frames\n"
        "from typing import TYPE_CHECKING\n"
        "from tenantwatch.kernel.records import Side\n"
        "if TYPE_CHECKING:\n"
        "    from tenantwatch.exporters import catalog\n"
        "def f():\n"
        "    from tenantwatch.enforcement.placement import Placer\n"
        "    from ..identity import jwks\n"
        "    from . import records\n"
        "    return importlib.import_module('tenantwatch.detection')\n")
    names = {n for _, n in imported(source, tmp_path)}
    assert names == {"importlib", "tenantwatch.h2.frames", "typing.TYPE_CHECKING",
                     "tenantwatch.kernel.records.Side", "tenantwatch.exporters.catalog",
                     "tenantwatch.enforcement.placement.Placer", "tenantwatch.identity.jwks",
                     "tenantwatch.config.records", "tenantwatch.detection"}
    assert {n for n in names if forbidden(n)} == {
        "tenantwatch.h2.frames", "tenantwatch.exporters.catalog",
        "tenantwatch.enforcement.placement.Placer", "tenantwatch.identity.jwks",
        "tenantwatch.detection"}


def test_config_imports_no_stage_but_their_shared_records() -> None:
    sources = sorted(CONFIG.rglob("*.py"))
    assert len(sources) >= 9
    seen: set[str] = set()
    wrong = []
    for path in sources:
        for line, name in imported(path):
            seen.add(name)
            if forbidden(name):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert wrong == [], "config must not import a stage (it imports config, not the reverse)"
    # the scanner did read them: the two records config does use are there
    assert {"tenantwatch.identity.records.RESERVED_LABELS",
            "tenantwatch.kernel.records.Side"} <= seen


def loaded_after(statement: str) -> set[str]:
    """The tenantwatch modules a fresh interpreter holds after running ``statement``."""
    code = f"{statement}\nimport json, sys\n" \
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tenantwatch'))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_config_loads_no_stage() -> None:
    with_config = loaded_after("import tenantwatch.config")
    # importing a records module runs its package's __init__ first: whatever that loads is
    # the records' cost, not config's
    records_alone = loaded_after("import " + ", ".join(SHARED_RECORDS))
    assert "tenantwatch.config.records" in with_config
    assert sorted(m for m in with_config - records_alone if forbidden(m)) == []
    for stage in ("tenantwatch.enforcement", "tenantwatch.detection", "tenantwatch.exporters",
                  "tenantwatch.aggregation", "tenantwatch.h2", "tenantwatch.identity.jwks",
                  "tenantwatch.kernel.loader"):
        assert stage not in with_config


def importers_of_config() -> list[str]:
    """config's modules and every tenantwatch module that imports config."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(CONFIG) or any(
                n == "tenantwatch.config" or n.startswith("tenantwatch.config.")
                for _, n in imported(path)):
            names.append(module_name(path))
    return names


def test_config_and_its_importers_import_alone() -> None:
    names = importers_of_config()
    assert {"tenantwatch.config", "tenantwatch.detection.detector",
            "tenantwatch.enforcement.placement", "tenantwatch.identity.jwks"} <= set(names)

    def alone(name: str) -> str | None:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], check=False, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        return None if done.returncode == 0 else \
            f"{name}: {(done.stderr.strip().splitlines() or ['?'])[-1]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(alone, names) if f]
    assert failures == []


@pytest.mark.parametrize("name,bad", [
    ("tenantwatch.identity.records", False), ("tenantwatch.kernel.records.Side", False),
    ("tenantwatch.identity", True), ("tenantwatch.identity.jwks.FAMILY_OF", True),
    ("tenantwatch.kernel.loader", True), ("tenantwatch.enforcement.settings", True),
    ("tenantwatch.config.records", False), ("tenantwatch.errors", False),
    ("tenantwatch.h2", True), ("tenantwatch.h2x", False),
])
def test_forbidden(name: str, bad: bool) -> None:
    assert forbidden(name) is bad
