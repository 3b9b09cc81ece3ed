"""The oracle stands alone (DESIGN.md, second wave): reidfast/reference imports nothing from the code it
checks (ops, kernels, the native modules, the dispatcher), and nothing outside the reference uses a private
name (a leading underscore) of a reference module. Checked on the source with ast, so it holds for code
paths the other tests never run."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import reidfast

PACKAGE = Path(reidfast.__file__).resolve().parent
# What the reference must not import: the implementations it is the ground truth for.
IMPLEMENTATION = ("reidfast.ops", "reidfast.kernels", "reidfast._native", "reidfast._dispatch", "reidfast._C",
                  "reidfast._cuda_emulator", "reidfast.integrations")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of `from <level dots><module> import ...` written in module `importer`."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([module] if module else []))


def imported_modules(source: str, importer: str, is_package: bool = False) -> set[str]:
    """Every module (and from-imported name as module.name) that `source` imports, absolute."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, importer, is_package)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def private_reference_uses(source: str, importer: str, is_package: bool = False) -> list[str]:
    """Private names of reidfast.reference modules that `source` imports or reads as attributes."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> reference module it is bound to
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("reidfast.reference") and alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, importer, is_package)
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if module.startswith("reidfast.reference") and alias.name.startswith("_"):
                    uses.append(full)
                elif full.startswith("reidfast.reference."):  # maybe a module: from ..reference import rerank
                    aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                uses.append(f"{aliases[node.value.id]}.{node.attr}")
    return sorted(set(uses))


def _sources(folder: Path | None = None):
    for path in sorted((folder or PACKAGE).rglob("*.py")):
        yield path, path.read_text(), _module_name(path), path.name == "__init__.py"


def test_reference_imports_no_implementation():
    offending = {}
    for path, source, name, is_package in _sources(PACKAGE / "reference"):
        bad = sorted(m for m in imported_modules(source, name, is_package) if m.startswith(IMPLEMENTATION))
        if bad:
            offending[str(path.relative_to(PACKAGE))] = bad
    assert not offending, f"the reference imports the code it checks: {offending}"


def test_nothing_outside_the_reference_uses_its_private_names():
    offending = {}
    for path, source, name, is_package in _sources():
        if name.startswith("reidfast.reference"):
            continue
        bad = private_reference_uses(source, name, is_package)
        if bad:
            offending[str(path.relative_to(PACKAGE))] = bad
    assert not offending, f"private reference names used outside reidfast/reference: {offending}"


@pytest.mark.parametrize("source,expected", [
    ("from ..reference import rerank as reference\nreference._check_parameters(1)",
     ["reidfast.reference.rerank._check_parameters"]),
    ("from ..reference.evaluation import _validate", ["reidfast.reference.evaluation._validate"]),
    ("import reidfast.reference.triplet as ref\nref._first_extreme_index", ["reidfast.reference.triplet._first_extreme_index"]),
    ("from reidfast.reference import distance\ndistance.METRICS\ndistance.__name__", []),
    ("from ..reference import rerank as reference\nreference.re_ranking(1)", []),
])
def test_the_private_name_scan_catches_planted_uses(source, expected):
    assert private_reference_uses(source, "reidfast.ops.example") == expected


def test_the_import_scan_resolves_relative_imports():
    source = "from ..ops import distance\nfrom . import triplet\nimport reidfast._native"
    found = imported_modules(source, "reidfast.reference.example")
    assert {"reidfast.ops.distance", "reidfast.reference.triplet", "reidfast._native"} <= found
    assert any(m.startswith(IMPLEMENTATION) for m in found)
