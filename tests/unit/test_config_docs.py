"""docs/config.md is the reference of the config file, and says what the code does:

- every literal default in a table of a section (`capture`, `tenancy`, ...) equals the value the
  parser gives when the key is left out;
- every field of a section's dataclass that has a default is documented in that section (a row
  of its table, or a key of its YAML example), and every key of those tables is a field.

The defaults live once, in the dataclasses (tenantwatch/config/records.py, detection.py); this
test keeps the one copy in the docs honest."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import yaml

from tenantwatch import config as cfg
from tenantwatch.config import parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
MINIMAL = {"targets": [{"process": "nginx"}]}
# the optional mappings, with their required keys only: the parser fills in the rest
OPTIONAL = {**MINIMAL, "tenancy": {"response_check": {"header": "X-Served-Tenant"},
                                   "registry": {"redis": "redis://127.0.0.1:6379/0"},
                                   "sources": [{"jwt": {}}]}}
CELL = r"(?:[^|\\]|\\.)*"  # a table cell; `\|` inside one is no separator
# docs key -> attribute, where the names differ
ATTRIBUTE = {("metrics", "histograms"): "histogram_sides",
             ("tenancy.response_check", "side"): "sides"}
# each documented section ("" is the top level) and the dataclass it parses into
SECTIONS: dict[str, type] = {
    "": cfg.Config, "tenancy": cfg.Tenancy, "tenancy.registry": cfg.Registry,
    "tenancy.response_check": cfg.ResponseCheck, "capture": cfg.Capture,
    "metrics": cfg.Metrics, "power": cfg.Power, "detection": cfg.DetectionSettings,
    "enforcement": cfg.Enforcement, "otel": cfg.Otel, "jwt": cfg.JwtSettings,
}


def _sections() -> list[tuple[str | None, list[str]]]:
    """(section, its lines) for every heading: `## \\`name\\`` is a section, `## Top level` the
    top level (""), any other heading none."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            m = re.match(r"^#{2,3} `([a-z_.]+)`", line)
            out.append((m.group(1) if m else "" if line == "## Top level" else None, []))
        else:
            out[-1][1].append(line)
    return out


def rows() -> list[tuple[str, str, str]]:
    """(section, key, default cell) of every table row under a section's heading."""
    out = []
    for section, lines in _sections():
        for line in lines:
            m = re.match(rf"^\| `([a-z_0-9]+)` \|{CELL}\| ({CELL}) \|", line)
            if m and section is not None:
                out.append((section, m.group(1), m.group(2).strip()))
    return out


def example_keys(section: str) -> set[str]:
    """The keys a YAML example under the section's heading gives the section."""
    keys: set[str] = set()
    for name, lines in _sections():
        if name != section:
            continue
        for block in re.findall(r"```yaml\n(.*?)```", "\n".join(lines) + "\n", re.DOTALL):
            node = yaml.safe_load(block)
            for part in section.split(".") if section else ():
                node = node.get(part) if isinstance(node, dict) else None
            keys |= set(node) if isinstance(node, dict) else set()
    return keys


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
    if isinstance(doc, str) and isinstance(code, list) and len(code) == 1:
        return same(doc, code[0])  # one side given as a word (response_check.side: client)
    if hasattr(code, "value"):  # an Enum (Side ...)
        code = code.value
    if isinstance(doc, (int, float)) and isinstance(code, (int, float)) \
            and not isinstance(doc, bool):
        return math.isclose(doc, code)
    return doc == code


def _walk(obj: object, section: str) -> object:
    if section == "jwt":  # `jwt` sources: the settings of the first one (tenancy.sources[i].jwt)
        sources = getattr(getattr(obj, "tenancy", None), "sources", ())
        return next((s.jwt for s in sources if s.jwt is not None), None)
    for part in section.split(".") if section else ():
        obj = getattr(obj, part, None)
    return obj


def test_literal_defaults_in_config_md_match_the_parser():
    config, optional = parse_config(MINIMAL, env={}), parse_config(OPTIONAL, env={})
    checked, wrong = 0, []
    for section, key, cell in rows():
        ok, doc_value = literal(cell)
        if not ok:
            continue
        obj = _walk(config, section)
        if obj is None:  # an optional mapping: the defaults of its keys when it is given
            obj = _walk(optional, section)
        attr = ATTRIBUTE.get((section, key), key)
        if obj is None or not hasattr(obj, attr):
            continue
        checked += 1
        code_value = getattr(obj, attr)
        if not same(doc_value, code_value):
            wrong.append(f"{section}.{key}: docs {doc_value!r}, code {code_value!r}")
    assert wrong == []
    assert checked >= 50, f"only {checked} defaults checked: did the tables' format change?"


def test_every_field_with_a_default_is_documented_and_every_row_is_a_field():
    documented: dict[str, set[str]] = {s: example_keys(s) for s in SECTIONS}
    for section, key, _ in rows():
        if section in SECTIONS:
            documented[section].add(ATTRIBUTE.get((section, key), key))
    missing, unknown = [], []
    for section, cls in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            has_default = f.default is not dataclasses.MISSING or \
                f.default_factory is not dataclasses.MISSING
            if has_default and f.name not in documented[section]:
                missing.append(f"{section or '<top level>'}: {f.name}")
        unknown += [f"{section or '<top level>'}: {k}" for k in documented[section] - names]
    assert missing == [], "fields with a default that docs/config.md does not name"
    assert unknown == [], "keys docs/config.md names that are no field"
    assert len(documented["tenancy.registry"]) >= 5, "the registry's YAML example went missing"
