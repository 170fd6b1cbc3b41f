"""The package's top-level names, the lazily imported training-side ones included, and its
declared dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import ln_diagnostics

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_dir_lists_every_public_name_before_and_after_first_use():
    code = (
        "import sys, ln_diagnostics as ld; names = dir(ld); "
        "print(all(n in names for n in ld.__all__), 'torch' in sys.modules)"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert fresh == ["True", "False"]  # listed without importing torch
    assert set(ln_diagnostics.__all__) <= set(dir(ln_diagnostics))
    assert callable(ln_diagnostics.attach) and "attach" in dir(ln_diagnostics)
    assert dir(ln_diagnostics) == sorted(set(dir(ln_diagnostics)))


def _third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level names of the absolute imports in ``package`` that are neither the standard
    library nor the package itself, each with the files that import it."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != package.name:
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def _import_names(distribution: str) -> set[str]:
    """The top-level import names an installed distribution provides (``Pillow``: ``PIL``), or
    its normalized name when it is not installed (``tomli`` on Python >= 3.11)."""
    dist = canonicalize_name(distribution)
    names = {
        name
        for name, dists in packages_distributions().items()
        if dist in {canonicalize_name(d) for d in dists}
    }
    return names or {dist.replace("-", "_")}


def test_runtime_dependencies_are_exactly_what_the_package_imports():
    """Every declared runtime dependency is imported by ``ln_diagnostics/`` and every third-party
    package it imports is declared, so neither list can drift from the code."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        declared = [Requirement(r).name for r in tomllib.load(file)["project"]["dependencies"]]
    imported = _third_party_imports(ROOT / "ln_diagnostics")
    provided = {dist: _import_names(dist) for dist in declared}
    unused = [dist for dist, names in provided.items() if not names & imported.keys()]
    undeclared = {
        name: sorted(files)
        for name, files in imported.items()
        if not any(name in names for names in provided.values())
    }
    assert unused == [], f"declared in pyproject.toml but never imported: {unused}"
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"
    assert {"PIL", "google_crc32c", "pytorch_lightning", "tensorboard"} <= imported.keys()
