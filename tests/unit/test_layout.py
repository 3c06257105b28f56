"""The README's project layout and the documentation indexes stay true: every package and
module of tenantwatch/, every bpf/*.c and header and every script is named in the layout; every
docs/*.md is linked from the README's table and from docs/README.md."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start:] if end < 0 else text[start:end]


def test_layout_names_every_package_bpf_file_and_script():
    layout = section("Project layout")
    packages = sorted(p.parent.name for p in (REPO / "tenantwatch").glob("*/__init__.py"))
    assert packages
    for name in packages:
        assert re.search(rf"^\s+{name}/", layout, re.MULTILINE), f"tenantwatch/{name}/"
    for path in sorted((REPO / "bpf").rglob("*.[ch]")):
        assert path.name in layout, f"bpf/{path.relative_to(REPO / 'bpf')}"
    for path in sorted((REPO / "scripts").glob("*.sh")):
        assert path.name in layout, f"scripts/{path.name}"
    modules = sorted(p.name for p in (REPO / "tenantwatch").glob("*.py") if p.name != "__init__.py")
    assert {"cli.py", "daemon.py", "logs.py", "memory.py", "top.py", "doctor.py"} <= set(modules)
    for module in modules:
        assert re.search(rf"(?<![\w./]){re.escape(module)}(?!\w)", layout), f"tenantwatch/{module}"


def test_documentation_index_links_every_page():
    index = section("Documentation")
    for path in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{path.name})" in index, f"docs/{path.name}"
    for link in re.findall(r"\]\((docs/[^)#]+)\)", index):
        assert (REPO / link).is_file(), link


def test_docs_index_links_every_page():
    index = (REPO / "docs" / "README.md").read_text()
    for path in sorted((REPO / "docs").glob("*.md")):
        if path.name != "README.md":
            assert f"]({path.name})" in index, f"docs/README.md does not link docs/{path.name}"
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", index):
        assert (REPO / "docs" / link).resolve().exists(), link
