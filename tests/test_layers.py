"""The project's layers, read from the source: every import between the packages points down,
sits at module top, and the library holds no command-line code.

Layers, bottom up: mlx_plamo3 | convert, data | eval | train, adapters | commands,
benchmarks, scripts. A package may import its own modules and any package of a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LAYERS = {
    "mlx_plamo3": 0,
    "convert": 1,
    "data": 1,
    "eval": 2,
    "train": 3,
    "adapters": 3,
    "commands": 4,
    "benchmarks": 4,
    "scripts": 4,
}
# Modules that may be imported inside a function, and why.
LAZY_ALLOWED = {
    "mlx_plamo3.torch_reference": "it imports torch, an optional extra that --help and the "
    "MLX-only paths never need",
}


def project_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module top) for each import of a project package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n, id(node) in top) for n in names if n.split(".")[0] in LAYERS]
    return found


def sources() -> list[tuple[str, Path]]:
    return [(pkg, f) for pkg in LAYERS for f in sorted((ROOT / pkg).rglob("*.py"))]


def test_every_package_exists():
    assert all((ROOT / pkg).is_dir() for pkg in LAYERS)


@pytest.mark.parametrize("package", list(LAYERS))
def test_imports_point_down_and_sit_at_module_top(package):
    problems = []
    for pkg, path in sources():
        if pkg != package:
            continue
        for line, module, at_top in project_imports(path):
            target = module.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if target != pkg and LAYERS[target] >= LAYERS[pkg]:
                problems.append(f"{where}: {pkg} may not import {target} (not a lower layer)")
            if not at_top and module not in LAZY_ALLOWED:
                problems.append(f"{where} inside a function or block; import at module top")
    assert not problems, "\n".join(problems)


def test_the_library_holds_no_command_line_code():
    offenders = []
    for path in sorted((ROOT / "mlx_plamo3").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno}" for m in modules if m == "click"
            ]
    assert not offenders, offenders


def test_the_checker_sees_a_wrong_arrow(tmp_path):
    # The checker itself: an upward, nested import in a file is reported as both.
    sample = tmp_path / "sample.py"
    sample.write_text("import json\n\n\ndef f():\n    from train.trainer import train\n")
    assert project_imports(sample) == [(5, "train.trainer", False)]
