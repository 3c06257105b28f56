"""The HTTP/2 stage compiled with mypyc (tenantwatch/h2/compiled.py): used only when the build
is of the sources as they are, and the Python modules pass the same tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenantwatch.h2 import compiled, session, tracker

REPO = Path(__file__).resolve().parents[3]


def _fake_build(tmp_path: Path, digest: str, files: bool = True) -> Path:
    build = tmp_path / "build"
    build.mkdir()
    (build / compiled.STAMP_NAME).write_text(json.dumps({"digest": digest}))
    if files:
        for f in compiled.extension_files(build).values():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"")
    return build


def test_a_build_of_other_sources_is_never_used(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(compiled.ENV, raising=False)
    files, why = compiled.check(_fake_build(tmp_path, "0" * 64))
    assert files is None
    assert why == "python (the compiled build is of other sources or another interpreter)"


def test_a_build_of_these_sources_is_used_when_whole(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(compiled.ENV, raising=False)
    build = _fake_build(tmp_path, compiled.source_digest())
    files, why = compiled.check(build)
    assert why == "compiled (mypyc)"
    assert files == compiled.extension_files(build)
    assert set(files) == {f"tenantwatch.h2.{m}" for m in compiled.MODULES} | {
        "tenantwatch.h2._compiled__mypyc"}
    next(iter(files.values())).unlink()
    files, why = compiled.check(build)
    assert files is None and why.startswith("python (compiled build incomplete")


def test_no_build_an_unreadable_stamp_and_the_switch_say_why(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(compiled.ENV, raising=False)
    assert compiled.check(tmp_path / "none")[1].startswith("python (no compiled build")
    build = _fake_build(tmp_path, compiled.source_digest())
    (build / compiled.STAMP_NAME).write_text("{")
    assert compiled.check(build)[1].startswith("python (unreadable")
    monkeypatch.setenv(compiled.ENV, "0")
    assert compiled.check(build) == (None, "python (TW_H2_COMPILED=0)")


def test_the_digest_follows_every_compiled_source_and_what_it_depends_on(tmp_path) -> None:
    pkg = tmp_path / "tenantwatch" / "h2"
    pkg.mkdir(parents=True)
    here = Path(compiled.__file__).parent
    files = [pkg / f"{m}.py" for m in compiled.MODULES]
    files += [pkg.parent / dep for dep in compiled.DEPENDS]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes((here.parent / f.relative_to(pkg.parent)).read_bytes())
    digest = compiled.source_digest(pkg)
    assert digest == compiled.source_digest()
    for f in files:
        was = f.read_bytes()
        f.write_bytes(was + b"\n")
        assert compiled.source_digest(pkg) != digest, f
        f.write_bytes(was)


@pytest.mark.skipif(os.environ.get("TW_EXPECT_H2_COMPILED") != "1",
                    reason="make test sets TW_EXPECT_H2_COMPILED=1 after make deps built it")
def test_make_test_runs_the_compiled_modules() -> None:
    assert compiled.STATUS == "compiled (mypyc)"
    assert compiled.compiled(session) and compiled.compiled(tracker)


def test_the_python_modules_pass_the_same_tests() -> None:
    """The HTTP/2 unit tests again, in a child that runs the Python modules (when this process
    runs the compiled ones; else the other way round is what the suite itself does)."""
    here = Path(__file__).parent
    tests = sorted(str(p) for p in here.glob("test_*.py") if p.name != Path(__file__).name)
    env = dict(os.environ, TW_H2_COMPILED="0")
    env.pop("TW_EXPECT_H2_COMPILED", None)
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, "-c",
         str(REPO / "pyproject.toml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "failed" not in child.stdout
    probe = subprocess.run(
        [sys.executable, "-c", ("from tenantwatch.h2 import compiled, session; "
                                "print(compiled.STATUS, compiled.compiled(session))")],
        cwd="/", env=env, capture_output=True, text=True, timeout=60, check=False)
    assert probe.stdout.strip() == "python (TW_H2_COMPILED=0) False", probe.stderr
