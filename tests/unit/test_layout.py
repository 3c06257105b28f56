"""The README's project layout and documentation index stay true: every package of
tenantwatch/, every bpf/*.c and header, every docs/*.md and every script is named there."""

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
    for module in ("cli.py", "daemon.py", "logs.py", "memory.py", "top.py", "doctor.py"):
        assert module in layout, module


def test_documentation_index_links_every_page():
    index = section("Documentation")
    for path in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{path.name})" in index, f"docs/{path.name}"
    for link in re.findall(r"\]\((docs/[^)#]+)\)", index):
        assert (REPO / link).is_file(), link
