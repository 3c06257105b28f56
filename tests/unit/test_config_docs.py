"""docs/config.md's default column says what the code does: every literal default in a table of
a section (`capture`, `tenancy`, ...) equals the value the parser gives when the key is left out
(a minimal config).  The defaults live in the dataclasses and parsers; this test keeps the one
copy in the docs honest."""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from tenantwatch.config import parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
MINIMAL = {"targets": [{"process": "nginx"}]}
# docs key -> attribute, where the names differ
ATTRIBUTE = {("metrics", "histograms"): "histogram_sides"}


def rows() -> list[tuple[str, str, str]]:
    """(section, key, default cell) of every table row under a `## \\`section\\`` heading."""
    out = []
    section = ""
    for line in DOC.read_text().splitlines():
        m = re.match(r"^#{2,3} `([a-z_.]+)`", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^\| `([a-z_0-9]+)` \| [^|]* \| ([^|]*) \|", line)
        if m and section:
            out.append((section, m.group(1), m.group(2).strip()))
    return out


def literal(cell: str) -> tuple[bool, object]:
    """The default as a value, when the cell is one literal in backticks."""
    m = re.fullmatch(r"`([^`]*)`", cell)
    if not m:
        return False, None
    try:
        return True, yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return False, None


def same(doc: object, code: object) -> bool:
    if hasattr(code, "kind") and hasattr(code, "header") and isinstance(doc, dict):
        # a tenancy source: the docs give the YAML, the code the parsed Source
        return doc.get("header", "").lower() == code.header and \
            doc.get("side") == (code.side.value if code.side else None) and \
            bool(doc.get("trusted", False)) == code.trusted
    if isinstance(code, tuple):
        code = list(code)
    if isinstance(doc, list) and isinstance(code, list):
        return len(doc) == len(code) and all(same(a, b) for a, b in zip(doc, code))
    if hasattr(code, "value"):  # an Enum (Side ...)
        code = code.value
    if isinstance(doc, (int, float)) and isinstance(code, (int, float)) \
            and not isinstance(doc, bool):
        return math.isclose(doc, code)
    return doc == code


def test_literal_defaults_in_config_md_match_the_parser():
    config = parse_config(MINIMAL, env={})
    checked, wrong = 0, []
    for section, key, cell in rows():
        ok, doc_value = literal(cell)
        if not ok:
            continue
        obj = config
        for part in section.split("."):
            obj = getattr(obj, part, None)
        attr = ATTRIBUTE.get((section, key), key)
        if obj is None or not hasattr(obj, attr):
            continue
        checked += 1
        code_value = getattr(obj, attr)
        if not same(doc_value, code_value):
            wrong.append(f"{section}.{key}: docs {doc_value!r}, code {code_value!r}")
    assert wrong == []
    assert checked >= 20, f"only {checked} defaults checked: did the tables' format change?"
